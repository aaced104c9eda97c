//! What signaling persists (the seed schema's sessions, messages, participants, rooms and
//! streams) and the [`Journal`] that writes it off the hot path.
//!
//! Sessions hand records to the journal without waiting: a bounded queue feeds one writer
//! task that writes batches, one transaction each, through a [`SignalingLog`]. A batch
//! gathers what arrives within [`GROUP_COMMIT_WINDOW`] of its first record (group commit):
//! a burst of joins costs the database a few commits instead of one per record. While the
//! database is unreachable the writer keeps its batch and retries, the queue fills, and past
//! its bounds (in records and in bytes) new records are shed and counted; nothing on the
//! signaling or media path ever waits for the database. A record the database rejects is
//! logged and skipped, not retried forever. A message's payload is kept to
//! [`MAX_RECORDED_PAYLOAD_BYTES`] ([`bounded_payload`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// `signaling_sessions.status`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum SessionStatus {
    /// The connection is open; the join is being processed.
    Connecting = 1,
    /// Joined; no negotiation in progress.
    Connected = 2,
    /// The client offered; the server answers.
    Offering = 3,
    /// The server offered; waiting for the client's answer.
    Answering = 4,
    /// Negotiation complete.
    Stable = 5,
    /// The connection is gone (left, or waiting for `resume`).
    Disconnected = 6,
    /// A media connection failed.
    Failed = 7,
}

/// `signaling_messages.message_type`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum MessageType {
    /// An SDP offer (the client's on its publisher connection, the server's on the
    /// subscriber connection).
    Offer = 1,
    /// An SDP answer.
    Answer = 2,
    /// An ICE candidate.
    IceCandidate = 3,
    /// A join.
    Join = 4,
    /// A leave.
    Leave = 5,
    /// Someone joined (to the others).
    UserJoined = 6,
    /// Someone left (to the others).
    UserLeft = 7,
    /// A chat message.
    Chat = 8,
    /// Mute or unmute of a track.
    MediaControl = 10,
    /// An error sent to the client.
    Error = 13,
}

/// `signaling_messages.status`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum DeliveryStatus {
    /// Accepted, not yet passed on.
    Pending = 1,
    /// Passed on to its recipients.
    Sent = 2,
    /// Acknowledged by its recipient.
    Delivered = 3,
    /// Could not be passed on.
    Failed = 4,
}

/// `meeting_recordings.status`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum RecordingStatus {
    /// Being recorded.
    Recording = 1,
    /// Complete in the object store.
    Done = 2,
    /// Failed; what was stored stays.
    Failed = 3,
}

/// `media_streams.stream_type`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum StreamType {
    /// A microphone.
    Audio = 1,
    /// A camera.
    Video = 2,
    /// A screen share.
    Screen = 3,
}

/// `media_streams.status`, the seed's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum StreamStatus {
    /// Forwarded.
    Active = 1,
    /// Muted by its publisher.
    Paused = 2,
    /// Unpublished.
    Stopped = 3,
}

/// `meeting_rooms.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum RoomStatus {
    /// Hosted, with participants.
    Active = 1,
    /// Hosted, empty.
    Inactive = 2,
    /// Closed.
    Closed = 3,
}

/// `meeting_participants.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum ParticipantStatus {
    /// In the meeting.
    Joined = 1,
    /// Left it.
    Left = 2,
    /// Removed by the server or an operator.
    Removed = 3,
}

