//! What the rest of the system learns from a session: the shared state store, the database
//! journal and the event sink are told here, in one place, when a session joins,
//! negotiates, chats, publishes, mutes and leaves. Nothing here waits for a backend.

use std::sync::Arc;

use serde_json::Value;

use crate::events::{Event, EventKind, EventSink, EVENT_SCHEMA_VERSION};
use crate::journal::{
    bounded_payload, DeliveryStatus, Journal, MessageType, ParticipantStatus, Record, RoomStatus, SessionStatus, StreamStatus, StreamType,
};
use crate::stamps::{new_id, unix_ms};
use crate::state::{SessionState, StateKeeper};

/// A joined participant, as bookkeeping names it.
#[derive(Debug, Clone)]
pub struct Seat {
    /// The meeting (room the token names).
    pub meeting_id: String,
    /// The room instance.
    pub room_id: String,
    /// The user's identity.
    pub identity: String,
    /// Display name.
    pub name: Option<String>,
    /// The participant id.
    pub participant_id: String,
    /// The signaling session id.
    pub session_id: String,
}

/// A published track, as bookkeeping names it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Track id.
    pub track_id: String,
    /// Audio or video.
    pub stream_type: StreamType,
    /// MIME type of the codec.
    pub codec: String,
}

/// The backends sessions report to.
pub struct Bookkeeping {
    /// Shared room and session state.
    pub state: Arc<StateKeeper>,
    /// The database journal.
    pub journal: Journal,
    /// Domain events.
    pub events: Arc<dyn EventSink>,
}

impl Bookkeeping {
    /// Publishes an event of this node about a meeting.
    pub fn event(&self, meeting_id: &str, at_ms: u64, kind: EventKind) {
        self.events.publish(Event {
            schema: EVENT_SCHEMA_VERSION,
            event_id: new_id("EV_"),
            meeting_id: meeting_id.to_owned(),
            node: self.state.node().id.clone(),
            at_ms,
            kind,
        });
    }

    fn room_record(&self, seat: &Seat, status: RoomStatus, participant_count: usize, at_ms: u64) -> Record {
        Record::Room {
            room_id: seat.room_id.clone(),
            meeting_id: seat.meeting_id.clone(),
            sfu_node: self.state.node().id.clone(),
            status,
            participant_count: i32::try_from(participant_count).unwrap_or(i32::MAX),
            at_ms,
        }
    }

    /// A participant joined; `opened` when the room opened with it.
    pub fn joined(&self, seat: &Seat, opened: bool, participant_count: usize, join_payload: Value) {
        let at_ms = unix_ms();
        self.state.participant_joined(SessionState {
            session_id: seat.session_id.clone(),
            identity: seat.identity.clone(),
            participant_id: seat.participant_id.clone(),
            room: seat.meeting_id.clone(),
            node: self.state.node().id.clone(),
            joined_at_ms: at_ms,
            last_ping_ms: at_ms,
        });
        let j = &self.journal;
        j.record(Record::ParticipantJoined {
            meeting_id: seat.meeting_id.clone(),
            identity: seat.identity.clone(),
            name: seat.name.clone(),
            at_ms,
        });
        j.record(self.room_record(seat, RoomStatus::Active, participant_count, at_ms));
        self.status(seat, SessionStatus::Connected);
        self.message(seat, MessageType::Join, Some(&seat.identity), None, join_payload, DeliveryStatus::Delivered);
        if opened {
            self.event(&seat.meeting_id, at_ms, EventKind::RoomCreated { room_id: seat.room_id.clone() });
        }
        let kind = EventKind::ParticipantJoined { participant_id: seat.participant_id.clone(), identity: seat.identity.clone() };
        self.event(&seat.meeting_id, at_ms, kind);
    }

    /// The session's status changed.
    pub fn status(&self, seat: &Seat, status: SessionStatus) {
        self.journal.record(Record::Session {
            session_id: seat.session_id.clone(),
            identity: seat.identity.clone(),
            meeting_id: seat.meeting_id.clone(),
            peer_id: seat.participant_id.clone(),
            status,
            at_ms: unix_ms(),
        });
    }

