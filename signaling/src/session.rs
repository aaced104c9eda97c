//! One signaling connection: authentication, limits, and the dispatch of protocol messages to
//! the room registry and the media plane. Transport-agnostic: the HTTP layer feeds it frames
//! and carries its outbox to the WebSocket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use sfu::{
    FrameSize, MediaGrants, MediaKind, MediaSession, ParticipantId, PeerRole, RoomId, Sfu, SfuError, SfuEvent, TrackId, TrackInfo,
    TrackSource, View,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Grants, TokenAuthority};
use crate::bookkeeping::{Bookkeeping, Seat, StreamInfo};
use crate::journal::{DeliveryStatus, MessageType, ParticipantStatus, SessionStatus, StreamStatus, StreamType};
use crate::metrics::SignalingMetrics;
use crate::protocol::{
    request_id, ClientMessage, ErrorCode, IceServer, ParticipantInfo, ServerMessage, Source, Speaker, Target, TrackDescription,
    PROTOCOL_VERSION,
};
use crate::rate::TokenBucket;
use crate::recordings::{RecordingContext, RecordingError, Recordings};
use crate::rooms::{AdmitError, Control, Outbox, Rooms};
use crate::stamps::{new_id, unix_ms};
use crate::state::Ownership;

/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 4096;
/// The largest box side an `update_subscription` may give, in pixels (beyond any screen).
pub const MAX_VIEW_PIXELS: u32 = 16_384;

/// A frame received from the client's transport.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
}

/// Why the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

/// Limits that apply to each connection.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest text frame, bytes.
    pub max_message_bytes: usize,
    /// Messages per second.
    pub messages_per_second: u32,
    /// Burst of the rate limit.
    pub message_burst: u32,
    /// Violations before the connection is closed.
    pub abuse_threshold: u32,
    /// Interval of server pings; 3 silent intervals close the connection.
    pub ping_interval: Duration,
    /// How long a joined session whose connection dropped waits for `resume`.
    pub resume_grace: Duration,
    /// How long a new connection has to join or resume; pings do not extend it.
    pub join_timeout: Duration,
}

/// Everything sessions share.
pub struct SignalingContext {
    /// The media plane.
    pub sfu: Arc<Sfu>,
    /// Presence.
    pub rooms: Rooms,
    /// Token verification.
    pub auth: TokenAuthority,
    /// Per-connection limits.
    pub limits: SessionLimits,
    /// Counters.
    pub metrics: Arc<SignalingMetrics>,
    /// Joined sessions, by session id, for `resume`.
    pub resumable: Resumable,
    /// Shared state, persistence and events.
    pub books: Bookkeeping,
    /// This node's recordings.
    pub recordings: Recordings,
    /// STUN/TURN servers handed to clients in `joined`.
    pub ice_servers: Vec<IceServer>,
}

impl RecordingContext for SignalingContext {
    fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    fn sfu(&self) -> &Sfu {
        &self.sfu
    }

    fn books(&self) -> &Bookkeeping {
        &self.books
    }

    fn recordings(&self) -> &Recordings {
        &self.recordings
    }
}

/// A client connection as a session sees it: frames in, frames out, and where the close
/// the server decides on goes. Dropping it ends the connection.
pub struct Transport {
    /// Frames from the client; `None` once the client is gone.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Frames to the client.
    pub outbox: Outbox,
    /// The close frame to send, when the server ends the connection.
    pub close: oneshot::Sender<CloseReason>,
}

/// A connection taking over a session.
struct Resume {
    transport: Transport,
    id: Option<Value>,
}

/// Joined sessions that a new connection can take over, by session id.
#[derive(Default)]
pub struct Resumable {
    sessions: Mutex<HashMap<String, mpsc::Sender<Resume>>>,
}

impl Resumable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Resume>>> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self, session_id: String) -> mpsc::Receiver<Resume> {
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(session_id, tx);
        rx
    }

    fn remove(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    /// Hands `resume` to the session, or gives it back if there is no such session.
    fn hand_over(&self, session_id: &str, resume: Resume) -> Result<(), Resume> {
        let Some(session) = self.lock().get(session_id).cloned() else { return Err(resume) };
        session.try_send(resume).map_err(|err| err.into_inner())
    }
}