/// One write to the database. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A user entered a meeting: creates the user and the meeting if they do not exist,
    /// and upserts the `meeting_participants` row as joined.
    ParticipantJoined {
        /// Meeting id (the room the token names).
        meeting_id: String,
        /// The user's identity (`users.username`).
        identity: String,
        /// Display name.
        name: Option<String>,
        /// When.
        at_ms: u64,
    },
    /// A user left a meeting.
    ParticipantLeft {
        /// Meeting id.
        meeting_id: String,
        /// The user.
        identity: String,
        /// Left or removed.
        status: ParticipantStatus,
        /// When.
        at_ms: u64,
    },
    /// A room instance was opened, changed its participant count, or closed
    /// (`meeting_rooms`); opening also marks the meeting ongoing, closing ends it.
    Room {
        /// Room instance id.
        room_id: String,
        /// Meeting id.
        meeting_id: String,
        /// Node hosting it.
        sfu_node: String,
        /// Its state.
        status: RoomStatus,
        /// Participants now.
        participant_count: i32,
        /// When.
        at_ms: u64,
    },
    /// A signaling session's status (`signaling_sessions`), created by its first record.
    Session {
        /// Session id.
        session_id: String,
        /// The user.
        identity: String,
        /// Meeting id.
        meeting_id: String,
        /// The participant id.
        peer_id: String,
        /// New status.
        status: SessionStatus,
        /// When.
        at_ms: u64,
    },
    /// The session's last sign of life.
    SessionPing {
        /// Session id.
        session_id: String,
        /// When.
        at_ms: u64,
    },
    /// A signaling message (`signaling_messages`).
    Message {
        /// Message id.
        message_id: String,
        /// Session that sent or received it.
        session_id: String,
        /// Sender's identity; `None` for the server.
        from: Option<String>,
        /// Recipient's identity; `None` for the whole room or the server.
        to: Option<String>,
        /// Meeting id.
        meeting_id: String,
        /// Seed message type.
        message_type: MessageType,
        /// The message as JSON.
        payload: Value,
        /// Delivery status.
        status: DeliveryStatus,
        /// When.
        at_ms: u64,
    },
    /// A published track's state (`media_streams`), created by its first record.
    Stream {
        /// Room instance id.
        room_id: String,
        /// Publisher's identity.
        identity: String,
        /// Track id.
        stream_id: String,
        /// Audio, video or screen.
        stream_type: StreamType,
        /// MIME type of the codec.
        codec: String,
        /// New status.
        status: StreamStatus,
        /// When.
        at_ms: u64,
    },
    /// A recording started (`meeting_recordings`, status 1).
    RecordingStarted {
        /// Recording id.
        recording_id: String,
        /// Meeting id.
        meeting_id: String,
        /// Room instance id.
        room_id: Option<String>,
        /// File name of the main object (`<recording_id>.mp4`, or `index.m3u8`).
        filename: String,
        /// Its object key.
        file_path: String,
        /// `mp4`, `hls` or `mp4+hls`.
        format: String,
        /// When.
        at_ms: u64,
    },
    /// A recording ended: done (2) with its size and length, or failed (3).
    RecordingEnded {
        /// Recording id.
        recording_id: String,
        /// Done or failed.
        status: RecordingStatus,
        /// Bytes stored (the MP4's size, or the HLS segments').
        file_size: i64,
        /// Length, seconds.
        duration_secs: i32,
        /// When.
        at_ms: u64,
    },
    /// Work for another service (`ai_tasks`, status 1 pending).
    AiTask {
        /// Task id (the one sent on the tasks topic).
        task_id: String,
        /// `transcription`, ...
        task_type: String,
        /// Meeting id.
        meeting_id: String,
        /// The recording it is about.
        recording_id: Option<String>,
        /// Its input as JSON.
        input: Value,
    },
    /// An administrative action (`operation_logs`).
    Operation {
        /// Who did it (identity), if a user.
        identity: Option<String>,
        /// What (`close_room`, `mute_participant`, ...).
        operation: String,
        /// Kind of resource acted on.
        resource_type: String,
        /// Its id.
        resource_id: String,
        /// Details as JSON.
        details: Value,
        /// When.
        at_ms: u64,
    },
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database cannot be reached; the batch is retried as is.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused a record; retrying it would fail again.
    #[error("database rejected a record: {0}")]
    Rejected(String),
}

/// The database side of the journal (SQLite or PostgreSQL).
#[async_trait]
pub trait SignalingLog: Send + Sync {
    /// Writes `batch` in order, in one transaction: all of it or nothing.
    async fn write(&self, batch: &[Record]) -> Result<(), LogError>;
}

/// Counters of the journal, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct JournalMetrics {
    /// Records written.
    pub written: AtomicU64,
    /// Records shed because the queue was full.
    pub shed: AtomicU64,
    /// Records the database rejected.
    pub rejected: AtomicU64,
    /// Failed write attempts (the database was unreachable).
    pub failed_writes: AtomicU64,
    /// Records queued, not yet written.
    pub queued: AtomicU64,
    /// Their weight ([`Record::weight`]), bytes.
    pub queued_bytes: AtomicU64,
}

