//! Signaling protocol v1: the JSON messages exchanged over `/ws` (see docs/protocol.md).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version announced in `joined`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Stable error codes sent in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON (or not a JSON object).
    BadJson,
    /// `type` names no message of the protocol.
    UnknownType,
    /// A field is missing or has the wrong type.
    InvalidMessage,
    /// The frame exceeds `limits.max_message_bytes`.
    MessageTooLarge,
    /// Too many messages per second.
    RateLimited,
    /// Binary frames are not part of the protocol.
    UnsupportedFrame,
    /// No or an invalid access token.
    Unauthorized,
    /// The access token expired.
    TokenExpired,
    /// The token's grants do not allow this.
    Forbidden,
    /// The message needs a joined session.
    NotJoined,
    /// `resume` named no session that can be resumed (never existed, or its grace ran out).
    UnknownSession,
    /// `join` was already accepted on this connection.
    AlreadyJoined,
    /// The room has `limits.max_participants_per_room` participants.
    RoomFull,
    /// The node hosts `limits.max_rooms` rooms.
    TooManyRooms,
    /// The SDP could not be parsed or applied.
    InvalidSdp,
    /// The ICE candidate could not be parsed or applied.
    InvalidCandidate,
    /// The message does not fit the negotiation state.
    NegotiationState,
    /// The track is not one of this participant's (or, for `update_subscription`, not one
    /// it receives).
    UnknownTrack,
    /// A `publish_offer` sends more tracks than `media.max_tracks_per_participant`.
    TooManyTracks,
    /// A publisher or subscriber connection failed.
    MediaConnectionFailed,
    /// The room is already being recorded.
    AlreadyRecording,
    /// No such recording runs in the room.
    NotRecording,
    /// Something failed on the server.
    Internal,
}

/// A participant's recording, as requests and the room are told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingSummary {
    /// Recording id.
    pub recording_id: String,
    /// The recorded participant.
    pub participant_id: String,
    /// Its identity.
    pub identity: Option<String>,
    /// `mp4`, `hls` or `mp4+hls`.
    pub format: String,
}

/// What a published track captures, as its publisher says in `publish_offer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A camera.
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen or window.
    ScreenShare,
    /// The audio of a shared screen or tab.
    ScreenShareAudio,
}

/// Which of the participant's connections a candidate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The connection the client offers on and publishes with.
    Publisher,
    /// The connection the server offers on and sends the room's media with.
    Subscriber,
}

/// A message from the client. Every one may carry a request `id`, echoed in the reply.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter the room named by the token.
    Join {
        /// Request id.
        id: Option<Value>,
        /// The access token.
        token: String,
        /// `false`: this connection receives no one's media, even with the `subscribe`
        /// grant (a publisher only, such as a WHIP ingest). Default `true`.
        #[serde(default)]
        subscribe: Option<bool>,
    },
    /// Take over a joined session whose connection dropped, within its grace period.
    Resume {
        /// Request id.
        id: Option<Value>,
        /// The `session_id` from `joined`.
        session_id: String,
    },
    /// The client's offer on its publisher connection.
    PublishOffer {
        /// Request id.
        id: Option<Value>,
        /// SDP offer.
        sdp: String,
        /// What the tracks of the offer's sections capture, by mid (optional).
        #[serde(default)]
        sources: HashMap<String, Source>,
    },
    /// The client's answer to a `subscribe_offer`.
    SubscribeAnswer {
        /// Request id.
        id: Option<Value>,
        /// SDP answer.
        sdp: String,
    },
    /// The client's own offer of a receiving connection, after joining with `subscribe:
    /// false` (a WHEP player): its audio and video m-lines carry one participant's tracks,
    /// and the connection is never renegotiated. Needs the `subscribe` grant.
    ViewOffer {
        /// Request id.
        id: Option<Value>,
        /// SDP offer.
        sdp: String,
        /// Whose tracks: an identity; by default the room's first publisher, kept while it is
        /// in the room and publishes, then the next.
        #[serde(default)]
        identity: Option<String>,
    },
    /// A client ICE candidate.
    Trickle {
        /// Request id.
        id: Option<Value>,
        /// Which connection.
        target: Target,
        /// The `candidate:` line.
        candidate: String,
        /// Its media id.
        sdp_mid: Option<String>,
        /// Its m-line index.
        sdp_mline_index: Option<u16>,
    },
    /// Mute or unmute one of the participant's tracks.
    Mute {
        /// Request id.
        id: Option<Value>,
        /// The track.
        track_id: String,
        /// Muted or not.
        muted: bool,
    },
    /// How the client shows one of the tracks it receives (adaptive stream): the size of the
    /// box it renders it in, in device pixels, or that it does not show it. A paused track
    /// is not sent; of a simulcast track the server sends no layer larger than the box needs.
    UpdateSubscription {
        /// Request id.
        id: Option<Value>,
        /// The track.
        track_id: String,
        /// The box's width; with `height`, or neither (any size).
        #[serde(default)]
        width: Option<u32>,
        /// The box's height.
        #[serde(default)]
        height: Option<u32>,
        /// Not shown at all (default `false`).
        #[serde(default)]
        paused: bool,
    },
    /// A chat message to the room.
    Chat {
        /// Request id.
        id: Option<Value>,
        /// The text.
        text: String,
    },
    /// Start recording the room (needs the record grant): every publisher, or only the
    /// participant with `identity`; answered with `recording_started`.
    StartRecording {
        /// Request id.
        id: Option<Value>,
        /// `mp4`, `hls` or `mp4+hls` (default: `recording.default_format`).
        #[serde(default)]
        format: Option<String>,
        /// Record only this participant.
        #[serde(default)]
        identity: Option<String>,
    },
    /// Stop the room's recording, or one participant's (`recording_id`); needs the record
    /// grant.
    StopRecording {
        /// Request id.
        id: Option<Value>,
        /// Only this recording.
        #[serde(default)]
        recording_id: Option<String>,
    },
    /// Leave the room; the server closes the connection after the `ack`.
    Leave {
        /// Request id.
        id: Option<Value>,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        /// Request id.
        id: Option<Value>,
    },
    /// The client's answer to a server `ping`.
    Pong {
        /// Request id.
        id: Option<Value>,
    },
}