struct Joined {
    room: String,
    me: ParticipantInfo,
    seat: Seat,
    grants: Grants,
    media: MediaSession,
    own_tracks: HashMap<String, StreamInfo>,
    controls: mpsc::UnboundedReceiver<Control>,
    /// How the participant's stay ends, if not by leaving.
    removed: bool,
}

/// What a frame did to the session.
enum Step {
    Continue,
    /// The server ends the connection (and the session).
    Close(CloseReason),
    /// The connection was handed to another session (`resume`); this one ends quietly.
    HandedOver,
}

struct Session {
    ctx: Arc<SignalingContext>,
    /// The client's current connection; `None` while a joined session waits for `resume`.
    transport: Option<Transport>,
    /// Messages for the client that do not answer its requests (broadcasts, media events):
    /// queued here so they survive a dropped connection until `resume`.
    queue: Outbox,
    queued: mpsc::Receiver<String>,
    bucket: TokenBucket,
    violations: u32,
    joined: Option<Joined>,
    media_events: Option<mpsc::UnboundedReceiver<SfuEvent>>,
    resumes: Option<mpsc::Receiver<Resume>>,
}

/// Messages queued for a session while its connection is away.
const QUEUE_CAPACITY: usize = 256;

/// Serves a connection, and the session it joins, until the client leaves, the session's
/// connection stays away past the resume grace, or the server closes it for abuse.
pub async fn run_session(ctx: Arc<SignalingContext>, transport: Transport) {
    let now = Instant::now();
    let limits = ctx.limits.clone();
    let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
    let mut session = Session {
        bucket: TokenBucket::new(now, limits.messages_per_second, limits.message_burst),
        ctx,
        transport: Some(transport),
        queue,
        queued,
        violations: 0,
        joined: None,
        media_events: None,
        resumes: None,
    };
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let mut detached_until: Option<tokio::time::Instant> = None;
    // Cleared by the join: a connection that never joins holds nothing past this.
    let mut join_by = Some(tokio::time::Instant::now() + limits.join_timeout);
    loop {
        if session.joined.is_some() {
            join_by = None;
        }
        let attached = session.transport.is_some();
        tokio::select! {
            frame = next_frame(&mut session.transport) => match frame {
                Some(frame) => {
                    last_seen = Instant::now();
                    match session.on_frame(frame).await {
                        Step::Continue => {}
                        Step::Close(reason) => {
                            session.close_transport(reason);
                            break;
                        }
                        Step::HandedOver => return,
                    }
                }
                None => {
                    session.transport = None;
                    if session.joined.is_none() || limits.resume_grace.is_zero() {
                        break;
                    }
                    debug!("connection lost; waiting for resume");
                    session.set_status(SessionStatus::Disconnected);
                    detached_until = Some(tokio::time::Instant::now() + limits.resume_grace);
                }
            },
            Some(text) = session.queued.recv(), if attached => session.deliver(text).await,
            Some(event) = next_event(&mut session.media_events) => session.on_media_event(event).await,
            Some(control) = next_control(&mut session.joined) => {
                if let Step::Close(reason) = session.on_control(control).await {
                    session.close_transport(reason);
                    break;
                }
            }
            Some(resume) = next_resume(&mut session.resumes) => {
                session.attach(resume).await;
                detached_until = None;
                last_seen = Instant::now();
            }
            () = sleep_until(detached_until) => {
                debug!("resume grace over");
                break;
            }
            () = sleep_until(join_by), if session.joined.is_none() => {
                session.close_transport(CloseReason { code: 4002, reason: "no join within the join timeout".into() });
                break;
            }
            _ = ping.tick(), if attached => {
                if last_seen.elapsed() > limits.ping_interval * 3 {
                    session.close_transport(CloseReason { code: 1001, reason: "heartbeat timeout".into() });
                    break;
                }
                session.send(ServerMessage::Ping {}).await;
            }
        }
    }
    session.leave();
}

