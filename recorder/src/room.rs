//! Records a room: attached to the room's media through an SFU tap, it keeps one
//! [`Recording`] per publishing participant (audio and video in one file) and stores each
//! through its own [`Uploader`] task, so a slow object store never holds up the packets.
//!
//! A participant's recording starts once its tracks have settled (audio and video of one
//! offer arrive a moment apart) and ends when one of its tracks ends (a new file starts with
//! the tracks it still has), when a track is added (a new file starts with all of them: an
//! MP4's track list is fixed), when it reaches the length limit, or when the recording is
//! stopped. Lifecycle changes are reported to a [`RecordingObserver`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use sfu::{MediaKind, ParticipantId, RoomTap, TapEvent, TrackId, TrackInfo};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::assembler::Codec;
use crate::jitter::RtpPacket;
use crate::objects::ObjectStore;
use crate::recording::{Output, Recording, RecordingSettings};
use crate::upload::{SpoolBudget, UploadError, UploadSummary, UploadTarget, Uploader};

/// How a room is recorded.
#[derive(Debug, Clone)]
pub struct RoomRecorderSettings {
    /// The meeting (object keys are under it).
    pub meeting_id: String,
    /// Write an MP4 file per participant.
    pub mp4: bool,
    /// Write HLS per participant.
    pub hls: bool,
    /// Record only this participant (all publishers when `None`).
    pub only: Option<ParticipantId>,
    /// The pipeline's settings (segment length, jitter buffer).
    pub recording: RecordingSettings,
    /// Size of the MP4's upload parts.
    pub part_bytes: usize,
    /// Folder for what waits while the object store is unreachable.
    pub spool_dir: Option<std::path::PathBuf>,
    /// The bound on what the node's recordings hold for the store.
    pub spool_budget: Arc<SpoolBudget>,
    /// Longest recording of one participant.
    pub max_duration: Duration,
    /// How long after a participant's first track its recording starts (its other tracks
    /// arrive meanwhile).
    pub settle: Duration,
    /// How long a finished recording's last uploads are retried while the store is away.
    pub finish_retry: Duration,
}

/// One participant's recording, as reported.
#[derive(Debug, Clone)]
pub struct RecordingInfo {
    /// Unique id (`RC_…`), in the object keys.
    pub recording_id: String,
    /// The meeting.
    pub meeting_id: String,
    /// The recorded participant.
    pub participant: ParticipantId,
    /// The recorded tracks.
    pub tracks: Vec<TrackInfo>,
    /// MP4 written.
    pub mp4: bool,
    /// HLS written.
    pub hls: bool,
}

/// Told of each recording's start and end (database rows, events, notifications).
pub trait RecordingObserver: Send + Sync + 'static {
    /// A participant's recording started.
    fn started(&self, recording: &RecordingInfo);
    /// A recording's objects are complete in the store.
    fn finished(&self, recording: &RecordingInfo, summary: &UploadSummary);
    /// A recording failed; what was stored stays.
    fn failed(&self, recording: &RecordingInfo, error: &str);
}

/// Orders to a running room recorder.
enum Control {
    /// Finish every recording and end.
    Stop,
    /// Finish one recording; its participant is not recorded again.
    StopOne(String),
}

/// A running room recorder.
pub struct RoomRecorder {
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

impl RoomRecorder {
    /// Starts recording the room `tap` is attached to. Returns once the participants
    /// publishing now are being recorded, with their recordings; later publishers are
    /// recorded as they come.
    pub async fn start(
        tap: RoomTap,
        store: Arc<dyn ObjectStore>,
        settings: RoomRecorderSettings,
        observer: Arc<dyn RecordingObserver>,
    ) -> (Self, Vec<RecordingInfo>) {
        let (control, orders) = mpsc::unbounded_channel();
        let (initial, started) = oneshot::channel();
        let task = tokio::spawn(RoomTask::new(store, settings, observer, initial).run(tap, orders));
        let started = started.await.unwrap_or_default();
        (Self { control, task }, started)
    }

