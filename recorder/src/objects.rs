//! The object store recordings and uploads go to: S3/MinIO in production, a local folder in
//! the embedded setup, both behind [`ObjectStore`] with the seed's key layout:
//! `recordings/<meeting_id>/…`, `media/uploads/<uuid>.<ext>`, `media/avatars/<user_id>.jpg`,
//! `temp/…`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Why an object operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No object has this key.
    #[error("no object `{0}`")]
    NotFound(String),
    /// The key is not a valid object key.
    #[error("invalid object key `{0}`: {1}")]
    InvalidKey(String, &'static str),
    /// The store could not be reached or failed; the operation may be retried.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

/// An object's key and size, as listings give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// An object store (one bucket, or one folder).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes an object in one request.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), ObjectError>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, ObjectError>;
    /// Deletes an object; deleting a missing one succeeds.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// The objects whose keys start with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError>;
    /// Starts a multipart upload: for objects written as they grow (recordings).
    async fn start_upload(&self, key: &str, content_type: &str) -> Result<Box<dyn MultipartUpload>, ObjectError>;
    /// Takes up an upload started earlier (by a process that is gone), with the parts it
    /// stored, by the [`MultipartUpload::id`] it had. `NotFound` when the store no longer
    /// has it.
    async fn resume_upload(&self, key: &str, id: &str) -> Result<Box<dyn MultipartUpload>, ObjectError>;
    /// A URL that downloads the object without credentials until `expiry` has passed.
    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<String, ObjectError>;
}

/// An upload in parts; nothing is visible under its key until [`MultipartUpload::complete`].
#[async_trait]
pub trait MultipartUpload: Send {
    /// The upload's id in the store, to take it up again after a restart.
    fn id(&self) -> &str;
    /// Appends a part. Every part but the last must be at least [`MIN_PART_BYTES`] for S3.
    async fn put_part(&mut self, body: Bytes) -> Result<(), ObjectError>;
    /// Assembles the parts into the object; returns its size. After a failure (the store
    /// unreachable) it may be called again.
    async fn complete(&mut self) -> Result<u64, ObjectError>;
    /// Abandons the upload and its parts.
    async fn abort(&mut self) -> Result<(), ObjectError>;
}

/// S3's smallest part, except the last.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// Checks that `key` is a relative path of plain segments (no `..`, no empty segment, no
/// backslash), so that it means the same in S3 and in a local folder.
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    let bad = |why| Err(ObjectError::InvalidKey(key.to_owned(), why));
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if key.contains('\\') || key.chars().any(char::is_control) {
        return bad("must not contain backslashes or control characters");
    }
    if key.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return bad("segments must be non-empty and not `.` or `..`");
    }
    Ok(())
}

/// Keys of the seed's layout.
pub mod keys {
    /// `recordings/<meeting_id>/<recording_id>.<ext>` (ext: `mp4`, `log`).
    pub fn recording(meeting_id: &str, recording_id: &str, ext: &str) -> String {
        format!("recordings/{meeting_id}/{recording_id}.{ext}")
    }

    /// `recordings/<meeting_id>/<recording_id>/<name>` (HLS playlist and segments).
    pub fn recording_part(meeting_id: &str, recording_id: &str, name: &str) -> String {
        format!("recordings/{meeting_id}/{recording_id}/{name}")
    }

    /// `media/uploads/<uuid>.<ext>`.
    pub fn upload(uuid: &str, ext: &str) -> String {
        format!("media/uploads/{uuid}.{ext}")
    }

    /// `media/avatars/<user_id>.jpg`.
    pub fn avatar(user_id: &str) -> String {
        format!("media/avatars/{user_id}.jpg")
    }

    /// `temp/<name>`.
    pub fn temp(name: &str) -> String {
        format!("temp/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        assert!(validate_key(&keys::recording("m1", "r1", "mp4")).is_ok());
        assert!(validate_key(&keys::recording_part("m1", "r1", "index.m3u8")).is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a\\b", "a/./b", "trailing/"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
