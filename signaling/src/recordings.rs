//! Recording control: which rooms of this node are being recorded, started and stopped from
//! signaling (the record grant), the HTTP API, `<prefix>.tasks` and auto-record; and what
//! the rest of the system learns of each recording (a `meeting_recordings` row, the
//! `recording.*` events, a `recording` message to the room, and on finish a transcription
//! task with its `ai_tasks` row).
//!
//! A room recording writes one file per publishing participant (see [`recorder::room`]);
//! participants who start publishing while it runs are recorded too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use recorder::objects::{keys, ObjectStore};
use recorder::recording::RecordingSettings;
use recorder::room::{RecordingInfo, RecordingObserver, RoomRecorder, RoomRecorderSettings};
use recorder::upload::{SpoolBudget, UploadSummary};
use serde_json::json;
use sfu::{ParticipantId, RoomId, Sfu, SfuError};
use tracing::{info, warn};

use crate::bookkeeping::Bookkeeping;
use crate::events::EventKind;
use crate::journal::{Record, RecordingStatus};
use crate::protocol::{RecordingSummary, ServerMessage};
use crate::rooms::Rooms;
use crate::stamps::{new_id, unix_ms};

/// What a recording writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// One MP4 file.
    pub mp4: bool,
    /// HLS: fMP4 segments and a playlist.
    pub hls: bool,
}

impl Formats {
    /// Parses `mp4`, `hls` or `mp4+hls` (also `hls+mp4`, `both`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mp4" => Some(Self { mp4: true, hls: false }),
            "hls" => Some(Self { mp4: false, hls: true }),
            "mp4+hls" | "hls+mp4" | "both" => Some(Self { mp4: true, hls: true }),
            _ => None,
        }
    }

    /// The `meeting_recordings.format` value.
    pub fn name(self) -> &'static str {
        match (self.mp4, self.hls) {
            (true, true) => "mp4+hls",
            (false, true) => "hls",
            _ => "mp4",
        }
    }
}

/// How recordings are made on this node (the `recording` configuration section).
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Formats when a request names none.
    pub default_formats: Formats,
    /// HLS segment length.
    pub segment: Duration,
    /// Longest recording of one participant (the seed's 14400 s).
    pub max_duration: Duration,
    /// Size of the MP4's upload parts.
    pub part_bytes: usize,
    /// Folder for uploads waiting for an unreachable object store.
    pub spool_dir: Option<std::path::PathBuf>,
    /// The bound on what the node's recordings hold for the store (one for all).
    pub spool_budget: Arc<SpoolBudget>,
    /// How long a finished recording's uploads are retried while the store is away.
    pub finish_retry: Duration,
    /// Rooms recorded as soon as they open (`*`: every room).
    pub auto_record: Vec<String>,
    /// Packets a recorder's queue holds before it loses some.
    pub queue_packets: usize,
}

/// Why a recording request failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The room has no participants on this node.
    #[error("room `{0}` is not open on this node")]
    NoSuchRoom(String),
    /// The named participant is not in the room.
    #[error("the participant named is not in the room")]
    NoSuchParticipant(String),
    /// The room is already being recorded.
    #[error("room `{0}` is already being recorded")]
    AlreadyRecording(String),
    /// Nothing to stop.
    #[error("no recording of that id is running in this room")]
    NotRecording(String),
    /// The format is not `mp4`, `hls` or `mp4+hls`.
    #[error("unknown format (mp4, hls or mp4+hls)")]
    BadFormat(String),
    /// The media plane refused the tap.
    #[error("media plane: {0}")]
    Media(#[from] SfuError),
}

/// What recordings need of the signaling node they belong to: its presence, media plane,
/// bookkeeping, and these recordings themselves (a finished recording updates the running
/// list). Signaling's context provides it.
pub trait RecordingContext: Send + Sync {
    /// Presence.
    fn rooms(&self) -> &Rooms;
    /// The media plane.
    fn sfu(&self) -> &Sfu;
    /// Shared state, persistence and events.
    fn books(&self) -> &Bookkeeping;
    /// This node's recordings.
    fn recordings(&self) -> &Recordings;
}

