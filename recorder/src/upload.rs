//! Stores a recording's outputs in the object store under the seed's keys:
//! `recordings/<meeting_id>/<recording_id>.mp4` (the init segment and every media segment,
//! uploaded in parts as it grows), `recordings/<meeting_id>/<recording_id>/index.m3u8` with
//! `init.mp4` and `segment-NNNNN.m4s` beside it (the playlist rewritten as segments land), and
//! `recordings/<meeting_id>/<recording_id>.log` (what happened).
//!
//! An object the store refuses because it is unreachable is kept and sent again before the
//! next one and at the end, in order, so a store that comes back loses nothing. While the
//! store is away, what waits is spooled to files in `spool_dir` (when given), not memory.
//! Nothing needs the store to start: the MP4's multipart upload is created with its first
//! part. What waits for the store, on all of a node's recordings, is bounded
//! ([`SpoolBudget`]): a recording that would pass the bound fails with
//! [`UploadError::SpoolFull`], and what it had stored stays.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::objects::{keys, MultipartUpload, ObjectError, ObjectStore};
use crate::playlist::Playlist;
use crate::recording::Output;
use crate::resume::{CrashRecord, Manifest};

/// What a recording produces and where.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    /// The meeting.
    pub meeting_id: String,
    /// The recording.
    pub recording_id: String,
    /// The recorded participant (for the crash record).
    pub participant_id: String,
    /// Write the MP4 file.
    pub mp4: bool,
    /// Write HLS.
    pub hls: bool,
    /// Size of the MP4's upload parts (at least 5 MiB for S3).
    pub part_bytes: usize,
    /// HLS target segment duration, seconds.
    pub segment_secs: u64,
    /// Folder for what waits while the store is unreachable and for the crash record
    /// ([`crate::resume`]); `None`: memory only, nothing survives a crash.
    pub spool_dir: Option<PathBuf>,
    /// The bound on what the node's recordings hold for the store.
    pub budget: Arc<SpoolBudget>,
}

/// The bytes that a node's recordings hold for the object store (in memory or spooled), and
/// their bound (`recording.spool_max_bytes`).
#[derive(Debug)]
pub struct SpoolBudget {
    held: AtomicU64,
    max: u64,
}

impl SpoolBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self { held: AtomicU64::new(0), max })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the bound.
    fn take(&self, bytes: u64) -> bool {
        self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| held.checked_add(bytes).filter(|sum| *sum <= self.max)).is_ok()
    }

    fn give(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Why a recording's uploads failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused or could not be reached; what waits is kept for the next attempt.
    #[error(transparent)]
    Store(#[from] ObjectError),
    /// Holding more for an unreachable store would pass `recording.spool_max_bytes`: the
    /// recording fails.
    #[error("the object store was unreachable until the node held its most bytes for it (recording.spool_max_bytes = {0})")]
    SpoolFull(u64),
}

/// What was stored, once the recording finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// Size of the MP4 file, bytes (0 without MP4).
    pub mp4_bytes: u64,
    /// Size of the HLS init segment and media segments, bytes (0 without HLS).
    pub hls_bytes: u64,
    /// Length of the recording, microseconds.
    pub duration_micros: i64,
    /// HLS segments stored.
    pub segments: u32,
}

/// Bytes waiting to be sent: in memory, or spooled to a file while the store is away.
enum Body {
    Memory(Bytes),
    Spooled { path: PathBuf, len: u64 },
}