impl JournalMetrics {
    /// Renders the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counters = [
            ("switchboard_db_records_written_total", "counter", "Records written to the database.", &self.written),
            ("switchboard_db_records_shed_total", "counter", "Records shed because the persistence queue was full.", &self.shed),
            ("switchboard_db_records_rejected_total", "counter", "Records the database rejected.", &self.rejected),
            ("switchboard_db_failed_writes_total", "counter", "Write attempts that found the database unreachable.", &self.failed_writes),
            ("switchboard_db_records_queued", "gauge", "Records waiting to be written.", &self.queued),
            ("switchboard_db_records_queued_bytes", "gauge", "Bytes of the records waiting to be written.", &self.queued_bytes),
        ];
        for (name, kind, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

/// The largest message payload recorded as is, as JSON text. A longer one (a large SDP) is
/// recorded as its beginning and its length ([`bounded_payload`]).
pub const MAX_RECORDED_PAYLOAD_BYTES: usize = 16 * 1024;

/// What a record weighs in the queue besides its JSON: its ids, names and bookkeeping.
const RECORD_BASE_BYTES: usize = 256;

/// `payload` if its JSON text is at most [`MAX_RECORDED_PAYLOAD_BYTES`]; otherwise
/// `{"truncated": true, "bytes": <its length>, "head": "<the start of its text>"}`, which
/// fits the limit.
pub fn bounded_payload(payload: Value) -> Value {
    let bytes = json_len(&payload);
    if bytes <= MAX_RECORDED_PAYLOAD_BYTES {
        return payload;
    }
    let text = payload.to_string();
    // Quoting the head can double it (every quote and backslash gains a backslash).
    let mut end = MAX_RECORDED_PAYLOAD_BYTES / 2 - 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    serde_json::json!({ "truncated": true, "bytes": bytes, "head": &text[..end] })
}

/// The length of `value`'s JSON text, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Record {
    /// What the record weighs in the queue, bytes: a fixed part plus its JSON.
    pub fn weight(&self) -> usize {
        RECORD_BASE_BYTES
            + match self {
                Self::Message { payload, .. } => json_len(payload),
                Self::AiTask { input, .. } => json_len(input),
                Self::Operation { details, .. } => json_len(details),
                _ => 0,
            }
    }
}

/// The bounds of the journal's queue.
#[derive(Debug, Clone, Copy)]
pub struct JournalLimits {
    /// Records waiting to be written, at most.
    pub queue_capacity: usize,
    /// Their weight ([`Record::weight`]), at most, bytes.
    pub queue_max_bytes: u64,
    /// Records written per transaction, at most.
    pub batch_size: usize,
}

/// The queue in front of the database writer; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    queue: mpsc::Sender<Record>,
    max_bytes: u64,
    metrics: Arc<JournalMetrics>,
    shedding: Arc<AtomicBool>,
}

/// How long a batch waits for more records after its first one, unless it fills first.
/// Each commit costs SQLite a write of every page it touched to its log, whatever the
/// number of rows: while 96 clients joined in 2 s, one commit per record took 17 % of the
/// server's CPU. Queued records are lost by a crash either way; this adds at most this
/// long to that.
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(50);

/// Delay before retrying a batch after the database failed; doubles up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Journal {
    /// Starts the writer task over `log`; needs a Tokio runtime.
    pub fn start(log: Arc<dyn SignalingLog>, limits: JournalLimits) -> Self {
        let (queue, receiver) = mpsc::channel(limits.queue_capacity.max(1));
        let metrics = Arc::new(JournalMetrics::default());
        tokio::spawn(write_loop(log, receiver, limits.batch_size.max(1), metrics.clone()));
        Self { queue, max_bytes: limits.queue_max_bytes, metrics, shedding: Arc::new(AtomicBool::new(false)) }
    }

    /// Queues a record; never waits. A queue full in records or in bytes sheds the record and
    /// counts it.
    pub fn record(&self, record: Record) {
        let weight = record.weight() as u64;
        let bytes = &self.metrics.queued_bytes;
        let fits = bytes.fetch_add(weight, Ordering::Relaxed) + weight <= self.max_bytes;
        match fits.then(|| self.queue.try_send(record)) {
            Some(Ok(())) => {
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
                self.shedding.store(false, Ordering::Relaxed);
            }
            Some(Err(_)) | None => {
                bytes.fetch_sub(weight, Ordering::Relaxed);
                self.metrics.shed.fetch_add(1, Ordering::Relaxed);
                if !self.shedding.swap(true, Ordering::Relaxed) {
                    error!("persistence queue full: shedding records until the database catches up");
                }
            }
        }
    }

    /// The journal's counters.
    pub fn metrics(&self) -> &Arc<JournalMetrics> {
        &self.metrics
    }

    /// Waits until every queued record is written, at most `timeout` (graceful shutdown);
    /// returns whether it was.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.metrics.queued.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