/// The message types a client may send, for error reporting and metrics.
pub const CLIENT_TYPES: [&str; 14] = [
    "join",
    "resume",
    "publish_offer",
    "subscribe_answer",
    "view_offer",
    "trickle",
    "mute",
    "update_subscription",
    "chat",
    "start_recording",
    "stop_recording",
    "leave",
    "ping",
    "pong",
];

/// Why a frame could not be turned into a [`ClientMessage`].
#[derive(Debug)]
pub struct ParseError {
    /// The request id, when the frame had one.
    pub id: Option<Value>,
    /// The error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl ClientMessage {
    /// Parses one text frame, telling apart bad JSON, unknown types and bad fields.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ParseError { id: None, code: ErrorCode::BadJson, message: e.to_string() })?;
        let Some(object) = value.as_object() else {
            return Err(ParseError { id: None, code: ErrorCode::BadJson, message: "a message must be a JSON object".into() });
        };
        let id = object.get("id").cloned();
        let fail = |code, message: String| ParseError { id: id.clone(), code, message };
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => return Err(fail(ErrorCode::InvalidMessage, "`type` must be a string".into())),
            None => return Err(fail(ErrorCode::InvalidMessage, "missing field `type`".into())),
        };
        if !CLIENT_TYPES.contains(&kind) {
            return Err(fail(ErrorCode::UnknownType, format!("unknown message type (one of {})", CLIENT_TYPES.join(", "))));
        }
        serde_json::from_value(value).map_err(|e| fail(ErrorCode::InvalidMessage, without_input(e.to_string())))
    }

    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Resume { .. } => "resume",
            Self::PublishOffer { .. } => "publish_offer",
            Self::SubscribeAnswer { .. } => "subscribe_answer",
            Self::ViewOffer { .. } => "view_offer",
            Self::Trickle { .. } => "trickle",
            Self::Mute { .. } => "mute",
            Self::UpdateSubscription { .. } => "update_subscription",
            Self::Chat { .. } => "chat",
            Self::StartRecording { .. } => "start_recording",
            Self::StopRecording { .. } => "stop_recording",
            Self::Leave { .. } => "leave",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
        }
    }

    /// The request id.
    pub fn id(&self) -> Option<Value> {
        match self {
            Self::Join { id, .. }
            | Self::Resume { id, .. }
            | Self::PublishOffer { id, .. }
            | Self::SubscribeAnswer { id, .. }
            | Self::ViewOffer { id, .. }
            | Self::Trickle { id, .. }
            | Self::Mute { id, .. }
            | Self::UpdateSubscription { id, .. }
            | Self::Chat { id, .. }
            | Self::StartRecording { id, .. }
            | Self::StopRecording { id, .. }
            | Self::Leave { id }
            | Self::Ping { id }
            | Self::Pong { id } => id.clone(),
        }
    }
}

