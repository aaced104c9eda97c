//! What of a recording survives a crash of its process, and how it is finished afterwards.
//!
//! While a recording runs with a spool folder, the folder holds its manifest
//! (`<recording_id>.manifest`: meeting, participant, formats, the MP4's multipart upload id,
//! the length so far) and every MP4 byte the store has not confirmed yet
//! (`<recording_id>.mp4-pending`); the uploader keeps both current. The store holds the
//! parts it confirmed and, for HLS, the segments and an EVENT playlist. At the next start,
//! [`recover`] takes up each such upload, sends the pending bytes as its last part and
//! completes it, and closes the playlist: the recording is playable up to the last media
//! segment written before the crash.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tracing::warn;

use crate::objects::{keys, ObjectError, ObjectStore};

/// A recording in progress, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The meeting.
    pub meeting_id: String,
    /// The recording.
    pub recording_id: String,
    /// The recorded participant.
    pub participant_id: String,
    /// An MP4 is written.
    pub mp4: bool,
    /// The MP4's multipart upload id, once made (with its first part).
    pub upload_id: Option<String>,
    /// HLS written.
    pub hls: bool,
    /// Length of the media segments written so far.
    pub duration_micros: i64,
}

impl Manifest {
    fn render(&self) -> String {
        format!(
            "meeting_id={}\nrecording_id={}\nparticipant_id={}\nmp4={}\nupload_id={}\nhls={}\nduration_micros={}\n",
            self.meeting_id,
            self.recording_id,
            self.participant_id,
            self.mp4,
            self.upload_id.as_deref().unwrap_or(""),
            self.hls,
            self.duration_micros
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned);
        let upload_id = field("upload_id").filter(|id| !id.is_empty());
        Some(Self {
            meeting_id: field("meeting_id")?,
            recording_id: field("recording_id")?,
            participant_id: field("participant_id")?,
            // Manifests written before the field made the upload at the start.
            mp4: field("mp4").map_or(upload_id.is_some(), |mp4| mp4 == "true"),
            upload_id,
            hls: field("hls")? == "true",
            duration_micros: field("duration_micros")?.parse().ok()?,
        })
    }
}

/// The files that let a crashed recording be finished: kept by the uploader.
pub(crate) struct CrashRecord {
    manifest: Manifest,
    manifest_path: PathBuf,
    pending_path: PathBuf,
}

fn paths(dir: &Path, recording_id: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{recording_id}.manifest")), dir.join(format!("{recording_id}.mp4-pending")))
}

impl CrashRecord {
    /// Writes the manifest of a starting recording and an empty pending file.
    pub(crate) async fn create(dir: &Path, manifest: Manifest) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let (manifest_path, pending_path) = paths(dir, &manifest.recording_id);
        tokio::fs::write(&pending_path, b"").await?;
        let record = Self { manifest, manifest_path, pending_path };
        record.write_manifest().await?;
        Ok(record)
    }

    async fn write_manifest(&self) -> std::io::Result<()> {
        // Written aside and renamed, so a crash never leaves half a manifest.
        let fresh = self.manifest_path.with_extension("manifest-new");
        tokio::fs::write(&fresh, self.manifest.render()).await?;
        tokio::fs::rename(&fresh, &self.manifest_path).await
    }

    /// MP4 bytes were produced (not yet confirmed by the store).
    pub(crate) async fn appended(&mut self, bytes: &[u8]) {
        let written = async {
            let mut file = tokio::fs::OpenOptions::new().append(true).open(&self.pending_path).await?;
            file.write_all(bytes).await?;
            file.flush().await
        };
        if let Err(err) = written.await {
            warn!(recording = %self.manifest.recording_id, %err, "crash record not updated");
        }
    }

    /// The store confirmed the first `count` pending MP4 bytes.
    pub(crate) async fn confirmed(&mut self, count: usize) {
        let trimmed = async {
            let pending = tokio::fs::read(&self.pending_path).await?;
            let fresh = self.pending_path.with_extension("mp4-pending-new");
            tokio::fs::write(&fresh, pending.get(count..).unwrap_or_default()).await?;
            tokio::fs::rename(&fresh, &self.pending_path).await
        };
        if let Err(err) = trimmed.await {
            warn!(recording = %self.manifest.recording_id, %err, "crash record not updated");
        }
    }

    /// The MP4's multipart upload was made.
    pub(crate) async fn upload_started(&mut self, upload_id: &str) {
        self.manifest.upload_id = Some(upload_id.to_owned());
        if let Err(err) = self.write_manifest().await {
            warn!(recording = %self.manifest.recording_id, %err, "crash record not updated");
        }
    }

    /// The recording's length grew.
    pub(crate) async fn lasted(&mut self, duration_micros: i64) {
        self.manifest.duration_micros = duration_micros;
        if let Err(err) = self.write_manifest().await {
            warn!(recording = %self.manifest.recording_id, %err, "crash record not updated");
        }
    }

    /// The recording finished normally: nothing to recover.
    pub(crate) async fn remove(self) {
        let _ = tokio::fs::remove_file(&self.manifest_path).await;
        let _ = tokio::fs::remove_file(&self.pending_path).await;
    }
}