    /// Finishes every recording of the room; [`RoomRecorder::stopped`] tells when they are
    /// stored.
    pub fn stop(&self) {
        let _ = self.control.send(Control::Stop);
    }

    /// Finishes one participant's recording (that participant is not recorded again).
    pub fn stop_recording(&self, recording_id: &str) {
        let _ = self.control.send(Control::StopOne(recording_id.to_owned()));
    }

    /// Whether the recorder has ended (stopped, or its room's media is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until every recording is finished and stored (or failed).
    pub async fn stopped(self) {
        if let Err(err) = self.task.await {
            warn!(%err, "room recorder task ended abnormally");
        }
    }
}

/// What an upload task is given.
enum Upload {
    Output(Output),
    Note(String),
    /// The recording failed: what was stored is finished, and reported as failed.
    Failed(String),
}

/// A participant's recording in progress.
struct Active {
    info: RecordingInfo,
    recording: Recording,
    /// By track index: the track and the stream (SSRC) recorded of it.
    tracks: Vec<(TrackId, Option<u32>)>,
    uploads: mpsc::UnboundedSender<Upload>,
    started: Instant,
}

impl Active {
    fn index(&self, track: &TrackId) -> Option<usize> {
        self.tracks.iter().position(|(t, _)| t == track)
    }

    fn note(&self, line: String) {
        let _ = self.uploads.send(Upload::Note(line));
    }
}

struct RoomTask {
    store: Arc<dyn ObjectStore>,
    settings: RoomRecorderSettings,
    observer: Arc<dyn RecordingObserver>,
    /// Every published track of the room, by publisher.
    tracks: HashMap<ParticipantId, Vec<TrackInfo>>,
    /// Publishers whose recording starts at the instant given.
    settling: HashMap<ParticipantId, Instant>,
    active: HashMap<ParticipantId, Active>,
    /// The publisher of each track being recorded.
    routes: HashMap<TrackId, ParticipantId>,
    /// Publishers not to record (stopped one by one, or past the length limit).
    excluded: HashSet<ParticipantId>,
    uploads: Vec<JoinHandle<()>>,
    /// Told of the recordings of the tracks there when the tap attached.
    initial: Option<oneshot::Sender<Vec<RecordingInfo>>>,
}

/// How often jitter buffers are polled and pending starts are checked.
const TICK: Duration = Duration::from_millis(20);

impl RoomTask {
    fn new(
        store: Arc<dyn ObjectStore>,
        settings: RoomRecorderSettings,
        observer: Arc<dyn RecordingObserver>,
        initial: oneshot::Sender<Vec<RecordingInfo>>,
    ) -> Self {
        Self {
            store,
            settings,
            observer,
            tracks: HashMap::new(),
            settling: HashMap::new(),
            active: HashMap::new(),
            routes: HashMap::new(),
            excluded: HashSet::new(),
            uploads: Vec::new(),
            initial: Some(initial),
        }
    }

