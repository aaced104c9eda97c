//! Stores a recording's outputs in the object store under the seed's keys:
//! `recordings/<meeting_id>/<recording_id>.mp4` (the init segment and every media segment,
//! uploaded in parts as it grows), `recordings/<meeting_id>/<recording_id>/index.m3u8` with
//! `init.mp4` and `segment-NNNNN.m4s` beside it (the playlist rewritten as segments land), and
//! `recordings/<meeting_id>/<recording_id>.log` (what happened).
//!
//! An object the store refuses because it is unreachable is kept and sent again before the
//! next one and at the end, in order, so a store that comes back loses nothing. While the
//! store is away, what waits is spooled to files in `spool_dir` (when given), not memory.

use std::collections::VecDeque;
use std::path::PathBuf;
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
    Spooled(PathBuf),
}

impl Body {
    async fn bytes(&self) -> Result<Bytes, ObjectError> {
        match self {
            Self::Memory(bytes) => Ok(bytes.clone()),
            Self::Spooled(path) => {
                tokio::fs::read(path).await.map(Bytes::from).map_err(|e| ObjectError::Unavailable(format!("spool: {e}")))
            }
        }
    }

    async fn discard(&self) {
        if let Self::Spooled(path) = self {
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
    /// Files spooled so far, to name the next one.
    spooled: u64,
    log: String,
    /// What lets the recording be finished after a crash (with a spool folder).
    crash: Option<CrashRecord>,
}

impl Uploader {
    /// Starts the uploads of a recording (the MP4's multipart upload is created now).
    pub async fn start(store: Arc<dyn ObjectStore>, target: UploadTarget) -> Result<Self, ObjectError> {
        let mp4 = if target.mp4 {
            let key = keys::recording(&target.meeting_id, &target.recording_id, "mp4");
            Some(store.start_upload(&key, "video/mp4").await?)
        } else {
            None
        };
        let playlist = Playlist::new("init.mp4", target.segment_secs);
        let crash = match &target.spool_dir {
            Some(dir) => {
                let manifest = Manifest {
                    meeting_id: target.meeting_id.clone(),
                    recording_id: target.recording_id.clone(),
                    participant_id: target.participant_id.clone(),
                    upload_id: mp4.as_ref().map(|upload| upload.id().to_owned()),
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
            mp4,
            mp4_buffer: BytesMut::new(),
            mp4_bytes: 0,
            hls_bytes: 0,
            duration_micros: 0,
            playlist,
            pending: VecDeque::new(),
            spooled: 0,
            log: String::new(),
            crash,
        };
        uploader.note("recording started");
        Ok(uploader)
    }

    /// Adds a line to the recording's log.
    pub fn note(&mut self, line: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.log, "{} {line}", crate::clock::unix_micros() / 1000);
    }

    fn hls_key(&self, name: &str) -> String {
        keys::recording_part(&self.target.meeting_id, &self.target.recording_id, name)
    }

    /// Stores what the recording produced. Keyframe requests and gaps are only logged.
    pub async fn handle(&mut self, output: &Output) -> Result<(), ObjectError> {
        match output {
            Output::KeyframeRequest { track } => self.note(&format!("keyframe requested on track {track}")),
            Output::Gap { track, packets } => self.note(&format!("gap on track {track}: {packets} packets lost")),
            Output::InitSegment(init) => {
                self.append_mp4(init).await;
                if self.target.hls {
                    self.hls_bytes += init.len() as u64;
                    let key = self.hls_key("init.mp4");
                    self.pending.push_back(Pending::Put { key, body: Body::Memory(init.clone()), content_type: "video/mp4" });
                }
            }
            Output::MediaSegment { index, data, duration_micros } => {
                self.append_mp4(data).await;
                self.duration_micros += duration_micros;
                if let Some(crash) = self.crash.as_mut() {
                    crash.lasted(self.duration_micros).await;
                }
                if self.target.hls {
                    self.hls_bytes += data.len() as u64;
                    let name = format!("segment-{index:05}.m4s");
                    self.pending.push_back(Pending::Put {
                        key: self.hls_key(&name),
                        body: Body::Memory(data.clone()),
                        content_type: "video/iso.segment",
                    });
                    self.playlist.push(name, *duration_micros);
                    self.queue_playlist();
                }
                self.note(&format!("segment {index}: {} bytes, {} ms", data.len(), duration_micros / 1000));
            }
        }
        self.flush().await
    }

    fn queue_playlist(&mut self) {
        // Only the latest playlist matters: replace one still waiting.
        let key = self.hls_key("index.m3u8");
        self.pending.retain(|p| match p {
            Pending::Put { key: k, body: Body::Spooled(path), .. } if *k == key => {
                let _ = std::fs::remove_file(path);
                false
            }
            Pending::Put { key: k, .. } => *k != key,
            Pending::Part(_) => true,
        });
        let body = Body::Memory(Bytes::from(self.playlist.render()));
        self.pending.push_back(Pending::Put { key, body, content_type: "application/vnd.apple.mpegurl" });
    }

    async fn append_mp4(&mut self, bytes: &Bytes) {
        if self.mp4.is_some() {
            if let Some(crash) = self.crash.as_mut() {
                crash.appended(bytes).await;
            }
            self.mp4_buffer.extend_from_slice(bytes);
            self.mp4_bytes += bytes.len() as u64;
            if self.mp4_buffer.len() >= self.target.part_bytes {
                let part = self.mp4_buffer.split().freeze();
                self.pending.push_back(Pending::Part(Body::Memory(part)));
            }
        }
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
                Pending::Part(body) => match (self.mp4.as_mut(), body.bytes().await) {
                    (Some(upload), Ok(bytes)) => {
                        let length = bytes.len();
                        let sent = upload.put_part(bytes).await;
                        if let (Ok(()), Some(crash)) = (&sent, self.crash.as_mut()) {
                            crash.confirmed(length).await;
                        }
                        sent
                    }
                    (_, Err(err)) => Err(err),
                    (None, Ok(_)) => Ok(()),
                },
            };
            if let Err(err) = result {
                self.spool_backlog().await;
                return Err(err);
            }
            if let Some(sent) = self.pending.pop_front() {
                match sent {
                    Pending::Put { body, .. } | Pending::Part(body) => body.discard().await,
                }
            }
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
                *self.pending[index].body_mut() = Body::Spooled(path);
            }
        }
    }

