//! The embedded object store: a local folder holding the same keys as the bucket. Writes
//! land under a temporary name and are renamed into place, so a reader never sees half an
//! object. Presigned URLs point at this server's `/objects/<key>` route and carry an expiry
//! and an HMAC-SHA256 signature over the key and the expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use recorder::objects::{validate_key, MultipartUpload, ObjectError, ObjectInfo, ObjectStore};
use ring::hmac;
use tokio::io::AsyncWriteExt;

/// Folder of uploads in progress, inside the root; not part of any listing.
const UPLOADS_DIR: &str = ".uploads";

/// Objects in a folder.
#[derive(Clone)]
pub struct LocalObjects {
    root: PathBuf,
    /// Base URL of this server, for presigned URLs.
    public_url: String,
    signer: UrlSigner,
}

/// Signs and checks the local store's download URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: hmac::Key,
}

impl UrlSigner {
    /// A signer with this secret.
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    fn message(key: &str, expires: u64) -> String {
        format!("GET\n{key}\n{expires}")
    }

    /// The hex signature of a download of `key` valid until `expires` (Unix seconds).
    pub fn sign(&self, key: &str, expires: u64) -> String {
        to_hex(hmac::sign(&self.key, Self::message(key, expires).as_bytes()).as_ref())
    }

    /// Whether `signature` signs a download of `key` until `expires`, and that is not past.
    pub fn verify(&self, key: &str, expires: u64, signature: &str, now: u64) -> bool {
        let Some(bytes) = decode_hex(signature) else { return false };
        now <= expires && hmac::verify(&self.key, Self::message(key, expires).as_bytes(), &bytes).is_ok()
    }
}

/// `bytes` as lowercase hexadecimal.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn io_error(err: std::io::Error) -> ObjectError {
    ObjectError::Unavailable(err.to_string())
}

impl LocalObjects {
    /// A store in `root` (created when missing) whose URLs start with `public_url`.
    pub fn new(root: impl Into<PathBuf>, public_url: String, signer: UrlSigner) -> Result<Self, std::io::Error> {
        let root = root.into();
        std::fs::create_dir_all(root.join(UPLOADS_DIR))?;
        Ok(Self { root, public_url, signer })
    }

    /// The file of a key.
    fn path_of(&self, key: &str) -> Result<PathBuf, ObjectError> {
        validate_key(key)?;
        if key.split('/').next() == Some(UPLOADS_DIR) {
            return Err(ObjectError::InvalidKey(key.to_owned(), "reserved prefix"));
        }
        Ok(self.root.join(key))
    }

    /// An object's file, opened for reading, and its length: downloads stream from it.
    pub async fn open(&self, key: &str) -> Result<(tokio::fs::File, u64), ObjectError> {
        let file = match tokio::fs::File::open(self.path_of(key)?).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(ObjectError::NotFound(key.to_owned())),
            Err(err) => return Err(io_error(err)),
        };
        let metadata = file.metadata().await.map_err(io_error)?;
        if !metadata.is_file() {
            return Err(ObjectError::NotFound(key.to_owned()));
        }
        Ok((file, metadata.len()))
    }

    /// Whether a download URL's signature is valid now.
    pub fn verify(&self, key: &str, expires: u64, signature: &str) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.signer.verify(key, expires, signature, now)
    }

    /// A new scratch file's name and path in the uploads folder.
    fn new_scratch(&self) -> (String, PathBuf) {
        let id = signaling::stamps::new_id("UP_");
        let path = self.root.join(UPLOADS_DIR).join(&id);
        (id, path)
    }

    async fn place(&self, scratch: &Path, key: &str) -> Result<(), ObjectError> {
        let path = self.path_of(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error)?;
        }
        tokio::fs::rename(scratch, &path).await.map_err(io_error)
    }
}