impl Body {
    async fn bytes(&self) -> Result<Bytes, ObjectError> {
        match self {
            Self::Memory(bytes) => Ok(bytes.clone()),
            Self::Spooled { path, .. } => {
                tokio::fs::read(path).await.map(Bytes::from).map_err(|e| ObjectError::Unavailable(format!("spool: {e}")))
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::Spooled { len, .. } => *len,
        }
    }

    async fn discard(&self) {
        if let Self::Spooled { path, .. } = self {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
}

/// An object write waiting for the store.
enum Pending {
    Put { key: String, body: Body, content_type: &'static str },
    Part(Body),
}

impl Pending {
    fn body(&self) -> &Body {
        match self {
            Self::Put { body, .. } | Self::Part(body) => body,
        }
    }

    fn body_mut(&mut self) -> &mut Body {
        match self {
            Self::Put { body, .. } | Self::Part(body) => body,
        }
    }
}

/// The uploader of one recording.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    target: UploadTarget,
    /// The MP4's multipart upload, from its first part until it is completed.
    mp4: Option<Box<dyn MultipartUpload>>,
    /// MP4 bytes not yet sent as a part.
    mp4_buffer: BytesMut,
    mp4_bytes: u64,
    /// Bytes of the HLS segments stored or waiting.
    hls_bytes: u64,
    /// Length of the media segments so far.
    duration_micros: i64,
    playlist: Playlist,
    pending: VecDeque<Pending>,
    /// Bytes of `pending`, taken from the budget.
    pending_bytes: u64,
    /// Files spooled so far, to name the next one.
    spooled: u64,
    log: String,
    /// What lets the recording be finished after a crash (with a spool folder).
    crash: Option<CrashRecord>,
}

impl Uploader {
    /// Starts the uploads of a recording; the store is not asked for anything yet.
    pub async fn start(store: Arc<dyn ObjectStore>, target: UploadTarget) -> Self {
        let playlist = Playlist::new("init.mp4", target.segment_secs);
        let crash = match &target.spool_dir {
            Some(dir) => {
                let manifest = Manifest {
                    meeting_id: target.meeting_id.clone(),
                    recording_id: target.recording_id.clone(),
                    participant_id: target.participant_id.clone(),
                    mp4: target.mp4,
                    upload_id: None,
                    hls: target.hls,
                    duration_micros: 0,
                };
                match CrashRecord::create(dir, manifest).await {
                    Ok(record) => Some(record),
                    Err(err) => {
                        tracing::warn!(recording = %target.recording_id, %err, "no crash record: a crash would lose the MP4");
                        None
                    }
                }
            }
            None => None,
        };
        let mut uploader = Self {
            store,
            target,
            mp4: None,
            mp4_buffer: BytesMut::new(),
            mp4_bytes: 0,
            hls_bytes: 0,
            duration_micros: 0,
            playlist,
            pending: VecDeque::new(),
            pending_bytes: 0,
            spooled: 0,
            log: String::new(),
            crash,
        };
        uploader.note("recording started");
        uploader
    }

    /// Adds a line to the recording's log.
    pub fn note(&mut self, line: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.log, "{} {line}", crate::clock::unix_micros() / 1000);
    }

    fn hls_key(&self, name: &str) -> String {
        keys::recording_part(&self.target.meeting_id, &self.target.recording_id, name)
    }

    /// Queues an object write, if the budget has room for it.
    fn queue(&mut self, pending: Pending) -> Result<(), UploadError> {
        let len = pending.body().len();
        if !self.target.budget.take(len) {
            return Err(UploadError::SpoolFull(self.target.budget.max));
        }
        self.pending_bytes += len;
        self.pending.push_back(pending);
        Ok(())
    }

    /// Takes a write out of the queue, giving its bytes back.
    async fn unqueue(&mut self, pending: Pending) {
        let len = pending.body().len();
        self.pending_bytes -= len;
        self.target.budget.give(len);
        pending.body().discard().await;
    }

    /// Stores what the recording produced. Keyframe requests and gaps are only logged.
    pub async fn handle(&mut self, output: &Output) -> Result<(), UploadError> {
        match output {
            Output::KeyframeRequest { track } => self.note(&format!("keyframe requested on track {track}")),
            Output::Gap { track, packets } => self.note(&format!("gap on track {track}: {packets} packets lost")),
            Output::InitSegment(init) => {
                self.append_mp4(init).await?;
                if self.target.hls {
                    self.hls_bytes += init.len() as u64;
                    let key = self.hls_key("init.mp4");
                    self.queue(Pending::Put { key, body: Body::Memory(init.clone()), content_type: "video/mp4" })?;
                }
            }
            Output::MediaSegment { index, data, duration_micros } => {
                self.append_mp4(data).await?;
                self.duration_micros += duration_micros;
                if let Some(crash) = self.crash.as_mut() {
                    crash.lasted(self.duration_micros).await;
                }
                if self.target.hls {
                    self.hls_bytes += data.len() as u64;
                    let name = format!("segment-{index:05}.m4s");
                    self.queue(Pending::Put {
                        key: self.hls_key(&name),
                        body: Body::Memory(data.clone()),
                        content_type: "video/iso.segment",
                    })?;
                    self.playlist.push(name, *duration_micros);
                    self.queue_playlist().await?;
                }
                self.note(&format!("segment {index}: {} bytes, {} ms", data.len(), duration_micros / 1000));
            }
        }
        Ok(self.flush().await?)
    }

    async fn queue_playlist(&mut self) -> Result<(), UploadError> {
        // Only the latest playlist matters: replace one still waiting.
        let key = self.hls_key("index.m3u8");
        if let Some(index) = self.pending.iter().position(|p| matches!(p, Pending::Put { key: k, .. } if *k == key)) {
            if let Some(replaced) = self.pending.remove(index) {
                self.unqueue(replaced).await;
            }
        }
        let body = Body::Memory(Bytes::from(self.playlist.render()));
        self.queue(Pending::Put { key, body, content_type: "application/vnd.apple.mpegurl" })
    }

    async fn append_mp4(&mut self, bytes: &Bytes) -> Result<(), UploadError> {
        if self.target.mp4 {
            if let Some(crash) = self.crash.as_mut() {
                crash.appended(bytes).await;
            }
            self.mp4_buffer.extend_from_slice(bytes);
            self.mp4_bytes += bytes.len() as u64;
            if self.mp4_buffer.len() >= self.target.part_bytes {
                let part = self.mp4_buffer.split().freeze();
                self.queue(Pending::Part(Body::Memory(part)))?;
            }
        }
        Ok(())
    }

    /// The MP4's multipart upload, created (and noted in the crash record) on first use.
    async fn mp4_upload(&mut self) -> Result<&mut Box<dyn MultipartUpload>, ObjectError> {
        let upload = match self.mp4.take() {
            Some(upload) => upload,
            None => {
                let key = keys::recording(&self.target.meeting_id, &self.target.recording_id, "mp4");
                let upload = self.store.start_upload(&key, "video/mp4").await?;
                if let Some(crash) = self.crash.as_mut() {
                    crash.upload_started(upload.id()).await;
                }
                upload
            }
        };
        Ok(self.mp4.insert(upload))
    }

    /// Sends what waits, in order; stops at the first failure, keeping it and what follows
    /// (spooled to disk when a spool folder is set).
    async fn flush(&mut self) -> Result<(), ObjectError> {
        while let Some(next) = self.pending.front() {
            let result = match next {
                Pending::Put { key, body, content_type } => match body.bytes().await {
                    Ok(bytes) => self.store.put(key, bytes, content_type).await,
                    Err(err) => Err(err),
                },
                Pending::Part(body) => match body.bytes().await {
                    Ok(bytes) => self.send_part(bytes).await,
                    Err(err) => Err(err),
                },
            };
            if let Err(err) = result {
                self.spool_backlog().await;
                return Err(err);
            }
            if let Some(sent) = self.pending.pop_front() {
                self.unqueue(sent).await;
            }
        }
        Ok(())
    }

    /// Sends a part of the MP4, and notes in the crash record that the store has it.
    async fn send_part(&mut self, bytes: Bytes) -> Result<(), ObjectError> {
        let length = bytes.len();
        self.mp4_upload().await?.put_part(bytes).await?;
        if let Some(crash) = self.crash.as_mut() {
            crash.confirmed(length).await;
        }
        Ok(())
    }

    /// Moves what waits in memory to the spool folder.
    async fn spool_backlog(&mut self) {
        let Some(dir) = self.target.spool_dir.clone() else { return };
        if tokio::fs::create_dir_all(&dir).await.is_err() {
            return;
        }
        for index in 0..self.pending.len() {
            let Body::Memory(bytes) = self.pending[index].body_mut() else { continue };
            let path = dir.join(format!("{}-{:06}.spool", self.target.recording_id, self.spooled));
            self.spooled += 1;
            if tokio::fs::write(&path, &bytes).await.is_ok() {
                let len = bytes.len() as u64;
                *self.pending[index].body_mut() = Body::Spooled { path, len };
            }
        }
    }

    /// Objects waiting for the store.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// Ends the recording's objects: the playlist closed, the MP4 completed, the log written.
    /// Fails (keeping everything) while the store is unreachable; call again.
    pub async fn finish(&mut self) -> Result<UploadSummary, UploadError> {
        if self.target.hls && !self.playlist.is_ended() {
            self.playlist.end();
            self.queue_playlist().await?;
        }
        if !self.mp4_buffer.is_empty() {
            let part = self.mp4_buffer.split().freeze();
            self.queue(Pending::Part(Body::Memory(part)))?;
        }
        self.flush().await?;
        if let Some(upload) = self.mp4.as_mut() {
            upload.complete().await?;
            self.mp4 = None;
        }
        let summary = UploadSummary {
            mp4_bytes: if self.target.mp4 { self.mp4_bytes } else { 0 },
            hls_bytes: self.hls_bytes,
            duration_micros: self.duration_micros,
            segments: self.playlist.segments().len() as u32,
        };
        self.note(&format!("recording finished: {} segments, {} ms", summary.segments, summary.duration_micros / 1000));
        let key = keys::recording(&self.target.meeting_id, &self.target.recording_id, "log");
        self.store.put(&key, Bytes::from(self.log.clone()), "text/plain; charset=utf-8").await?;
        if let Some(crash) = self.crash.take() {
            crash.remove().await;
        }
        Ok(summary)
    }

    /// Gives the recording up (it failed): what waits for the store is dropped, spooled
    /// files and the crash record removed; what the store has stays.
    pub async fn abandon(mut self) {
        while let Some(pending) = self.pending.pop_front() {
            self.unqueue(pending).await;
        }
        if let Some(crash) = self.crash.take() {
            crash.remove().await;
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.target.budget.give(self.pending_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectInfo;
    use async_trait::async_trait;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// An object store in memory that can be switched off.
    #[derive(Default)]
    struct MemoryStore {
        objects: Mutex<BTreeMap<String, Bytes>>,
        /// Multipart uploads in progress: their parts so far, by id.
        uploads: Mutex<BTreeMap<String, BytesMut>>,
        down: AtomicBool,
    }

    impl MemoryStore {
        fn check(&self) -> Result<(), ObjectError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ObjectError::Unavailable("switched off".into()));
            }
            Ok(())
        }
    }

    struct MemoryUpload {
        store: Arc<MemoryStore>,
        key: String,
        id: String,
    }

    #[async_trait]
    impl MultipartUpload for MemoryUpload {
        fn id(&self) -> &str {
            &self.id
        }
        async fn put_part(&mut self, body: Bytes) -> Result<(), ObjectError> {
            self.store.check()?;
            self.store.uploads.lock().unwrap().entry(self.id.clone()).or_default().extend_from_slice(&body);
            Ok(())
        }
        async fn complete(&mut self) -> Result<u64, ObjectError> {
            self.store.check()?;
            let data = self.store.uploads.lock().unwrap().remove(&self.id).ok_or_else(|| ObjectError::NotFound(self.id.clone()))?;
            let size = data.len() as u64;
            self.store.objects.lock().unwrap().insert(self.key.clone(), data.freeze());
            Ok(size)
        }
        async fn abort(&mut self) -> Result<(), ObjectError> {
            Ok(())
        }
    }

    #[async_trait]
    impl ObjectStore for Arc<MemoryStore> {
        async fn put(&self, key: &str, body: Bytes, _: &str) -> Result<(), ObjectError> {
            self.check()?;
            self.objects.lock().unwrap().insert(key.to_owned(), body);
            Ok(())
        }
        async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
            self.objects.lock().unwrap().get(key).cloned().ok_or_else(|| ObjectError::NotFound(key.to_owned()))
        }
        async fn delete(&self, key: &str) -> Result<(), ObjectError> {
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
            let objects = self.objects.lock().unwrap();
            Ok(objects
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| ObjectInfo { key: k.clone(), size: v.len() as u64 })
                .collect())
        }
        async fn start_upload(&self, key: &str, _: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
            self.check()?;
            let id = format!("upload-{}", self.uploads.lock().unwrap().len());
            self.uploads.lock().unwrap().insert(id.clone(), BytesMut::new());
            Ok(Box::new(MemoryUpload { store: self.clone(), key: key.to_owned(), id }))
        }
        async fn resume_upload(&self, key: &str, id: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
            self.check()?;
            if !self.uploads.lock().unwrap().contains_key(id) {
                return Err(ObjectError::NotFound(id.to_owned()));
            }
            Ok(Box::new(MemoryUpload { store: self.clone(), key: key.to_owned(), id: id.to_owned() }))
        }
        async fn presign_get(&self, key: &str, _: Duration) -> Result<String, ObjectError> {
            Ok(format!("memory://{key}"))
        }
    }