    async fn run(mut self, mut tap: RoomTap, mut orders: mpsc::UnboundedReceiver<Control>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                event = tap.recv() => match event {
                    Some(event) => self.on_event(&tap, event),
                    None => break,
                },
                order = orders.recv() => match order {
                    Some(Control::StopOne(id)) => {
                        if let Some(publisher) = self.active.iter().find(|(_, a)| a.info.recording_id == id).map(|(p, _)| p.clone()) {
                            self.excluded.insert(publisher.clone());
                            self.finish(&tap, &publisher, "stopped");
                        }
                    }
                    Some(Control::Stop) | None => break,
                },
                _ = tick.tick() => self.on_tick(&tap, Instant::now()),
            }
        }
        let publishers: Vec<ParticipantId> = self.active.keys().cloned().collect();
        for publisher in publishers {
            self.finish(&tap, &publisher, "recording stopped");
        }
        drop(tap);
        for upload in self.uploads.drain(..) {
            let _ = upload.await;
        }
    }

    fn wanted(&self, publisher: &ParticipantId) -> bool {
        !self.excluded.contains(publisher) && self.settings.only.as_ref().is_none_or(|only| only == publisher)
    }

    fn on_event(&mut self, tap: &RoomTap, event: TapEvent) {
        match event {
            TapEvent::Rtp { track, at, packet } => {
                let Some(active) = self.routes.get(&track).and_then(|publisher| self.active.get_mut(publisher)) else { return };
                let Some(index) = active.index(&track) else { return };
                // One stream per track: the first seen (a simulcast track sends several).
                let ssrc = active.tracks[index].1.get_or_insert(packet.ssrc);
                if *ssrc != packet.ssrc {
                    return;
                }
                let packet =
                    RtpPacket { sequence: packet.sequence, timestamp: packet.timestamp, marker: packet.marker, payload: packet.payload };
                let result = active.recording.on_rtp(at, index, packet);
                let publisher = active.info.participant.clone();
                self.after_input(tap, &publisher, result);
            }
            TapEvent::SenderReport { track, ssrc, ntp_time, rtp_time } => {
                if let Some(active) = self.routes.get(&track).and_then(|publisher| self.active.get_mut(publisher)) {
                    if let Some(index) = active.index(&track).filter(|&i| active.tracks[i].1.is_none_or(|s| s == ssrc)) {
                        active.recording.on_sender_report(index, ntp_time, rtp_time);
                    }
                }
            }
            TapEvent::TrackPublished(info) => {
                let publisher = info.publisher.clone();
                let known = self.tracks.entry(publisher.clone()).or_default();
                if known.iter().any(|t| t.id == info.id) {
                    return;
                }
                known.push(info);
                if !self.wanted(&publisher) {
                    return;
                }
                if self.active.contains_key(&publisher) {
                    self.finish(tap, &publisher, "a track was added; the recording goes on in a new file");
                }
                let settle = Instant::now() + self.settings.settle;
                self.settling.entry(publisher).or_insert(settle);
            }
            TapEvent::Attached => {
                // The tracks already there are complete: no need to wait for them to settle.
                let now = Instant::now();
                let publishers: Vec<ParticipantId> = self.settling.drain().map(|(p, _)| p).collect();
                for publisher in &publishers {
                    self.begin(tap, publisher, now);
                }
                let started = publishers.iter().filter_map(|p| self.active.get(p)).map(|a| a.info.clone()).collect();
                if let Some(initial) = self.initial.take() {
                    let _ = initial.send(started);
                }
            }
            TapEvent::TrackUnpublished(track) => {
                let Some(publisher) = self.tracks.iter().find(|(_, ts)| ts.iter().any(|t| t.id == track)).map(|(p, _)| p.clone()) else {
                    return;
                };
                let remaining = self.tracks.get_mut(&publisher).map(|ts| {
                    ts.retain(|t| t.id != track);
                    ts.len()
                });
                if self.active.get(&publisher).is_some_and(|a| a.index(&track).is_some()) {
                    self.finish(tap, &publisher, &format!("track {track} ended"));
                    if remaining.unwrap_or(0) > 0 && self.wanted(&publisher) {
                        self.settling.insert(publisher.clone(), Instant::now() + self.settings.settle);
                    }
                }
                if remaining == Some(0) {
                    self.tracks.remove(&publisher);
                    self.settling.remove(&publisher);
                }
            }
        }
    }

    fn on_tick(&mut self, tap: &RoomTap, now: Instant) {
        let due: Vec<ParticipantId> = self.settling.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
        for publisher in due {
            self.settling.remove(&publisher);
            self.begin(tap, &publisher, now);
        }
        let publishers: Vec<ParticipantId> = self.active.keys().cloned().collect();
        for publisher in publishers {
            let Some(active) = self.active.get_mut(&publisher) else { continue };
            if now.duration_since(active.started) >= self.settings.max_duration {
                self.excluded.insert(publisher.clone());
                let limit = self.settings.max_duration.as_secs();
                self.finish(tap, &publisher, &format!("length limit of {limit} s reached"));
                continue;
            }
            let result = active.recording.poll(now);
            self.after_input(tap, &publisher, result);
        }
    }

    /// Starts recording a publisher's current tracks (one audio, one video).
    fn begin(&mut self, tap: &RoomTap, publisher: &ParticipantId, now: Instant) {
        let Some(known) = self.tracks.get(publisher) else { return };
        let mut chosen: Vec<(TrackInfo, Codec)> = Vec::new();
        let mut skipped = Vec::new();
        for track in known {
            let codec = Codec::from_mime_type(&track.codec.mime_type);
            let kind_taken = chosen.iter().any(|(t, _)| t.kind == track.kind);
            match codec {
                Some(codec) if !kind_taken => chosen.push((track.clone(), codec)),
                _ => skipped.push(format!("{} ({})", track.id, track.codec.mime_type)),
            }
        }
        if chosen.is_empty() {
            return;
        }
        // Video first: its keyframe opens the file.
        chosen.sort_by_key(|(t, _)| t.kind == MediaKind::Audio);
        let info = RecordingInfo {
            recording_id: format!("RC_{}", Alphanumeric.sample_string(&mut rand::rng(), 16)),
            meeting_id: self.settings.meeting_id.clone(),
            participant: publisher.clone(),
            tracks: chosen.iter().map(|(t, _)| t.clone()).collect(),
            mp4: self.settings.mp4,
            hls: self.settings.hls,
        };
        let codecs: Vec<Codec> = chosen.iter().map(|(_, c)| *c).collect();
        let recording = match Recording::new(&codecs, self.settings.recording, now) {
            Ok(recording) => recording,
            Err(err) => {
                warn!(recording = %info.recording_id, %err, "recording cannot start");
                self.observer.failed(&info, &err.to_string());
                self.excluded.insert(publisher.clone());
                return;
            }
        };
        let target = UploadTarget {
            meeting_id: info.meeting_id.clone(),
            recording_id: info.recording_id.clone(),
            participant_id: info.participant.to_string(),
            mp4: info.mp4,
            hls: info.hls,
            part_bytes: self.settings.part_bytes,
            segment_secs: self.settings.recording.segment_target.as_secs().max(1),
            spool_dir: self.settings.spool_dir.clone(),
            budget: self.settings.spool_budget.clone(),
        };
        let (uploads, jobs) = mpsc::unbounded_channel();
        let active =
            Active { info: info.clone(), recording, tracks: info.tracks.iter().map(|t| (t.id, None)).collect(), uploads, started: now };
        for track in &info.tracks {
            active.note(format!("track {} {:?} {}", track.id, track.kind, track.codec.mime_type));
        }
        for track in skipped {
            active.note(format!("track {track} not recorded: one audio and one video track per file, codecs Opus, VP8, VP9, H.264, AV1"));
        }
        info!(recording = %info.recording_id, participant = %publisher, tracks = info.tracks.len(), "recording started");
        self.observer.started(&info);
        let task = upload(self.store.clone(), target, jobs, info.clone(), self.observer.clone(), self.settings.finish_retry);
        self.uploads.push(tokio::spawn(task));
        // The file opens on a keyframe: ask for one now rather than wait for the next.
        for track in info.tracks.iter().filter(|t| t.kind == MediaKind::Video) {
            tap.request_keyframe(&track.id);
        }
        for (track, _) in &active.tracks {
            self.routes.insert(*track, publisher.clone());
        }
        self.active.insert(publisher.clone(), active);
    }

    /// Takes a publisher's recording out of the running ones.
    fn take_active(&mut self, publisher: &ParticipantId) -> Option<Active> {
        let active = self.active.remove(publisher)?;
        for (track, _) in &active.tracks {
            self.routes.remove(track);
        }
        Some(active)
    }

    /// Passes the recording's outputs on, or fails it.
    fn after_input(&mut self, tap: &RoomTap, publisher: &ParticipantId, result: Result<(), crate::fmp4::Fmp4Error>) {
        let Some(active) = self.active.get_mut(publisher) else { return };
        if let Err(err) = result {
            warn!(recording = %active.info.recording_id, %err, "recording failed");
            let _ = active.uploads.send(Upload::Failed(err.to_string()));
            self.take_active(publisher);
            self.excluded.insert(publisher.clone());
            return;
        }
        drain(tap, active);
    }

    /// Ends a publisher's recording: the last segment is written and its uploads finish.
    fn finish(&mut self, tap: &RoomTap, publisher: &ParticipantId, why: &str) {
        let Some(mut active) = self.take_active(publisher) else { return };
        debug!(recording = %active.info.recording_id, why, "recording ends");
        active.note(format!("stop: {why}"));
        match active.recording.finish() {
            Ok(()) => drain(tap, &mut active),
            Err(err) => drop(active.uploads.send(Upload::Failed(err.to_string()))),
        }
    }
}