/// A room being recorded.
struct RoomRecording {
    recorder: RoomRecorder,
    /// Recordings running now.
    running: Vec<RecordingSummary>,
}

/// The recordings of this node.
pub struct Recordings {
    config: RecordingConfig,
    store: Arc<dyn ObjectStore>,
    context: Weak<dyn RecordingContext>,
    rooms: Mutex<HashMap<String, RoomRecording>>,
    /// Held for the process's life: the spool folder is this process's alone.
    _spool_lock: Option<std::fs::File>,
}

impl Recordings {
    /// Recordings stored in `store`; `context` is the signaling context this belongs to.
    ///
    /// The spool folder is claimed with a lock file: a second process given the same folder
    /// records without it (uploads wait in memory, nothing survives a crash) rather than take
    /// over the first one's crash records.
    pub fn new(mut config: RecordingConfig, store: Arc<dyn ObjectStore>, context: Weak<dyn RecordingContext>) -> Self {
        let spool_lock = config.spool_dir.as_deref().and_then(|dir| match claim(dir) {
            Ok(lock) => Some(lock),
            Err(err) => {
                warn!(dir = %dir.display(), %err, "spool folder not available: recordings wait in memory and do not survive a crash");
                None
            }
        });
        if spool_lock.is_none() {
            config.spool_dir = None;
        }
        Self { config, store, context, rooms: Mutex::new(HashMap::new()), _spool_lock: spool_lock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomRecording>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts recording a room open on this node: every publisher, or only `identity`.
    /// Returns the recordings started at once (participants publishing now); others
    /// start as participants publish.
    pub async fn start(
        &self,
        meeting_id: &str,
        format: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Vec<RecordingSummary>, RecordingError> {
        let formats = match format {
            Some(name) => Formats::parse(name).ok_or_else(|| RecordingError::BadFormat(name.to_owned()))?,
            None => self.config.default_formats,
        };
        let context = self.context.upgrade().ok_or_else(|| RecordingError::NoSuchRoom(meeting_id.to_owned()))?;
        if !context.rooms().is_open(meeting_id) {
            return Err(RecordingError::NoSuchRoom(meeting_id.to_owned()));
        }
        let only = match identity {
            Some(identity) => Some(
                context
                    .rooms()
                    .participant_of(meeting_id, identity)
                    .map(ParticipantId::new)
                    .ok_or_else(|| RecordingError::NoSuchParticipant(identity.to_owned()))?,
            ),
            None => None,
        };
        if self.lock().get(meeting_id).is_some_and(|r| !r.recorder.is_finished()) {
            return Err(RecordingError::AlreadyRecording(meeting_id.to_owned()));
        }
        let tap = context.sfu().tap(RoomId::new(meeting_id), self.config.queue_packets).await?;
        let settings = RoomRecorderSettings {
            meeting_id: meeting_id.to_owned(),
            mp4: formats.mp4,
            hls: formats.hls,
            only,
            recording: RecordingSettings { segment_target: self.config.segment, ..RecordingSettings::default() },
            part_bytes: self.config.part_bytes,
            spool_dir: self.config.spool_dir.clone(),
            spool_budget: self.config.spool_budget.clone(),
            max_duration: self.config.max_duration,
            settle: SETTLE,
            finish_retry: self.config.finish_retry,
        };
        let observer = Arc::new(Reporter { context: self.context.clone(), formats });
        let (recorder, started) = RoomRecorder::start(tap, self.store.clone(), settings, observer).await;
        let mut rooms = self.lock();
        if rooms.get(meeting_id).is_some_and(|r| !r.recorder.is_finished()) {
            // Another request won the race: this one's recorder stops before writing.
            recorder.stop();
            return Err(RecordingError::AlreadyRecording(meeting_id.to_owned()));
        }
        let running = started.iter().map(|info| summary(context.as_ref(), info, formats)).collect::<Vec<_>>();
        rooms.insert(meeting_id.to_owned(), RoomRecording { recorder, running: running.clone() });
        info!(meeting = meeting_id, format = formats.name(), "room recording started");
        Ok(running)
    }

    /// Stops a room's recording (`recording_id`: only that participant's file). Files are
    /// finished and stored in the background.
    pub fn stop(&self, meeting_id: &str, recording_id: Option<&str>) -> Result<(), RecordingError> {
        let mut rooms = self.lock();
        let Some(room) = rooms.get(meeting_id) else {
            return Err(RecordingError::NotRecording(recording_id.unwrap_or(meeting_id).to_owned()));
        };
        match recording_id {
            Some(id) if room.running.iter().any(|r| r.recording_id == id) => room.recorder.stop_recording(id),
            Some(id) => return Err(RecordingError::NotRecording(id.to_owned())),
            None => {
                if let Some(room) = rooms.remove(meeting_id) {
                    room.recorder.stop();
                    tokio::spawn(room.recorder.stopped());
                }
            }
        }
        Ok(())
    }

    /// The recordings running in a room.
    pub fn running(&self, meeting_id: &str) -> Vec<RecordingSummary> {
        self.lock().get(meeting_id).map(|r| r.running.clone()).unwrap_or_default()
    }

    /// A room opened: recorded at once if auto-record names it.
    pub async fn room_opened(&self, meeting_id: &str) {
        if self.config.auto_record.iter().any(|room| room == "*" || room == meeting_id) {
            if let Err(err) = self.start(meeting_id, None, None).await {
                warn!(meeting = meeting_id, %err, "auto-record did not start");
            }
        }
    }

    /// A room's last participant left: its recording ends.
    pub fn room_closed(&self, meeting_id: &str) {
        if let Some(room) = self.lock().remove(meeting_id) {
            room.recorder.stop();
            tokio::spawn(room.recorder.stopped());
        }
    }

    /// Finishes every recording (graceful shutdown), waiting at most `timeout` for their
    /// uploads.
    pub async fn shutdown(&self, timeout: Duration) {
        let rooms: Vec<RoomRecording> = self.lock().drain().map(|(_, room)| room).collect();
        if rooms.is_empty() {
            return;
        }
        info!(rooms = rooms.len(), "finishing recordings");
        let all = futures_join(rooms.into_iter().map(|room| {
            room.recorder.stop();
            room.recorder.stopped()
        }));
        if tokio::time::timeout(timeout, all).await.is_err() {
            warn!("recordings not all stored before the shutdown timeout");
        }
    }

    /// Finishes, in the background, the recordings a crashed run of this node left in the
    /// spool folder (see [`recorder::resume`]), and records them as done. Retried while the
    /// object store is unreachable.
    pub fn recover_crashed(&self) {
        let Some(dir) = self.config.spool_dir.clone() else { return };
        let store = self.store.clone();
        let context = self.context.clone();
        tokio::spawn(async move {
            loop {
                let mut waiting = false;
                for result in recorder::resume::recover(store.as_ref(), &dir).await {
                    match result {
                        Ok(recovered) => {
                            let manifest = &recovered.manifest;
                            info!(recording = %manifest.recording_id, bytes = recovered.mp4_bytes, "recording recovered after a restart");
                            let info = RecordingInfo {
                                recording_id: manifest.recording_id.clone(),
                                meeting_id: manifest.meeting_id.clone(),
                                participant: ParticipantId::new(manifest.participant_id.as_str()),
                                tracks: Vec::new(),
                                mp4: manifest.upload_id.is_some(),
                                hls: manifest.hls,
                            };
                            let formats = Formats { mp4: info.mp4, hls: info.hls };
                            let summary = UploadSummary {
                                mp4_bytes: recovered.mp4_bytes,
                                hls_bytes: 0,
                                duration_micros: manifest.duration_micros,
                                segments: 0,
                            };
                            Reporter { context: context.clone(), formats }.finished(&info, &summary);
                        }
                        Err((manifest, recorder::objects::ObjectError::Unavailable(err))) => {
                            warn!(recording = %manifest.recording_id, %err, "object store unreachable; recovery retried");
                            waiting = true;
                        }
                        Err((manifest, err)) => warn!(recording = %manifest.recording_id, %err, "recording not recovered"),
                    }
                }
                if !waiting || context.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(RECOVERY_RETRY).await;
            }
        });
    }

    fn set_running(&self, meeting_id: &str, change: impl FnOnce(&mut Vec<RecordingSummary>)) {
        if let Some(room) = self.lock().get_mut(meeting_id) {
            change(&mut room.running);
        }
    }
}

/// Takes the spool folder for this process: an exclusive lock on its `.lock` file.
fn claim(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other("used by another process")),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

/// Waits for every future (in their own tasks, so they progress together).
async fn futures_join<F>(futures: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Pause between attempts at recovering recordings while the object store is away.
const RECOVERY_RETRY: Duration = Duration::from_secs(10);

/// How long after a participant's first track its recording starts.
const SETTLE: Duration = Duration::from_millis(1000);

fn summary(context: &dyn RecordingContext, info: &RecordingInfo, formats: Formats) -> RecordingSummary {
    RecordingSummary {
        recording_id: info.recording_id.clone(),
        participant_id: info.participant.to_string(),
        identity: context.rooms().identity_of(&info.meeting_id, info.participant.as_str()),
        format: formats.name().to_owned(),
    }
}

/// Tells the database, the event sink and the room of a room recording's files.
struct Reporter {
    context: Weak<dyn RecordingContext>,
    formats: Formats,
}

impl Reporter {
    fn announce(context: &dyn RecordingContext, recording: &RecordingSummary, meeting_id: &str, state: &str) {
        let message = ServerMessage::Recording {
            recording_id: recording.recording_id.clone(),
            participant_id: recording.participant_id.clone(),
            format: recording.format.clone(),
            state: state.to_owned(),
        };
        context.rooms().broadcast(meeting_id, &message);
    }

    fn ended(&self, info: &RecordingInfo, status: RecordingStatus, summary: Option<&UploadSummary>, error: Option<&str>) {
        let Some(context) = self.context.upgrade() else { return };
        let recording = self::summary(context.as_ref(), info, self.formats);
        context.recordings().set_running(&info.meeting_id, |running| running.retain(|r| r.recording_id != info.recording_id));
        let books = context.books();
        let duration_ms = summary.map_or(0, |s| u64::try_from(s.duration_micros / 1000).unwrap_or(0));
        books.journal.record(Record::RecordingEnded {
            recording_id: info.recording_id.clone(),
            status,
            // The MP4's size; for HLS alone, its segments'.
            file_size: summary.map_or(0, |s| i64::try_from(if info.mp4 { s.mp4_bytes } else { s.hls_bytes }).unwrap_or(i64::MAX)),
            // To the nearest second: a 3.02 s recording is 3 s long, as players show it.
            duration_secs: i32::try_from((duration_ms + 500) / 1000).unwrap_or(i32::MAX),
            at_ms: unix_ms(),
        });
        let participant_id = info.participant.to_string();
        let (kind, state) = match (summary, error) {
            (Some(summary), None) => {
                let mp4_key = info.mp4.then(|| keys::recording(&info.meeting_id, &info.recording_id, "mp4"));
                let playlist_key = info.hls.then(|| keys::recording_part(&info.meeting_id, &info.recording_id, "index.m3u8"));
                self.request_transcription(context.as_ref(), info, mp4_key.clone(), playlist_key.clone());
                let kind = EventKind::RecordingFinished {
                    recording_id: info.recording_id.clone(),
                    participant_id,
                    mp4_key,
                    playlist_key,
                    size: summary.mp4_bytes,
                    duration_ms,
                };
                (kind, "finished")
            }
            _ => {
                let error = error.unwrap_or("failed").to_owned();
                (EventKind::RecordingFailed { recording_id: info.recording_id.clone(), participant_id, error }, "failed")
            }
        };
        books.event(&info.meeting_id, unix_ms(), kind);
        Self::announce(context.as_ref(), &recording, &info.meeting_id, state);
    }

    /// Asks other services to transcribe a finished recording: a `transcription` task on
    /// the tasks topic and its `ai_tasks` row.
    fn request_transcription(
        &self,
        context: &dyn RecordingContext,
        info: &RecordingInfo,
        mp4_key: Option<String>,
        playlist_key: Option<String>,
    ) {
        let task_id = new_id("TK_");
        let input = json!({
            "recording_id": info.recording_id,
            "participant_id": info.participant.as_str(),
            "mp4_key": mp4_key,
            "playlist_key": playlist_key,
        });
        let task = json!({
            "task_id": task_id,
            "type": "transcription",
            "meeting_id": info.meeting_id,
            "recording_id": info.recording_id,
            "input": input,
        });
        context.books().events.submit_task(&info.meeting_id, &task);
        context.books().journal.record(Record::AiTask {
            task_id,
            task_type: "transcription".into(),
            meeting_id: info.meeting_id.clone(),
            recording_id: Some(info.recording_id.clone()),
            input,
        });
    }
}

impl RecordingObserver for Reporter {
    fn started(&self, info: &RecordingInfo) {
        let Some(context) = self.context.upgrade() else { return };
        let recording = summary(context.as_ref(), info, self.formats);
        context.recordings().set_running(&info.meeting_id, |running| {
            if !running.iter().any(|r| r.recording_id == recording.recording_id) {
                running.push(recording.clone());
            }
        });
        let (filename, file_path) = if info.mp4 {
            (format!("{}.mp4", info.recording_id), keys::recording(&info.meeting_id, &info.recording_id, "mp4"))
        } else {
            ("index.m3u8".to_owned(), keys::recording_part(&info.meeting_id, &info.recording_id, "index.m3u8"))
        };
        let at_ms = unix_ms();
        context.books().journal.record(Record::RecordingStarted {
            recording_id: info.recording_id.clone(),
            meeting_id: info.meeting_id.clone(),
            room_id: context.rooms().room_id(&info.meeting_id),
            filename,
            file_path,
            format: self.formats.name().to_owned(),
            at_ms,
        });
        let kind = EventKind::RecordingStarted {
            recording_id: info.recording_id.clone(),
            participant_id: info.participant.to_string(),
            format: self.formats.name().to_owned(),
        };
        context.books().event(&info.meeting_id, at_ms, kind);
        Self::announce(context.as_ref(), &recording, &info.meeting_id, "started");
    }

    fn finished(&self, info: &RecordingInfo, summary: &UploadSummary) {
        self.ended(info, RecordingStatus::Done, Some(summary), None);
    }

    fn failed(&self, info: &RecordingInfo, error: &str) {
        self.ended(info, RecordingStatus::Failed, None, Some(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_folder_belongs_to_one_process_at_a_time() {
        let dir = std::env::temp_dir().join(format!("switchboard-claim-{}", std::process::id()));
        let first = claim(&dir).expect("free folder");
        assert!(claim(&dir).is_err(), "held by the first claim");
        drop(first);
        assert!(claim(&dir).is_ok(), "free again once released");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn formats_parse_and_name() {
        assert_eq!(Formats::parse("mp4+hls"), Some(Formats { mp4: true, hls: true }));
        assert_eq!(Formats::parse("hls").map(Formats::name), Some("hls"));
        assert_eq!(Formats::parse("avi"), None);
    }
}