async fn write_loop(log: Arc<dyn SignalingLog>, mut receiver: mpsc::Receiver<Record>, batch_size: usize, metrics: Arc<JournalMetrics>) {
    let mut batch = Vec::with_capacity(batch_size);
    while receiver.recv_many(&mut batch, batch_size).await > 0 {
        let until = tokio::time::Instant::now() + GROUP_COMMIT_WINDOW;
        while batch.len() < batch_size {
            let room = batch_size - batch.len();
            match tokio::time::timeout_at(until, receiver.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        write_batch(log.as_ref(), &batch, &metrics).await;
        metrics.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        let weight: usize = batch.iter().map(Record::weight).sum();
        metrics.queued_bytes.fetch_sub(weight as u64, Ordering::Relaxed);
        batch.clear();
    }
}

/// Writes one batch, waiting out outages; falls back to one record at a time to skip the
/// records the database rejects.
async fn write_batch(log: &dyn SignalingLog, batch: &[Record], metrics: &JournalMetrics) {
    match write_until_reachable(log, batch, metrics).await {
        Ok(()) => {
            metrics.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(_) => {
            for record in batch {
                match write_until_reachable(log, std::slice::from_ref(record), metrics).await {
                    Ok(()) => metrics.written.fetch_add(1, Ordering::Relaxed),
                    Err(reason) => {
                        error!(%reason, ?record, "database rejected a record; it is skipped");
                        metrics.rejected.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    }
}

/// Retries `batch` while the database is unreachable; returns its rejection, if any.
async fn write_until_reachable(log: &dyn SignalingLog, batch: &[Record], metrics: &JournalMetrics) -> Result<(), String> {
    let mut delay = RETRY_FIRST;
    let mut outage = false;
    loop {
        match log.write(batch).await {
            Ok(()) => {
                if outage {
                    info!("database reachable again; queued records are being written");
                }
                return Ok(());
            }
            Err(LogError::Rejected(reason)) => return Err(reason),
            Err(LogError::Unavailable(reason)) => {
                metrics.failed_writes.fetch_add(1, Ordering::Relaxed);
                if !outage {
                    warn!(%reason, "database unreachable; holding records and retrying");
                    outage = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A log that is down for its first `outage` writes and rejects pings to session "bad".
    struct FlakyLog {
        outage: Mutex<u32>,
        written: Mutex<Vec<Record>>,
    }

    #[async_trait]
    impl SignalingLog for FlakyLog {
        async fn write(&self, batch: &[Record]) -> Result<(), LogError> {
            {
                let mut outage = self.outage.lock().unwrap();
                if *outage > 0 {
                    *outage -= 1;
                    return Err(LogError::Unavailable("down".into()));
                }
            }
            if batch.iter().any(|r| matches!(r, Record::SessionPing { session_id, .. } if session_id == "bad")) {
                return Err(LogError::Rejected("constraint".into()));
            }
            self.written.lock().unwrap().extend_from_slice(batch);
            Ok(())
        }
    }

    /// A log that notes the size of every batch it is given.
    #[derive(Default)]
    struct BatchSizes(Mutex<Vec<usize>>);

    #[async_trait]
    impl SignalingLog for BatchSizes {
        async fn write(&self, batch: &[Record]) -> Result<(), LogError> {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn limits(queue_capacity: usize, queue_max_bytes: u64, batch_size: usize) -> JournalLimits {
        JournalLimits { queue_capacity, queue_max_bytes, batch_size }
    }

    fn ping(id: &str, at_ms: u64) -> Record {
        Record::SessionPing { session_id: id.into(), at_ms }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_records_through_an_outage_skips_rejected_ones_and_sheds_past_capacity() {
        let log = Arc::new(FlakyLog { outage: Mutex::new(3), written: Mutex::new(Vec::new()) });
        let journal = Journal::start(log.clone(), limits(4, u64::MAX, 2));
        for at in 0..4 {
            journal.record(ping("ok", at));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The writer holds a batch of 2; the queue has room for 2 more, then sheds.
        for at in 4..10 {
            journal.record(ping("ok", at));
        }
        journal.record(ping("bad", 99));
        tokio::time::sleep(Duration::from_secs(10)).await;
        journal.record(ping("bad", 100));
        journal.record(ping("ok", 10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let written: Vec<u64> = log
            .written
            .lock()
            .unwrap()
            .iter()
            .map(|r| match r {
                Record::SessionPing { at_ms, .. } => *at_ms,
                _ => unreachable!(),
            })
            .collect();
        let m = journal.metrics();
        assert_eq!(written, vec![0, 1, 2, 3, 4, 5, 10], "in order, nothing lost that was queued");
        assert_eq!(m.shed.load(Ordering::Relaxed), 5);
        assert_eq!(m.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(m.failed_writes.load(Ordering::Relaxed), 3);
        assert_eq!(m.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn records_arriving_within_the_window_share_one_commit() {
        let log = Arc::new(BatchSizes::default());
        let journal = Journal::start(log.clone(), limits(100, u64::MAX, 4));
        // Six records 5 ms apart, then one after a pause: the first four fill a batch, the
        // next two wait for the window to close, the last comes too late for them.
        for at in 0..6 {
            journal.record(ping("ok", at));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(GROUP_COMMIT_WINDOW * 2).await;
        journal.record(ping("ok", 6));
        assert!(journal.drained(Duration::from_secs(1)).await);
        assert_eq!(*log.0.lock().unwrap(), vec![4, 2, 1]);
    }
    fn message(payload: Value) -> Record {
        Record::Message {
            message_id: "m".into(),
            session_id: "s".into(),
            from: None,
            to: None,
            meeting_id: "r".into(),
            message_type: MessageType::Offer,
            payload,
            status: DeliveryStatus::Delivered,
            at_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_in_bytes_as_well_as_in_records() {
        // Down for ever: nothing leaves the queue.
        let log = Arc::new(FlakyLog { outage: Mutex::new(u32::MAX), written: Mutex::new(Vec::new()) });
        let big = serde_json::json!({ "sdp": "v".repeat(MAX_RECORDED_PAYLOAD_BYTES - 100) });
        let weight = message(big.clone()).weight() as u64;
        let journal = Journal::start(log, limits(1000, 3 * weight, 1));
        for _ in 0..5 {
            journal.record(message(big.clone()));
        }
        let m = journal.metrics();
        assert_eq!((m.queued.load(Ordering::Relaxed), m.shed.load(Ordering::Relaxed)), (3, 2), "three fit in the bytes");
        assert_eq!(m.queued_bytes.load(Ordering::Relaxed), 3 * weight);
        // Far from the bound in records, but not a byte left for even the smallest.
        journal.record(ping("ok", 1));
        assert_eq!(m.shed.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn written_records_give_their_bytes_back() {
        let log = Arc::new(BatchSizes::default());
        let journal = Journal::start(log, limits(100, 1 << 20, 10));
        journal.record(message(serde_json::json!({ "text": "hello" })));
        journal.record(ping("ok", 1));
        assert!(journal.metrics().queued_bytes.load(Ordering::Relaxed) > 2 * RECORD_BASE_BYTES as u64);
        assert!(journal.drained(Duration::from_secs(1)).await);
        assert_eq!(journal.metrics().queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn payloads_past_the_limit_are_kept_as_their_head_and_length() {
        let small = serde_json::json!({ "target": "publisher", "sdp": "v=0" });
        assert_eq!(bounded_payload(small.clone()), small);
        // Multi-byte characters across the cut.
        let large = serde_json::json!({ "sdp": "é".repeat(MAX_RECORDED_PAYLOAD_BYTES) });
        let bytes = large.to_string().len();
        let kept = bounded_payload(large);
        assert_eq!((kept["truncated"].clone(), kept["bytes"].clone()), (Value::from(true), Value::from(bytes)));
        let head = kept["head"].as_str().expect("head");
        assert!(head.starts_with(r#"{"sdp":"ééé"#), "{}", &head[..20]);
        assert!(kept.to_string().len() <= MAX_RECORDED_PAYLOAD_BYTES, "the record fits the limit");
    }
}