    fn target(recording_id: &str, spool: &std::path::Path) -> UploadTarget {
        UploadTarget {
            meeting_id: "m1".into(),
            recording_id: recording_id.into(),
            participant_id: "p1".into(),
            mp4: true,
            hls: true,
            part_bytes: 16,
            segment_secs: 6,
            spool_dir: Some(spool.to_owned()),
            budget: SpoolBudget::new(1 << 20),
        }
    }

    fn segment(index: u32, fill: u8) -> Output {
        Output::MediaSegment { index, data: Bytes::from(vec![fill; 10]), duration_micros: 6_000_000 }
    }

    fn spool_files(spool: &std::path::Path) -> usize {
        std::fs::read_dir(spool)
            .expect("spool folder")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "spool")))
            .count()
    }

    #[tokio::test]
    async fn segments_wait_out_an_outage_and_everything_lands_in_order() {
        let memory = Arc::new(MemoryStore::default());
        let store: Arc<dyn ObjectStore> = Arc::new(memory.clone());
        let spool = std::env::temp_dir().join(format!("switchboard-spool-{}", std::process::id()));
        let target = target("r1", &spool);
        let mut uploader = Uploader::start(store.clone(), target).await;
        uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await.expect("init");
        uploader.handle(&segment(0, b'a')).await.expect("segment 0");
        memory.down.store(true, Ordering::SeqCst);
        assert!(matches!(uploader.handle(&segment(1, b'b')).await, Err(UploadError::Store(ObjectError::Unavailable(_)))));
        assert!(uploader.handle(&Output::KeyframeRequest { track: 0 }).await.is_err(), "still away");
        assert!(uploader.backlog() > 0);
        assert_eq!(spool_files(&spool), uploader.backlog(), "what waits is on disk, not in memory");
        memory.down.store(false, Ordering::SeqCst);
        uploader.handle(&segment(2, b'c')).await.expect("back");
        assert_eq!(uploader.backlog(), 0);
        assert_eq!(spool_files(&spool), 0, "spool files removed once sent");
        let _ = std::fs::remove_dir_all(&spool);
        let summary = uploader.finish().await.expect("finished");
        assert_eq!(summary, UploadSummary { mp4_bytes: 34, hls_bytes: 34, duration_micros: 18_000_000, segments: 3 });

        let get = |key: &str| {
            let store = store.clone();
            let key = key.to_owned();
            async move { store.get(&key).await.expect(&key) }
        };
        assert_eq!(&get("recordings/m1/r1.mp4").await[..], b"INITaaaaaaaaaabbbbbbbbbbcccccccccc");
        assert_eq!(&get("recordings/m1/r1/init.mp4").await[..], b"INIT");
        assert_eq!(&get("recordings/m1/r1/segment-00001.m4s").await[..], b"bbbbbbbbbb");
        let playlist = String::from_utf8(get("recordings/m1/r1/index.m3u8").await.to_vec()).expect("utf-8");
        assert_eq!(playlist.matches("#EXTINF:6.000000,").count(), 3);
        assert!(playlist.ends_with("#EXT-X-ENDLIST\n"));
        let log = String::from_utf8(get("recordings/m1/r1.log").await.to_vec()).expect("utf-8");
        assert!(
            log.contains("recording started") && log.contains("keyframe requested") && log.contains("recording finished: 3 segments"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_recording_cut_by_a_crash_is_finished_at_the_next_start() {
        let memory = Arc::new(MemoryStore::default());
        let store: Arc<dyn ObjectStore> = Arc::new(memory.clone());
        let spool = std::env::temp_dir().join(format!("switchboard-crash-{}", std::process::id()));
        let mut uploader = Uploader::start(store.clone(), target("r2", &spool)).await;
        uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await.expect("init");
        uploader.handle(&segment(0, b'a')).await.expect("segment 0");
        // A part went out (24 bytes, the upload made with it), then S3 goes away, the next
        // segment waits, and the process dies.
        uploader.handle(&segment(1, b'b')).await.expect("segment 1");
        memory.down.store(true, Ordering::SeqCst);
        assert!(uploader.handle(&segment(2, b'c')).await.is_err());
        drop(uploader);
        assert!(memory.objects.lock().unwrap().get("recordings/m1/r2.mp4").is_none(), "nothing complete before recovery");

        // The next start, the store back: the MP4 is completed with everything produced.
        memory.down.store(false, Ordering::SeqCst);
        let recovered = crate::resume::recover(store.as_ref(), &spool).await;
        let _ = std::fs::remove_dir_all(&spool);
        assert_eq!(recovered.len(), 1);
        let recovered = recovered.into_iter().next().expect("one").expect("recovered");
        assert_eq!((recovered.manifest.recording_id.as_str(), recovered.manifest.participant_id.as_str()), ("r2", "p1"));
        assert_eq!(recovered.manifest.duration_micros, 18_000_000);
        assert!(recovered.manifest.upload_id.is_some(), "taken up where it was");
        assert_eq!(recovered.mp4_bytes, 34);
        assert_eq!(&store.get("recordings/m1/r2.mp4").await.expect("mp4")[..], b"INITaaaaaaaaaabbbbbbbbbbcccccccccc");
        let playlist = store.get("recordings/m1/r2/index.m3u8").await.expect("playlist");
        assert!(playlist.ends_with(b"#EXT-X-ENDLIST\n"), "the playlist is closed");
        assert_eq!(crate::resume::recover(store.as_ref(), &spool).await.len(), 0, "nothing left to recover");
    }

    #[tokio::test]
    async fn a_recording_started_while_the_store_is_down_waits_on_disk_and_lands_when_it_returns() {
        let memory = Arc::new(MemoryStore::default());
        memory.down.store(true, Ordering::SeqCst);
        let store: Arc<dyn ObjectStore> = Arc::new(memory.clone());
        let spool = std::env::temp_dir().join(format!("switchboard-down-{}", std::process::id()));
        let target = target("r3", &spool);
        let budget = target.budget.clone();
        let mut uploader = Uploader::start(store.clone(), target).await;
        assert!(uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await.is_err());
        for (index, fill) in [(0, b'a'), (1, b'b'), (2, b'c')] {
            assert!(uploader.handle(&segment(index, fill)).await.is_err(), "the store is away");
        }
        assert!(uploader.backlog() > 0 && spool_files(&spool) == uploader.backlog(), "what waits is on disk");
        assert!(budget.held() > 0);
        memory.down.store(false, Ordering::SeqCst);
        let summary = uploader.finish().await.expect("finished once the store is back");
        assert_eq!(summary.mp4_bytes, 34);
        assert_eq!(&store.get("recordings/m1/r3.mp4").await.expect("mp4")[..], b"INITaaaaaaaaaabbbbbbbbbbcccccccccc");
        assert_eq!(&store.get("recordings/m1/r3/segment-00002.m4s").await.expect("segment")[..], b"cccccccccc");
        assert_eq!((budget.held(), spool_files(&spool)), (0, 0), "every byte given back, every spool file gone");
        let _ = std::fs::remove_dir_all(&spool);
    }

    #[tokio::test]
    async fn past_the_spool_budget_a_recording_fails_and_gives_its_bytes_back() {
        let memory = Arc::new(MemoryStore::default());
        memory.down.store(true, Ordering::SeqCst);
        let store: Arc<dyn ObjectStore> = Arc::new(memory.clone());
        let spool = std::env::temp_dir().join(format!("switchboard-full-{}", std::process::id()));
        let mut target = target("r4", &spool);
        target.budget = SpoolBudget::new(400);
        let budget = target.budget.clone();
        let mut uploader = Uploader::start(store, target).await;
        let _ = uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await;
        let mut index = 0;
        let full = loop {
            match uploader.handle(&segment(index, b'x')).await {
                Err(UploadError::SpoolFull(max)) => break max,
                Err(UploadError::Store(_)) => {}
                Ok(()) => panic!("the store is away"),
            }
            assert!(budget.held() <= 400, "never past the bound");
            index += 1;
            assert!(index < 100, "the bound is reached");
        };
        assert!(index > 1, "a few segments fit");
        assert_eq!(full, 400);
        assert!(UploadError::SpoolFull(full).to_string().contains("recording.spool_max_bytes"));
        assert!(spool_files(&spool) > 0);
        uploader.abandon().await;
        assert_eq!((budget.held(), spool_files(&spool)), (0, 0), "the failed recording holds nothing");
        assert!(!spool.join("r4.manifest").exists(), "nor a crash record to recover");
        let _ = std::fs::remove_dir_all(&spool);
    }

    #[tokio::test]
    async fn a_crash_before_any_part_reached_the_store_is_recovered_whole() {
        let memory = Arc::new(MemoryStore::default());
        memory.down.store(true, Ordering::SeqCst);
        let store: Arc<dyn ObjectStore> = Arc::new(memory.clone());
        let spool = std::env::temp_dir().join(format!("switchboard-nopart-{}", std::process::id()));
        let mut uploader = Uploader::start(store.clone(), target("r5", &spool)).await;
        let _ = uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await;
        let _ = uploader.handle(&segment(0, b'a')).await;
        drop(uploader);
        memory.down.store(false, Ordering::SeqCst);
        let recovered = crate::resume::recover(store.as_ref(), &spool).await;
        let _ = std::fs::remove_dir_all(&spool);
        let recovered = recovered.into_iter().next().expect("one").expect("recovered");
        assert_eq!((recovered.manifest.upload_id, recovered.mp4_bytes), (None, 14));
        assert_eq!(&store.get("recordings/m1/r5.mp4").await.expect("mp4")[..], b"INITaaaaaaaaaa");
    }
}