/// A recording finished by [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// What its manifest said.
    pub manifest: Manifest,
    /// Size of the completed MP4 (0 without MP4).
    pub mp4_bytes: u64,
}

/// Finishes the recordings a crashed process left in `dir`: each MP4 completed with what the
/// store had and the pending bytes, each HLS playlist ended. Recordings whose store is
/// unreachable stay for the next attempt (`Err`); ones the store no longer knows are dropped.
pub async fn recover(store: &dyn ObjectStore, dir: &Path) -> Vec<Result<Recovered, (Manifest, ObjectError)>> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return out };
    let mut manifests = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "manifest") {
            manifests.push(path);
        }
    }
    manifests.sort();
    for path in manifests {
        let Some(manifest) = tokio::fs::read_to_string(&path).await.ok().as_deref().and_then(Manifest::parse) else {
            warn!(path = %path.display(), "unreadable recording manifest; left in place");
            continue;
        };
        match finish(store, dir, &manifest).await {
            Ok(mp4_bytes) => {
                discard(dir, &manifest.recording_id).await;
                out.push(Ok(Recovered { manifest, mp4_bytes }));
            }
            Err(ObjectError::NotFound(what)) => {
                warn!(recording = %manifest.recording_id, %what, "the store no longer has the recording's upload; nothing to recover");
                discard(dir, &manifest.recording_id).await;
                out.push(Err((manifest, ObjectError::NotFound(what))));
            }
            Err(err) => out.push(Err((manifest, err))),
        }
    }
    out
}

async fn finish(store: &dyn ObjectStore, dir: &Path, manifest: &Manifest) -> Result<u64, ObjectError> {
    let (_, pending_path) = paths(dir, &manifest.recording_id);
    let mut mp4_bytes = 0;
    let key = keys::recording(&manifest.meeting_id, &manifest.recording_id, "mp4");
    let pending = tokio::fs::read(&pending_path).await.unwrap_or_default();
    match &manifest.upload_id {
        Some(id) => {
            let mut upload = store.resume_upload(&key, id).await?;
            if !pending.is_empty() {
                upload.put_part(Bytes::from(pending)).await?;
            }
            mp4_bytes = upload.complete().await?;
        }
        // No part reached the store: the pending bytes are the whole file.
        None if manifest.mp4 && !pending.is_empty() => {
            mp4_bytes = pending.len() as u64;
            store.put(&key, Bytes::from(pending), "video/mp4").await?;
        }
        None => {}
    }
    if manifest.hls {
        let key = keys::recording_part(&manifest.meeting_id, &manifest.recording_id, "index.m3u8");
        match store.get(&key).await {
            Ok(playlist) if !playlist.ends_with(b"#EXT-X-ENDLIST\n") => {
                let mut ended = playlist.to_vec();
                ended.extend_from_slice(b"#EXT-X-ENDLIST\n");
                store.put(&key, Bytes::from(ended), "application/vnd.apple.mpegurl").await?;
            }
            Ok(_) | Err(ObjectError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    let log = format!("{} recovered after a restart: the recording ends at its last stored segment\n", crate::clock::unix_micros() / 1000);
    store.put(&keys::recording(&manifest.meeting_id, &manifest.recording_id, "log"), Bytes::from(log), "text/plain; charset=utf-8").await?;
    Ok(mp4_bytes)
}

/// Removes a recording's crash record and the spool files it left.
async fn discard(dir: &Path, recording_id: &str) {
    let (manifest_path, pending_path) = paths(dir, recording_id);
    let _ = tokio::fs::remove_file(manifest_path).await;
    let _ = tokio::fs::remove_file(pending_path).await;
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return };
    let prefix = format!("{recording_id}-");
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}