/// A message's field error as serde words it, less the client's own text: serde quotes the
/// offending value ("invalid type: string \"…\", expected a boolean", "unknown variant
/// `…`"), which is the client's input and could be 60 KB of it. What was expected, and the
/// names of missing fields, are the protocol's.
fn without_input(message: String) -> String {
    if let Some((_, expected)) = message.split_once(", expected ") {
        return format!("a field has the wrong type or value: expected {expected}");
    }
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        return message;
    }
    "the message's fields do not match its type".into()
}

/// Frames longer than this are not read for their `id` when they are refused unread.
pub const REQUEST_ID_SCAN_BYTES: usize = 4 * 1024;

/// The `id` of a request that is refused without being parsed (a rate-limited one), so that
/// the client can tell which request the refusal answers; `None` when the frame is longer
/// than [`REQUEST_ID_SCAN_BYTES`] (reading it would cost what the limit saves) or is not a
/// JSON object.
pub fn request_id(text: &str) -> Option<Value> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<Value>,
    }
    if text.len() > REQUEST_ID_SCAN_BYTES {
        return None;
    }
    serde_json::from_str::<IdOnly>(text).ok()?.id
}

/// A participant as the room sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantInfo {
    /// Server-assigned id, unique per session.
    pub participant_id: String,
    /// The identity from the token.
    pub identity: String,
    /// Display name.
    pub name: Option<String>,
}

/// One of the room's active speakers.
#[derive(Debug, Clone, Serialize)]
pub struct Speaker {
    /// The participant.
    pub participant_id: String,
    /// The smoothed loudness of its loudest audio track, 0 (silence) to 1 (0 dBov).
    pub level: f32,
}

/// A published track as the room sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackDescription {
    /// Node-unique track id; also the `id` of the MediaStreamTrack on the subscriber side.
    pub track_id: String,
    /// The publisher; also the stream id on the subscriber side.
    pub participant_id: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// `camera`, `microphone`, `screen_share`, `screen_share_audio`, or `unknown` when its
    /// publisher did not say.
    pub source: &'static str,
    /// The codec's MIME type.
    pub codec: String,
    /// Whether the publisher muted it.
    pub muted: bool,
}

/// A STUN or TURN server a client may use, as the WebRTC `RTCIceServer` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// The TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A message from the server.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// The join request's id.
        id: Option<Value>,
        /// Protocol version.
        protocol: u32,
        /// The room.
        room: String,
        /// This participant.
        participant: ParticipantInfo,
        /// Secret handle for `resume` after a dropped connection.
        session_id: String,
        /// How long a dropped session waits for `resume` (0: it ends at once).
        resume_grace_secs: u64,
        /// The others already in the room.
        participants: Vec<ParticipantInfo>,
        /// Tracks already published.
        tracks: Vec<TrackDescription>,
        /// Recordings running in the room.
        recordings: Vec<RecordingSummary>,
        /// STUN/TURN servers for the client's connections, as configured (none is needed:
        /// the SFU is ICE-lite on reachable addresses).
        ice_servers: Vec<IceServer>,
    },
    /// The session was taken over by this connection; messages queued meanwhile follow.
    Resumed {
        /// The resume request's id.
        id: Option<Value>,
        /// This participant.
        participant: ParticipantInfo,
    },
    /// The answer to a `publish_offer`.
    PublishAnswer {
        /// The offer's request id.
        id: Option<Value>,
        /// SDP answer.
        sdp: String,
    },
    /// The answer to a `view_offer`.
    ViewAnswer {
        /// The offer's request id.
        id: Option<Value>,
        /// SDP answer.
        sdp: String,
    },
    /// The server's offer on the subscriber connection.
    SubscribeOffer {
        /// SDP offer.
        sdp: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        participant_id: String,
    },
    /// A track was published.
    TrackPublished {
        /// The track.
        track: TrackDescription,
    },
    /// A track was removed.
    TrackUnpublished {
        /// The track.
        track_id: String,
    },
    /// Dynacast: which simulcast layers of one of the client's own tracks anyone needs; the
    /// client pauses the others (`encodings[].active` by RID) and resumes them when told.
    PublishLayers {
        /// The track.
        track_id: String,
        /// The mid of its section of the publisher connection.
        mid: String,
        /// Each layer by RID: whether to send it.
        active: BTreeMap<String, bool>,
    },
    /// The room's active speakers changed (at most every 300 ms).
    ActiveSpeakers {
        /// Who speaks, loudest first (empty: nobody).
        speakers: Vec<Speaker>,
    },
    /// A track was muted or unmuted.
    TrackMuted {
        /// The publisher.
        participant_id: String,
        /// The track.
        track_id: String,
        /// Its state.
        muted: bool,
    },
    /// A chat message (sent to everyone, the author included).
    Chat {
        /// Server-assigned message id.
        message_id: String,
        /// Author's participant id.
        participant_id: String,
        /// Author's identity.
        identity: String,
        /// The text.
        text: String,
        /// Server time, Unix milliseconds.
        timestamp_ms: u64,
    },
    /// A request without other reply succeeded.
    Ack {
        /// The request id.
        id: Option<Value>,
        /// For chat: the message's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
    },
    /// Heartbeat from the server; answer with `pong`.
    Ping {},
    /// Answer to a client `ping`.
    Pong {
        /// The ping's id.
        id: Option<Value>,
    },
    /// The room is hosted by another node: join it there (`url` + `/ws`) with the same token.
    Redirect {
        /// The join request's id.
        id: Option<Value>,
        /// The room.
        room: String,
        /// The node hosting it.
        node: String,
        /// That node's base URL.
        url: String,
    },
    /// The room recording started: the recordings of the participants publishing now.
    RecordingStarted {
        /// The request id.
        id: Option<Value>,
        /// The recordings.
        recordings: Vec<RecordingSummary>,
    },
    /// A participant's recording started, finished (stored) or failed: sent to the room.
    Recording {
        /// Recording id.
        recording_id: String,
        /// The recorded participant.
        participant_id: String,
        /// `mp4`, `hls` or `mp4+hls`.
        format: String,
        /// `started`, `finished` or `failed`.
        state: String,
    },
    /// The room was closed by the server or an operator; the connection closes next.
    RoomClosed {
        /// Why.
        reason: String,
    },
    /// An operator removed this participant from the room; the connection closes next
    /// (code 4003). The token still admits it: removal does not ban.
    Removed {
        /// Why.
        reason: String,
    },
    /// A request failed.
    Error {
        /// The request id, when known.
        id: Option<Value>,
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
}