async fn next_frame(transport: &mut Option<Transport>) -> Option<Inbound> {
    match transport {
        Some(transport) => transport.inbound.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_resume(resumes: &mut Option<mpsc::Receiver<Resume>>) -> Option<Resume> {
    match resumes {
        Some(resumes) => resumes.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_control(joined: &mut Option<Joined>) -> Option<Control> {
    match joined {
        Some(joined) => joined.controls.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<SfuEvent>>) -> Option<SfuEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// The media plane's name for what a track captures.
fn track_source(source: Source) -> TrackSource {
    match source {
        Source::Camera => TrackSource::Camera,
        Source::Microphone => TrackSource::Microphone,
        Source::ScreenShare => TrackSource::ScreenShare,
        Source::ScreenShareAudio => TrackSource::ScreenShareAudio,
    }
}

fn describe(track: &TrackInfo, muted: bool) -> TrackDescription {
    TrackDescription {
        track_id: track.id.to_string(),
        participant_id: track.publisher.to_string(),
        kind: match track.kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        },
        source: match track.source {
            TrackSource::Unknown => "unknown",
            TrackSource::Camera => "camera",
            TrackSource::Microphone => "microphone",
            TrackSource::ScreenShare => "screen_share",
            TrackSource::ScreenShareAudio => "screen_share_audio",
        },
        codec: track.codec.mime_type.clone(),
        muted,
    }
}

/// The protocol error code of a refused recording request.
fn recording_error_code(err: &RecordingError) -> ErrorCode {
    match err {
        RecordingError::NoSuchRoom(_) => ErrorCode::Internal,
        RecordingError::NoSuchParticipant(_) | RecordingError::BadFormat(_) => ErrorCode::InvalidMessage,
        RecordingError::AlreadyRecording(_) => ErrorCode::AlreadyRecording,
        RecordingError::NotRecording(_) => ErrorCode::NotRecording,
        RecordingError::Media(err) => sfu_error_code(err),
    }
}

fn sfu_error_code(err: &SfuError) -> ErrorCode {
    match err {
        SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
        SfuError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
        SfuError::NotAllowed => ErrorCode::Forbidden,
        SfuError::TooManyTracks { .. } => ErrorCode::TooManyTracks,
        SfuError::NotNegotiated | SfuError::AlreadyReceiving => ErrorCode::NegotiationState,
        SfuError::NotSubscribed => ErrorCode::UnknownTrack,
        SfuError::UnknownParticipant
        | SfuError::AlreadyJoined
        | SfuError::WorkerGone
        | SfuError::Engine(_)
        | SfuError::Bind { .. }
        | SfuError::TcpStart { .. }
        | SfuError::WorkerStart { .. } => ErrorCode::Internal,
    }
}

impl Session {
    /// Sends to the client now, or queues until `resume` while its connection is away.
    async fn send(&self, message: ServerMessage) {
        if let ServerMessage::Error { code, message: text, .. } = &message {
            self.ctx.metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Rate-limit refusals are not persisted: an abusive client must not turn into
            // database writes.
            if let (Some(joined), false) = (&self.joined, *code == ErrorCode::RateLimited) {
                let payload = serde_json::json!({ "code": code, "message": text });
                self.ctx.books.message(&joined.seat, MessageType::Error, None, Some(&joined.seat.identity), payload, DeliveryStatus::Sent);
            }
        }
        let text = message.to_text();
        match &self.transport {
            // A closed outbox means the connection is going; its inbound side tells the loop.
            Some(transport) => drop(transport.outbox.send(text).await),
            None => {
                if self.queue.try_send(text).is_err() {
                    warn!("queue of a detached session full; message dropped");
                }
            }
        }
    }

    /// Passes a queued message to the connection.
    async fn deliver(&self, text: String) {
        if let Some(transport) = &self.transport {
            let _ = transport.outbox.send(text).await;
        }
    }

    /// Ends the current connection with a close frame.
    fn close_transport(&mut self, reason: CloseReason) {
        if let Some(transport) = self.transport.take() {
            let _ = transport.close.send(reason);
        }
    }

    /// A new connection takes over this session.
    async fn attach(&mut self, resume: Resume) {
        self.close_transport(CloseReason { code: 4000, reason: "resumed on another connection".into() });
        self.transport = Some(resume.transport);
        let Some(joined) = self.joined.as_ref() else { return };
        info!(participant = %joined.me.participant_id, "session resumed");
        self.ctx.books.status(&joined.seat, SessionStatus::Connected);
        let participant = joined.me.clone();
        self.send(ServerMessage::Resumed { id: resume.id, participant }).await;
    }

    /// `resume` on a fresh connection: hand it to the session it names.
    async fn resume(&mut self, id: Option<Value>, session_id: &str) -> Step {
        if self.joined.is_some() {
            self.send(ServerMessage::error(id, ErrorCode::AlreadyJoined, "this connection already has a session")).await;
            return Step::Continue;
        }
        let Some(transport) = self.transport.take() else { return Step::Continue };
        match self.ctx.resumable.hand_over(session_id, Resume { transport, id }) {
            Ok(()) => Step::HandedOver,
            Err(resume) => {
                self.transport = Some(resume.transport);
                self.send(ServerMessage::error(resume.id, ErrorCode::UnknownSession, "no session to resume with that id")).await;
                Step::Continue
            }
        }
    }

    async fn reject(&mut self, id: Option<Value>, code: ErrorCode, message: impl Into<String>) {
        self.ctx.metrics.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(ServerMessage::error(id, code, message)).await;
    }

    /// Takes a rate token: from the bucket of the user that the nodes share once joined,
    /// from this connection's own bucket before, or when the shared one cannot answer.
    async fn take_rate_token(&mut self) -> bool {
        if let Some(joined) = &self.joined {
            let limits = &self.ctx.limits;
            let state = &self.ctx.books.state;
            if let Some(taken) = state.take_rate_token(&joined.seat.identity, limits.messages_per_second, limits.message_burst).await {
                return taken;
            }
        }
        self.bucket.try_take(Instant::now())
    }

    async fn on_frame(&mut self, frame: Inbound) -> Step {
        if !self.take_rate_token().await {
            self.violations += 1;
            if self.violations > self.ctx.limits.abuse_threshold {
                return Step::Close(CloseReason { code: 1008, reason: "rate limit exceeded repeatedly".into() });
            }
            let id = match &frame {
                Inbound::Text(text) => request_id(text),
                Inbound::Binary => None,
            };
            self.reject(id, ErrorCode::RateLimited, "too many messages; slow down").await;
            return Step::Continue;
        }
        let text = match frame {
            Inbound::Text(text) => text,
            Inbound::Binary => {
                self.reject(None, ErrorCode::UnsupportedFrame, "binary frames are not part of the protocol").await;
                return Step::Continue;
            }
        };
        if text.len() > self.ctx.limits.max_message_bytes {
            let limit = self.ctx.limits.max_message_bytes;
            self.reject(None, ErrorCode::MessageTooLarge, format!("message of {} bytes exceeds {limit}", text.len())).await;
            return Step::Continue;
        }
        let message = match ClientMessage::parse(&text) {
            Ok(message) => message,
            Err(err) => {
                self.reject(err.id, err.code, err.message).await;
                return Step::Continue;
            }
        };
        self.ctx.metrics.count_message(message.kind());
        self.dispatch(message).await
    }

    async fn dispatch(&mut self, message: ClientMessage) -> Step {
        let id = message.id();
        let before_join = matches!(
            message,
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } | ClientMessage::Ping { .. } | ClientMessage::Pong { .. }
        );
        if !before_join && self.joined.is_none() {
            self.send(ServerMessage::error(id, ErrorCode::NotJoined, "join a room first")).await;
            return Step::Continue;
        }
        match message {
            ClientMessage::Join { token, subscribe, .. } => self.join(id, &token, subscribe.unwrap_or(true)).await,
            ClientMessage::Resume { session_id, .. } => return self.resume(id, &session_id).await,
            ClientMessage::PublishOffer { sdp, sources, .. } => self.publish_offer(id, sdp, sources).await,
            ClientMessage::SubscribeAnswer { sdp, .. } => self.subscribe_answer(id, sdp).await,
            ClientMessage::ViewOffer { sdp, identity, .. } => self.view_offer(id, sdp, identity).await,
            ClientMessage::Trickle { target, candidate, sdp_mid, sdp_mline_index, .. } => {
                let role = match target {
                    Target::Publisher => PeerRole::Publisher,
                    Target::Subscriber => PeerRole::Subscriber,
                };
                let Some(media) = self.media() else { return Step::Continue };
                let result = media.remote_candidate(role, candidate, sdp_mid, sdp_mline_index).await;
                self.reply(id, result.map(|()| None)).await;
            }
            ClientMessage::Mute { track_id, muted, .. } => self.mute(id, track_id, muted).await,
            ClientMessage::UpdateSubscription { track_id, width, height, paused, .. } => {
                self.update_subscription(id, &track_id, width, height, paused).await
            }
            ClientMessage::Chat { text, .. } => self.chat(id, text).await,
            ClientMessage::StartRecording { format, identity, .. } => self.start_recording(id, format, identity).await,
            ClientMessage::StopRecording { recording_id, .. } => self.stop_recording(id, recording_id).await,
            ClientMessage::Leave { .. } => {
                self.send(ServerMessage::Ack { id, message_id: None }).await;
                return Step::Close(CloseReason { code: 1000, reason: "left".into() });
            }
            ClientMessage::Ping { .. } => self.send(ServerMessage::Pong { id }).await,
            ClientMessage::Pong { .. } => {
                if let Some(joined) = &self.joined {
                    self.ctx.books.alive(&joined.seat);
                }
            }
        }
        Step::Continue
    }

    fn media(&self) -> Option<&MediaSession> {
        self.joined.as_ref().map(|j| &j.media)
    }

    async fn reply(&self, id: Option<Value>, result: Result<Option<String>, SfuError>) {
        match result {
            Ok(message_id) => self.send(ServerMessage::Ack { id, message_id }).await,
            Err(err) => self.send(ServerMessage::error(id, sfu_error_code(&err), err.to_string())).await,
        }
    }

    async fn join(&mut self, id: Option<Value>, token: &str, subscribe: bool) {
        if self.joined.is_some() {
            return self.send(ServerMessage::error(id, ErrorCode::AlreadyJoined, "already joined")).await;
        }
        let claims = match self.ctx.auth.verify(token) {
            Ok(claims) => claims,
            Err(AuthError::Expired) => return self.send(ServerMessage::error(id, ErrorCode::TokenExpired, "access token expired")).await,
            Err(err) => return self.send(ServerMessage::error(id, ErrorCode::Unauthorized, err.to_string())).await,
        };
        if let Ownership::Elsewhere(node) = self.ctx.books.state.claim_room(&claims.room).await {
            info!(room = %claims.room, owner = %node.id, "room hosted elsewhere; redirecting");
            return self.send(ServerMessage::Redirect { id, room: claims.room, node: node.id, url: node.url }).await;
        }
        let me = ParticipantInfo { participant_id: new_id("PA_"), identity: claims.sub.clone(), name: claims.name.clone() };
        let (control, controls) = mpsc::unbounded_channel();
        let admitted = match self.ctx.rooms.admit(&claims.room, me.clone(), self.queue.clone(), control) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.ctx.books.state.abandon_claim(&claims.room);
                let (code, message) = match refusal {
                    AdmitError::RoomFull => (ErrorCode::RoomFull, "the room is full"),
                    AdmitError::TooManyRooms => (ErrorCode::TooManyRooms, "this node hosts its maximum of rooms"),
                };
                return self.send(ServerMessage::error(id, code, message)).await;
            }
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let grants = MediaGrants { publish: claims.grants.publish, subscribe: claims.grants.subscribe && subscribe };
        let joined = self
            .ctx
            .sfu
            .join(RoomId::new(claims.room.as_str()), ParticipantId::new(me.participant_id.as_str()), me.identity.clone(), grants, events_tx)
            .await;
        let (media, tracks) = match joined {
            Ok(joined) => joined,
            Err(err) => {
                self.ctx.rooms.remove(&claims.room, &me.participant_id);
                self.ctx.books.state.abandon_claim(&claims.room);
                return self.send(ServerMessage::error(id, ErrorCode::Internal, err.to_string())).await;
            }
        };
        info!(room = %claims.room, participant = %me.participant_id, identity = %me.identity, "joined");
        let tracks = tracks.iter().map(|t| describe(t, self.ctx.rooms.is_muted(&claims.room, &t.id.to_string()))).collect();
        self.media_events = Some(events_rx);
        let session_id = Alphanumeric.sample_string(&mut rand::rng(), 32);
        self.resumes = Some(self.ctx.resumable.register(session_id.clone()));
        let seat = Seat {
            meeting_id: claims.room.clone(),
            room_id: admitted.room_id,
            identity: me.identity.clone(),
            name: me.name.clone(),
            participant_id: me.participant_id.clone(),
            session_id: session_id.clone(),
        };
        let join_payload = serde_json::json!({ "participant_id": me.participant_id, "name": me.name, "grants": claims.grants });
        self.ctx.books.joined(&seat, admitted.opened, admitted.others.len() + 1, join_payload);
        if admitted.opened {
            self.ctx.recordings.room_opened(&claims.room).await;
        }
        self.joined = Some(Joined {
            room: claims.room.clone(),
            me: me.clone(),
            seat,
            grants: claims.grants,
            media,
            own_tracks: HashMap::new(),
            controls,
            removed: false,
        });
        let recordings = self.ctx.recordings.running(&claims.room);
        self.send(ServerMessage::Joined {
            id,
            protocol: PROTOCOL_VERSION,
            room: claims.room,
            participant: me,
            session_id,
            resume_grace_secs: self.ctx.limits.resume_grace.as_secs(),
            participants: admitted.others,
            tracks,
            recordings,
            ice_servers: self.ctx.ice_servers.clone(),
        })
        .await;
    }

    /// Records a negotiation message of this session.
    fn note(&self, message_type: MessageType, from_client: bool, payload: Value) {
        let Some(joined) = &self.joined else { return };
        let me = Some(joined.seat.identity.as_str());
        let (from, to) = if from_client { (me, None) } else { (None, me) };
        self.ctx.books.message(&joined.seat, message_type, from, to, payload, DeliveryStatus::Delivered);
    }

    /// Records the client's offer on its `target` connection and the server's answer; the
    /// negotiation is stable.
    fn answered(&self, target: &str, offer: String, answer: &str) {
        self.note(MessageType::Offer, true, serde_json::json!({ "target": target, "sdp": offer }));
        self.note(MessageType::Answer, false, serde_json::json!({ "target": target, "sdp": answer }));
        self.set_status(SessionStatus::Stable);
    }

    fn set_status(&self, status: SessionStatus) {
        if let Some(joined) = &self.joined {
            self.ctx.books.status(&joined.seat, status);
        }
    }

    async fn publish_offer(&mut self, id: Option<Value>, sdp: String, sources: HashMap<String, Source>) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.publish {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant publish")).await;
        }
        self.set_status(SessionStatus::Offering);
        // Recorded once applied: a refused offer is the client's junk, and its refusal is
        // recorded instead.
        let sources = sources.into_iter().map(|(mid, source)| (mid, track_source(source))).collect();
        match joined.media.publisher_offer(sdp.clone(), sources).await {
            Ok(answer) => {
                self.answered("publisher", sdp, &answer);
                self.send(ServerMessage::PublishAnswer { id, sdp: answer }).await;
            }
            Err(err) => self.send(ServerMessage::error(id, sfu_error_code(&err), err.to_string())).await,
        }
    }

    async fn subscribe_answer(&mut self, id: Option<Value>, sdp: String) {
        let Some(media) = self.media() else { return };
        let result = media.subscriber_answer(sdp.clone()).await;
        if result.is_ok() {
            self.note(MessageType::Answer, true, serde_json::json!({ "target": "subscriber", "sdp": sdp }));
            self.set_status(SessionStatus::Stable);
        }
        self.reply(id, result.map(|()| None)).await;
    }

    async fn view_offer(&mut self, id: Option<Value>, sdp: String, identity: Option<String>) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.subscribe {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant subscribe")).await;
        }
        match joined.media.viewer_offer(sdp.clone(), identity).await {
            Ok(answer) => {
                self.answered("subscriber", sdp, &answer);
                self.send(ServerMessage::ViewAnswer { id, sdp: answer }).await;
            }
            Err(err) => self.send(ServerMessage::error(id, sfu_error_code(&err), err.to_string())).await,
        }
    }

    async fn mute(&mut self, id: Option<Value>, track_id: String, muted: bool) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.own_tracks.contains_key(&track_id) {
            return self.send(ServerMessage::error(id, ErrorCode::UnknownTrack, "the track named is not one you publish")).await;
        }
        self.set_track_muted(&track_id, muted, true);
        self.send(ServerMessage::Ack { id, message_id: None }).await;
    }

    /// Tells the media plane how the client shows a track it receives.
    async fn update_subscription(&mut self, id: Option<Value>, track_id: &str, width: Option<u32>, height: Option<u32>, paused: bool) {
        let Some(joined) = self.joined.as_ref() else { return };
        let size = match (width, height) {
            (None, None) => None,
            (Some(width), Some(height)) if width <= MAX_VIEW_PIXELS && height <= MAX_VIEW_PIXELS => Some(FrameSize { width, height }),
            _ => {
                let message = format!("width and height come together, each at most {MAX_VIEW_PIXELS}");
                return self.send(ServerMessage::error(id, ErrorCode::InvalidMessage, message)).await;
            }
        };
        let Some(track) = TrackId::parse(track_id) else {
            return self.send(ServerMessage::error(id, ErrorCode::UnknownTrack, "the track is not one this participant receives")).await;
        };
        let result = joined.media.set_view(track, View { paused, size }).await;
        self.reply(id, result.map(|()| None)).await;
    }

    /// Mutes or unmutes one of this participant's tracks, for the room and the records.
    fn set_track_muted(&self, track_id: &str, muted: bool, by_client: bool) {
        let Some(joined) = self.joined.as_ref() else { return };
        let Some(stream) = joined.own_tracks.get(track_id) else { return };
        self.ctx.rooms.set_muted(&joined.room, &joined.me.participant_id, track_id, muted);
        if let Some(track) = TrackId::parse(track_id) {
            joined.media.set_muted(track, muted);
        }
        let by = if by_client { "participant" } else { "server" };
        self.note(MessageType::MediaControl, by_client, serde_json::json!({ "track_id": track_id, "muted": muted, "by": by }));
        let status = if muted { StreamStatus::Paused } else { StreamStatus::Active };
        self.ctx.books.stream(&joined.seat, stream, status);
    }

    async fn chat(&mut self, id: Option<Value>, text: String) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.publish_data {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant publish_data")).await;
        }
        if text.trim().is_empty() || text.chars().count() > MAX_CHAT_CHARS {
            return self
                .send(ServerMessage::error(id, ErrorCode::InvalidMessage, format!("chat text must be 1 to {MAX_CHAT_CHARS} characters")))
                .await;
        }
        let message_id = new_id("MS_");
        let timestamp_ms = unix_ms();
        let payload = serde_json::json!({ "text": text });
        let chat = ServerMessage::Chat {
            message_id: message_id.clone(),
            participant_id: joined.me.participant_id.clone(),
            identity: joined.me.identity.clone(),
            text,
            timestamp_ms,
        };
        self.ctx.rooms.broadcast(&joined.room, &chat);
        let seat = &joined.seat;
        self.ctx.books.message_with_id(
            seat,
            message_id.clone(),
            MessageType::Chat,
            Some(&seat.identity),
            None,
            payload,
            DeliveryStatus::Sent,
        );
        self.send(ServerMessage::Ack { id, message_id: Some(message_id) }).await;
    }

    async fn start_recording(&mut self, id: Option<Value>, format: Option<String>, identity: Option<String>) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.record {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant record")).await;
        }
        let room = joined.room.clone();
        match self.ctx.recordings.start(&room, format.as_deref(), identity.as_deref()).await {
            Ok(recordings) => self.send(ServerMessage::RecordingStarted { id, recordings }).await,
            Err(err) => self.send(ServerMessage::error(id, recording_error_code(&err), err.to_string())).await,
        }
    }

    async fn stop_recording(&mut self, id: Option<Value>, recording_id: Option<String>) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.record {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant record")).await;
        }
        match self.ctx.recordings.stop(&joined.room, recording_id.as_deref()) {
            Ok(()) => self.send(ServerMessage::Ack { id, message_id: None }).await,
            Err(err) => self.send(ServerMessage::error(id, recording_error_code(&err), err.to_string())).await,
        }
    }

    async fn on_media_event(&mut self, event: SfuEvent) {
        let Some(joined) = self.joined.as_mut() else { return };
        let message = match event {
            SfuEvent::TrackPublished(track) => {
                if track.publisher.as_str() == joined.me.participant_id {
                    let stream_type = match track.kind {
                        MediaKind::Audio => StreamType::Audio,
                        MediaKind::Video => StreamType::Video,
                    };
                    let stream = StreamInfo { track_id: track.id.to_string(), stream_type, codec: track.codec.mime_type.clone() };
                    self.ctx.books.published(&joined.seat, &stream);
                    joined.own_tracks.insert(stream.track_id.clone(), stream);
                }
                ServerMessage::TrackPublished { track: describe(&track, false) }
            }
            SfuEvent::TrackUnpublished(track) => {
                let track = track.to_string();
                if let Some(stream) = joined.own_tracks.remove(&track) {
                    self.ctx.rooms.forget_track(&joined.room, &track);
                    self.ctx.books.unpublished(&joined.seat, &stream);
                }
                ServerMessage::TrackUnpublished { track_id: track }
            }
            SfuEvent::SubscriberOffer(sdp) => {
                self.note(MessageType::Offer, false, serde_json::json!({ "target": "subscriber", "sdp": sdp }));
                self.set_status(SessionStatus::Answering);
                ServerMessage::SubscribeOffer { sdp }
            }
            SfuEvent::ActiveSpeakers(speakers) => ServerMessage::ActiveSpeakers {
                speakers: speakers.into_iter().map(|(id, level)| Speaker { participant_id: id.to_string(), level }).collect(),
            },
            SfuEvent::PublishLayers { track, mid, active } => {
                ServerMessage::PublishLayers { track_id: track.to_string(), mid, active: active.into_iter().collect() }
            }
            SfuEvent::ConnectionFailed => {
                self.set_status(SessionStatus::Failed);
                ServerMessage::error(None, ErrorCode::MediaConnectionFailed, "a media connection failed; leave and join again")
            }
        };
        self.send(message).await;
    }

    /// An order from outside the connection.
    async fn on_control(&mut self, control: Control) -> Step {
        match control {
            Control::Close { reason } => {
                if let Some(joined) = self.joined.as_mut() {
                    joined.removed = true;
                }
                self.send(ServerMessage::RoomClosed { reason }).await;
                Step::Close(CloseReason { code: 4001, reason: "room closed".into() })
            }
            Control::Remove { reason } => {
                if let Some(joined) = self.joined.as_mut() {
                    joined.removed = true;
                }
                self.send(ServerMessage::Removed { reason }).await;
                Step::Close(CloseReason { code: 4003, reason: "removed by an operator".into() })
            }
            Control::MuteTracks => {
                let Some(joined) = self.joined.as_ref() else { return Step::Continue };
                let tracks: Vec<String> = joined.own_tracks.keys().filter(|t| !self.ctx.rooms.is_muted(&joined.room, t)).cloned().collect();
                for track in tracks {
                    self.set_track_muted(&track, true, false);
                }
                Step::Continue
            }
        }
    }

    fn leave(&mut self) {
        if let Some(joined) = self.joined.take() {
            debug!(participant = %joined.me.participant_id, "leaving");
            self.ctx.resumable.remove(&joined.seat.session_id);
            for stream in joined.own_tracks.values() {
                self.ctx.books.unpublished(&joined.seat, stream);
                self.ctx.rooms.forget_track(&joined.room, &stream.track_id);
            }
            let remaining = self.ctx.rooms.remove(&joined.room, &joined.me.participant_id).map_or(0, |d| d.remaining);
            let status = if joined.removed { ParticipantStatus::Removed } else { ParticipantStatus::Left };
            let payload = serde_json::json!({ "participant_id": joined.me.participant_id });
            self.ctx.books.left(&joined.seat, status, remaining, payload);
            if remaining == 0 {
                self.ctx.recordings.room_closed(&joined.room);
            }
            // Dropping the media session takes the participant's media out of the room.
        }
    }
}