    /// The client answered a heartbeat.
    pub fn alive(&self, seat: &Seat) {
        self.state.session_alive(&seat.session_id);
        self.journal.record(Record::SessionPing { session_id: seat.session_id.clone(), at_ms: unix_ms() });
    }

    /// Persists a signaling message; returns its id.
    pub fn message(
        &self,
        seat: &Seat,
        message_type: MessageType,
        from: Option<&str>,
        to: Option<&str>,
        payload: Value,
        status: DeliveryStatus,
    ) -> String {
        let message_id = new_id("MS_");
        self.message_with_id(seat, message_id.clone(), message_type, from, to, payload, status);
        message_id
    }

    /// Persists a signaling message under an id chosen by the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn message_with_id(
        &self,
        seat: &Seat,
        message_id: String,
        message_type: MessageType,
        from: Option<&str>,
        to: Option<&str>,
        payload: Value,
        status: DeliveryStatus,
    ) {
        self.journal.record(Record::Message {
            message_id,
            session_id: seat.session_id.clone(),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            meeting_id: seat.meeting_id.clone(),
            message_type,
            payload: bounded_payload(payload),
            status,
            at_ms: unix_ms(),
        });
    }

    /// One of the participant's tracks changed state in the database (mute: paused, unmute:
    /// active).
    pub fn stream(&self, seat: &Seat, stream: &StreamInfo, status: StreamStatus) {
        self.journal.record(Record::Stream {
            room_id: seat.room_id.clone(),
            identity: seat.identity.clone(),
            stream_id: stream.track_id.clone(),
            stream_type: stream.stream_type,
            codec: stream.codec.clone(),
            status,
            at_ms: unix_ms(),
        });
    }

    /// The participant published a track.
    pub fn published(&self, seat: &Seat, stream: &StreamInfo) {
        self.stream(seat, stream, StreamStatus::Active);
        let kind = if stream.stream_type == StreamType::Audio { "audio" } else { "video" };
        let event = EventKind::TrackPublished {
            track_id: stream.track_id.clone(),
            participant_id: seat.participant_id.clone(),
            kind: kind.into(),
            codec: stream.codec.clone(),
        };
        self.event(&seat.meeting_id, unix_ms(), event);
    }

    /// One of the participant's tracks is gone.
    pub fn unpublished(&self, seat: &Seat, stream: &StreamInfo) {
        self.stream(seat, stream, StreamStatus::Stopped);
        let event = EventKind::TrackUnpublished { track_id: stream.track_id.clone(), participant_id: seat.participant_id.clone() };
        self.event(&seat.meeting_id, unix_ms(), event);
    }

    /// The participant left (`status` says how); `remaining` are still in the room.
    pub fn left(&self, seat: &Seat, status: ParticipantStatus, remaining: usize, leave_payload: Value) {
        let at_ms = unix_ms();
        self.state.participant_left(&seat.session_id);
        self.message(seat, MessageType::Leave, Some(&seat.identity), None, leave_payload, DeliveryStatus::Delivered);
        self.status(seat, SessionStatus::Disconnected);
        let j = &self.journal;
        j.record(Record::ParticipantLeft { meeting_id: seat.meeting_id.clone(), identity: seat.identity.clone(), status, at_ms });
        let room_status = if remaining == 0 { RoomStatus::Closed } else { RoomStatus::Active };
        j.record(self.room_record(seat, room_status, remaining, at_ms));
        let kind = EventKind::ParticipantLeft { participant_id: seat.participant_id.clone(), identity: seat.identity.clone() };
        self.event(&seat.meeting_id, at_ms, kind);
        if remaining == 0 {
            self.event(&seat.meeting_id, at_ms, EventKind::RoomClosed { room_id: seat.room_id.clone() });
        }
    }
}