/// Passes what the recording produced to its upload task; keyframe requests go to the
/// publisher too.
fn drain(tap: &RoomTap, active: &mut Active) {
    while let Some(output) = active.recording.next_output() {
        if let Output::KeyframeRequest { track } = &output {
            if let Some((id, _)) = active.tracks.get(*track) {
                tap.request_keyframe(id);
            }
        }
        let _ = active.uploads.send(Upload::Output(output));
    }
}

/// One recording's uploads: objects as they come, then the finish once the recording's
/// queue closes. The store being away is waited out (what waits spools to disk), up to the
/// node's spool budget: past it the recording fails, and its queue is dropped.
async fn upload(
    store: Arc<dyn ObjectStore>,
    target: UploadTarget,
    mut jobs: mpsc::UnboundedReceiver<Upload>,
    info: RecordingInfo,
    observer: Arc<dyn RecordingObserver>,
    finish_retry: Duration,
) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut uploader = Uploader::start(store, target).await;
    let mut failure = None;
    while let Some(job) = jobs.recv().await {
        match job {
            Upload::Note(line) => uploader.note(&line),
            Upload::Failed(error) => {
                uploader.note(&format!("error: {error}"));
                failure = Some(error);
            }
            Upload::Output(output) => match uploader.handle(&output).await {
                Ok(()) => {}
                Err(err @ UploadError::SpoolFull(_)) => return give_up(uploader, &info, observer.as_ref(), &err).await,
                Err(err) => debug!(recording = %info.recording_id, %err, backlog = uploader.backlog(), "upload waits for the store"),
            },
        }
    }
    let deadline = Instant::now() + finish_retry;
    loop {
        match uploader.finish().await {
            Ok(summary) => {
                info!(recording = %info.recording_id, bytes = summary.mp4_bytes, segments = summary.segments, "recording stored");
                return match failure {
                    Some(error) => observer.failed(&info, &error),
                    None => observer.finished(&info, &summary),
                };
            }
            Err(err @ UploadError::SpoolFull(_)) => return give_up(uploader, &info, observer.as_ref(), &err).await,
            Err(err) if Instant::now() < deadline => {
                debug!(recording = %info.recording_id, %err, "finishing waits for the store");
                tokio::time::sleep(RETRY).await;
            }
            Err(err) => {
                warn!(recording = %info.recording_id, %err, "recording could not be finished");
                return observer.failed(&info, &err.to_string());
            }
        }
    }
}

/// Fails a recording whose uploads cannot go on: what waits for the store is dropped.
async fn give_up(uploader: Uploader, info: &RecordingInfo, observer: &dyn RecordingObserver, err: &UploadError) {
    warn!(recording = %info.recording_id, %err, "recording failed");
    uploader.abandon().await;
    observer.failed(info, &err.to_string());
}