fn collect(dir: &Path, prefix: &str, base: &Path, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(base) else { continue };
        let key = relative.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
        if key == UPLOADS_DIR {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                collect(&path, prefix, base, out)?;
            }
        } else if kind.is_file() && key.starts_with(prefix) {
            out.push(ObjectInfo { key, size: entry.metadata()?.len() });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalObjects {
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), ObjectError> {
        self.path_of(key)?;
        let (_, scratch) = self.new_scratch();
        tokio::fs::write(&scratch, &body).await.map_err(io_error)?;
        self.place(&scratch, key).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        match tokio::fs::read(self.path_of(key)?).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(ObjectError::NotFound(key.to_owned())),
            Err(err) => Err(io_error(err)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        match tokio::fs::remove_file(self.path_of(key)?).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_error(err)),
            _ => Ok(()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let mut objects = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            collect(&root, &prefix, &root, &mut out).map(|()| out)
        })
        .await
        .map_err(|e| ObjectError::Unavailable(e.to_string()))?
        .map_err(io_error)?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn start_upload(&self, key: &str, _content_type: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
        self.path_of(key)?;
        let (id, scratch) = self.new_scratch();
        let file = tokio::fs::File::create(&scratch).await.map_err(io_error)?;
        Ok(Box::new(LocalUpload { store: self.clone(), key: key.to_owned(), id, scratch, file, size: 0 }))
    }

    async fn resume_upload(&self, key: &str, id: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
        self.path_of(key)?;
        // The id is the scratch file's name, in this store's uploads folder only.
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(ObjectError::InvalidKey(id.to_owned(), "not an upload id of this store"));
        }
        let scratch = self.root.join(UPLOADS_DIR).join(id);
        let file = match tokio::fs::OpenOptions::new().append(true).open(&scratch).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(ObjectError::NotFound(id.to_owned())),
            Err(err) => return Err(io_error(err)),
        };
        let size = file.metadata().await.map_err(io_error)?.len();
        Ok(Box::new(LocalUpload { store: self.clone(), key: key.to_owned(), id: id.to_owned(), scratch, file, size }))
    }

    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<String, ObjectError> {
        self.path_of(key)?;
        let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() + expiry.as_secs();
        let signature = self.signer.sign(key, expires);
        Ok(format!("{}/objects/{key}?expires={expires}&signature={signature}", self.public_url.trim_end_matches('/')))
    }
}

/// An upload into a scratch file, renamed into place on completion.
struct LocalUpload {
    store: LocalObjects,
    key: String,
    /// The scratch file's name.
    id: String,
    scratch: PathBuf,
    file: tokio::fs::File,
    size: u64,
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put_part(&mut self, body: Bytes) -> Result<(), ObjectError> {
        self.file.write_all(&body).await.map_err(io_error)?;
        // tokio's File hands writes to a blocking task and may still hold the last chunk:
        // a part is written once the OS has it (a resumed upload reads the file's length).
        self.file.flush().await.map_err(io_error)?;
        self.size += body.len() as u64;
        Ok(())
    }

    async fn complete(&mut self) -> Result<u64, ObjectError> {
        self.file.sync_all().await.map_err(io_error)?;
        self.store.place(&self.scratch, &self.key).await?;
        Ok(self.size)
    }

    async fn abort(&mut self) -> Result<(), ObjectError> {
        match tokio::fs::remove_file(&self.scratch).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_error(err)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_and_expiry() {
        let signer = UrlSigner::new(b"0123456789abcdef");
        let signature = signer.sign("recordings/m/r.mp4", 100);
        assert!(signer.verify("recordings/m/r.mp4", 100, &signature, 99));
        assert!(!signer.verify("recordings/m/r.mp4", 100, &signature, 101), "expired");
        assert!(!signer.verify("recordings/m/x.mp4", 100, &signature, 99), "other key");
        assert!(!signer.verify("recordings/m/r.mp4", 101, &signature, 99), "other expiry");
        assert!(!signer.verify("recordings/m/r.mp4", 100, "zz", 99), "not hex");
    }
}