    /// Objects waiting for the store.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// Ends the recording's objects: the playlist closed, the MP4 completed, the log written.
    /// Fails (keeping everything) while the store is unreachable; call again.
    pub async fn finish(&mut self) -> Result<UploadSummary, ObjectError> {
        if self.target.hls && !self.playlist.is_ended() {
            self.playlist.end();
            self.queue_playlist();
        }
        if !self.mp4_buffer.is_empty() {
            let part = self.mp4_buffer.split().freeze();
            self.pending.push_back(Pending::Part(Body::Memory(part)));
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
        let mut uploader = Uploader::start(store.clone(), target).await.expect("started");
        uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await.expect("init");
        uploader.handle(&segment(0, b'a')).await.expect("segment 0");
        memory.down.store(true, Ordering::SeqCst);
        assert!(matches!(uploader.handle(&segment(1, b'b')).await, Err(ObjectError::Unavailable(_))));
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
        let mut uploader = Uploader::start(store.clone(), target("r2", &spool)).await.expect("started");
        uploader.handle(&Output::InitSegment(Bytes::from_static(b"INIT"))).await.expect("init");
        uploader.handle(&segment(0, b'a')).await.expect("segment 0");
        // A part went out (16 bytes), the rest waits; then S3 goes away and the process dies.
        memory.down.store(true, Ordering::SeqCst);
        assert!(uploader.handle(&segment(1, b'b')).await.is_err());
        drop(uploader);
        assert!(memory.objects.lock().unwrap().get("recordings/m1/r2.mp4").is_none(), "nothing complete before recovery");

        // The next start, the store back: the MP4 is completed with everything produced.
        memory.down.store(false, Ordering::SeqCst);
        let recovered = crate::resume::recover(store.as_ref(), &spool).await;
        let _ = std::fs::remove_dir_all(&spool);
        assert_eq!(recovered.len(), 1);
        let recovered = recovered.into_iter().next().expect("one").expect("recovered");
        assert_eq!((recovered.manifest.recording_id.as_str(), recovered.manifest.participant_id.as_str()), ("r2", "p1"));
        assert_eq!(recovered.manifest.duration_micros, 12_000_000);
        assert_eq!(recovered.mp4_bytes, 24);
        assert_eq!(&store.get("recordings/m1/r2.mp4").await.expect("mp4")[..], b"INITaaaaaaaaaabbbbbbbbbb");
        let playlist = store.get("recordings/m1/r2/index.m3u8").await.expect("playlist");
        assert!(playlist.ends_with(b"#EXT-X-ENDLIST\n"), "the playlist is closed");
        assert_eq!(crate::resume::recover(store.as_ref(), &spool).await.len(), 0, "nothing left to recover");
    }
}