impl ServerMessage {
    /// An error reply.
    pub fn error(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { id, code, message: message.into() }
    }

    /// The JSON text frame.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"type":"error","code":"internal","message":"{e}"}}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_tells_errors_apart() {
        assert_eq!(ClientMessage::parse("{nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(ClientMessage::parse("[1]").unwrap_err().code, ErrorCode::BadJson);
        let unknown = ClientMessage::parse(r#"{"type":"fly","id":7}"#).unwrap_err();
        assert_eq!((unknown.code, unknown.id), (ErrorCode::UnknownType, Some(Value::from(7))));
        let missing = ClientMessage::parse(r#"{"type":"join"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::InvalidMessage);
        assert!(missing.message.contains("token"), "{}", missing.message);
        assert_eq!(ClientMessage::parse(r#"{"id":1}"#).unwrap_err().code, ErrorCode::InvalidMessage);
        assert!(matches!(ClientMessage::parse(r#"{"type":"ping","id":"a"}"#), Ok(ClientMessage::Ping { .. })));
    }

    #[test]
    fn errors_never_quote_the_input() {
        let marker = "JUNK".repeat(1000);
        let frames = [
            json!({"type": marker}),
            json!({"type": "mute", "track_id": "a", "muted": marker}),
            json!({"type": "trickle", "target": marker, "candidate": "c"}),
            json!({"type": "join", "token": 7, "extra": marker}),
            json!({"type": "chat", "text": {"nested": marker}}),
        ];
        for frame in frames {
            let err = ClientMessage::parse(&frame.to_string()).unwrap_err();
            assert!(!err.message.contains("JUNK") && err.message.len() < 200, "{}", &err.message[..err.message.len().min(200)]);
        }
        let err = ClientMessage::parse(r#"{"type":"mute","track_id":"a","muted":"yes"}"#).unwrap_err();
        assert_eq!(err.message, "a field has the wrong type or value: expected a boolean");
    }

    #[test]
    fn request_ids_are_read_from_short_objects_only() {
        assert_eq!(request_id(r#"{"type":"ping","id":7}"#), Some(Value::from(7)));
        assert_eq!(request_id(r#"{"id":"a","type":"anything"}"#), Some(Value::from("a")));
        assert_eq!(request_id(r#"{"type":"ping"}"#), None);
        assert_eq!(request_id("[1,2]"), None);
        assert_eq!(request_id("{nope"), None);
        let long = format!(r#"{{"id":1,"pad":"{}"}}"#, "x".repeat(REQUEST_ID_SCAN_BYTES));
        assert_eq!(request_id(&long), None);
    }

    #[test]
    fn server_messages_serialize_with_their_type() {
        let text = ServerMessage::error(Some(Value::from(3)), ErrorCode::RateLimited, "slow down").to_text();
        assert_eq!(text, r#"{"type":"error","id":3,"code":"rate_limited","message":"slow down"}"#);
    }
}
