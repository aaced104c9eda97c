//! Domain events (`<prefix>.system_events`): what happened in which meeting, for other
//! services. An [`EventSink`] takes them without waiting; the Kafka sink buffers through
//! broker outages up to a bound, the embedded one writes them to the log.

use serde::Serialize;

/// Version of the events' JSON schema, carried in every event as `schema`.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// One event, serialized as JSON and keyed by `meeting_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Schema version ([`EVENT_SCHEMA_VERSION`]).
    pub schema: u32,
    /// Unique id, for consumers that deduplicate.
    pub event_id: String,
    /// The meeting (room) it happened in; the Kafka key.
    pub meeting_id: String,
    /// The node that saw it.
    pub node: String,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A room instance opened for the meeting.
    RoomCreated {
        /// Room instance id.
        room_id: String,
    },
    /// The room's last participant left, or it was closed.
    RoomClosed {
        /// Room instance id.
        room_id: String,
    },
    /// A participant joined.
    ParticipantJoined {
        /// Participant id.
        participant_id: String,
        /// The user's identity.
        identity: String,
    },
    /// A participant left.
    ParticipantLeft {
        /// Participant id.
        participant_id: String,
        /// The user's identity.
        identity: String,
    },
    /// A track was published.
    TrackPublished {
        /// Track id.
        track_id: String,
        /// Its publisher.
        participant_id: String,
        /// `audio` or `video`.
        kind: String,
        /// MIME type of its codec.
        codec: String,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// Track id.
        track_id: String,
        /// Its publisher.
        participant_id: String,
    },
    /// A participant's recording started.
    #[serde(rename = "recording.started")]
    RecordingStarted {
        /// Recording id.
        recording_id: String,
        /// The recorded participant.
        participant_id: String,
        /// `mp4`, `hls` or `mp4+hls`.
        format: String,
    },
    /// A recording is complete in the object store.
    #[serde(rename = "recording.finished")]
    RecordingFinished {
        /// Recording id.
        recording_id: String,
        /// The recorded participant.
        participant_id: String,
        /// Object key of the MP4 file, when written.
        mp4_key: Option<String>,
        /// Object key of the HLS playlist, when written.
        playlist_key: Option<String>,
        /// Bytes of the MP4 file.
        size: u64,
        /// Length, milliseconds.
        duration_ms: u64,
    },
    /// A recording failed; what was stored stays.
    #[serde(rename = "recording.failed")]
    RecordingFailed {
        /// Recording id.
        recording_id: String,
        /// The recorded participant.
        participant_id: String,
        /// Why.
        error: String,
    },
}

impl EventKind {
    /// The event's `type`, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoomCreated { .. } => "room_created",
            Self::RoomClosed { .. } => "room_closed",
            Self::ParticipantJoined { .. } => "participant_joined",
            Self::ParticipantLeft { .. } => "participant_left",
            Self::TrackPublished { .. } => "track_published",
            Self::TrackUnpublished { .. } => "track_unpublished",
            Self::RecordingStarted { .. } => "recording.started",
            Self::RecordingFinished { .. } => "recording.finished",
            Self::RecordingFailed { .. } => "recording.failed",
        }
    }
}

/// Where events go (Kafka, or the log). Must not block: it buffers or drops and counts.
pub trait EventSink: Send + Sync {
    /// Hands over one event.
    fn publish(&self, event: Event);
    /// Hands over a task for another service (`<prefix>.tasks`, keyed by meeting id); the
    /// task is a JSON object with `task_id` and `type`.
    fn submit_task(&self, meeting_id: &str, task: &serde_json::Value);
    /// Sends what is buffered, waiting at most `timeout` (graceful shutdown; blocks).
    fn flush(&self, timeout: std::time::Duration);
}
