//! One signaling connection: authentication, limits, and the dispatch of protocol messages to
//! the room registry and the media plane. Transport-agnostic: the HTTP layer feeds it frames
//! and carries its outbox to the WebSocket.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use sfu::{MediaGrants, MediaKind, MediaSession, ParticipantId, PeerRole, RoomId, Sfu, SfuError, SfuEvent, TrackInfo};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::auth::{AuthError, Grants, TokenAuthority};
use crate::metrics::SignalingMetrics;
use crate::protocol::{ClientMessage, ErrorCode, ParticipantInfo, ServerMessage, Target, TrackDescription, PROTOCOL_VERSION};
use crate::rate::TokenBucket;
use crate::rooms::{AdmitError, Outbox, Rooms};

/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 4096;

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
}

struct Joined {
    room: String,
    me: ParticipantInfo,
    grants: Grants,
    media: MediaSession,
    own_tracks: HashSet<String>,
}

struct Session {
    ctx: Arc<SignalingContext>,
    outbox: Outbox,
    bucket: TokenBucket,
    violations: u32,
    joined: Option<Joined>,
    media_events: Option<mpsc::UnboundedReceiver<SfuEvent>>,
}

/// Serves one connection until the client leaves, disconnects or is closed for abuse.
/// Returns the close to send, if the server ends it.
pub async fn run_session(ctx: Arc<SignalingContext>, mut inbound: mpsc::Receiver<Inbound>, outbox: Outbox) -> Option<CloseReason> {
    let now = Instant::now();
    let limits = ctx.limits.clone();
    let mut session = Session {
        bucket: TokenBucket::new(now, limits.messages_per_second, limits.message_burst),
        ctx,
        outbox,
        violations: 0,
        joined: None,
        media_events: None,
    };
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let close = loop {
        tokio::select! {
            frame = inbound.recv() => {
                let Some(frame) = frame else { break None };
                last_seen = Instant::now();
                if let Some(close) = session.on_frame(frame).await {
                    break Some(close);
                }
            }
            Some(event) = next_event(&mut session.media_events) => session.on_media_event(event).await,
            _ = ping.tick() => {
                if last_seen.elapsed() > limits.ping_interval * 3 {
                    break Some(CloseReason { code: 1001, reason: "heartbeat timeout".into() });
                }
                session.send(ServerMessage::Ping {}).await;
            }
        }
    };
    session.leave();
    close
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<SfuEvent>>) -> Option<SfuEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 12))
}

fn describe(track: &TrackInfo, muted: bool) -> TrackDescription {
    TrackDescription {
        track_id: track.id.to_string(),
        participant_id: track.publisher.to_string(),
        kind: match track.kind {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        },
        codec: track.codec.mime_type.clone(),
        muted,
    }
}

fn sfu_error_code(err: &SfuError) -> ErrorCode {
    match err {
        SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
        SfuError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
        SfuError::NotAllowed => ErrorCode::Forbidden,
        SfuError::NotNegotiated => ErrorCode::NegotiationState,
        SfuError::UnknownParticipant | SfuError::AlreadyJoined | SfuError::WorkerGone | SfuError::Engine(_) | SfuError::Bind { .. } => {
            ErrorCode::Internal
        }
    }
}

impl Session {
    async fn send(&self, message: ServerMessage) {
        if matches!(message, ServerMessage::Error { .. }) {
            self.ctx.metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // A closed outbox means the transport is gone; the inbound side ends the session.
        let _ = self.outbox.send(message.to_text()).await;
    }

    async fn reject(&mut self, id: Option<Value>, code: ErrorCode, message: impl Into<String>) {
        self.ctx.metrics.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(ServerMessage::error(id, code, message)).await;
    }

    async fn on_frame(&mut self, frame: Inbound) -> Option<CloseReason> {
        if !self.bucket.try_take(Instant::now()) {
            self.violations += 1;
            if self.violations > self.ctx.limits.abuse_threshold {
                return Some(CloseReason { code: 1008, reason: "rate limit exceeded repeatedly".into() });
            }
            self.reject(None, ErrorCode::RateLimited, "too many messages; slow down").await;
            return None;
        }
        let text = match frame {
            Inbound::Text(text) => text,
            Inbound::Binary => {
                self.reject(None, ErrorCode::UnsupportedFrame, "binary frames are not part of the protocol").await;
                return None;
            }
        };
        if text.len() > self.ctx.limits.max_message_bytes {
            let limit = self.ctx.limits.max_message_bytes;
            self.reject(None, ErrorCode::MessageTooLarge, format!("message of {} bytes exceeds {limit}", text.len())).await;
            return None;
        }
        let message = match ClientMessage::parse(&text) {
            Ok(message) => message,
            Err(err) => {
                self.reject(err.id, err.code, err.message).await;
                return None;
            }
        };
        self.ctx.metrics.count_message(message.kind());
        self.dispatch(message).await
    }

    async fn dispatch(&mut self, message: ClientMessage) -> Option<CloseReason> {
        let id = message.id();
        if !matches!(message, ClientMessage::Join { .. } | ClientMessage::Ping { .. } | ClientMessage::Pong { .. }) && self.joined.is_none() {
            self.send(ServerMessage::error(id, ErrorCode::NotJoined, "join a room first")).await;
            return None;
        }
        match message {
            ClientMessage::Join { token, .. } => self.join(id, &token).await,
            ClientMessage::PublishOffer { sdp, .. } => self.publish_offer(id, sdp).await,
            ClientMessage::SubscribeAnswer { sdp, .. } => {
                let result = self.media()?.subscriber_answer(sdp).await;
                self.reply(id, result.map(|()| None)).await;
            }
            ClientMessage::Trickle { target, candidate, sdp_mid, sdp_mline_index, .. } => {
                let role = match target {
                    Target::Publisher => PeerRole::Publisher,
                    Target::Subscriber => PeerRole::Subscriber,
                };
                let result = self.media()?.remote_candidate(role, candidate, sdp_mid, sdp_mline_index).await;
                self.reply(id, result.map(|()| None)).await;
            }
            ClientMessage::Mute { track_id, muted, .. } => self.mute(id, track_id, muted).await,
            ClientMessage::Chat { text, .. } => self.chat(id, text).await,
            ClientMessage::Leave { .. } => {
                self.send(ServerMessage::Ack { id, message_id: None }).await;
                return Some(CloseReason { code: 1000, reason: "left".into() });
            }
            ClientMessage::Ping { .. } => self.send(ServerMessage::Pong { id }).await,
            ClientMessage::Pong { .. } => {}
        }
        None
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

    async fn join(&mut self, id: Option<Value>, token: &str) {
        if self.joined.is_some() {
            return self.send(ServerMessage::error(id, ErrorCode::AlreadyJoined, "already joined")).await;
        }
        let claims = match self.ctx.auth.verify(token) {
            Ok(claims) => claims,
            Err(AuthError::Expired) => return self.send(ServerMessage::error(id, ErrorCode::TokenExpired, "access token expired")).await,
            Err(err) => return self.send(ServerMessage::error(id, ErrorCode::Unauthorized, err.to_string())).await,
        };
        let me = ParticipantInfo { participant_id: random_id("PA_"), identity: claims.sub.clone(), name: claims.name.clone() };
        let participants = match self.ctx.rooms.admit(&claims.room, me.clone(), self.outbox.clone()) {
            Ok(participants) => participants,
            Err(AdmitError::RoomFull) => return self.send(ServerMessage::error(id, ErrorCode::RoomFull, "the room is full")).await,
            Err(AdmitError::TooManyRooms) => {
                return self.send(ServerMessage::error(id, ErrorCode::TooManyRooms, "this node hosts its maximum of rooms")).await
            }
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let grants = MediaGrants { publish: claims.grants.publish, subscribe: claims.grants.subscribe };
        let joined = self.ctx.sfu.join(RoomId::new(claims.room.as_str()), ParticipantId::new(me.participant_id.as_str()), grants, events_tx).await;
        let (media, tracks) = match joined {
            Ok(joined) => joined,
            Err(err) => {
                self.ctx.rooms.remove(&claims.room, &me.participant_id);
                return self.send(ServerMessage::error(id, ErrorCode::Internal, err.to_string())).await;
            }
        };
        info!(room = %claims.room, participant = %me.participant_id, identity = %me.identity, "joined");
        let tracks = tracks.iter().map(|t| describe(t, self.ctx.rooms.is_muted(&claims.room, t.id.as_str()))).collect();
        self.media_events = Some(events_rx);
        self.joined = Some(Joined { room: claims.room.clone(), me: me.clone(), grants: claims.grants, media, own_tracks: HashSet::new() });
        self.send(ServerMessage::Joined {
            id,
            protocol: PROTOCOL_VERSION,
            room: claims.room,
            participant: me,
            participants,
            tracks,
            ice_servers: Vec::new(),
        })
        .await;
    }

    async fn publish_offer(&mut self, id: Option<Value>, sdp: String) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.publish {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant publish")).await;
        }
        match joined.media.publisher_offer(sdp).await {
            Ok(sdp) => self.send(ServerMessage::PublishAnswer { id, sdp }).await,
            Err(err) => self.send(ServerMessage::error(id, sfu_error_code(&err), err.to_string())).await,
        }
    }

    async fn mute(&mut self, id: Option<Value>, track_id: String, muted: bool) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.own_tracks.contains(&track_id) {
            return self.send(ServerMessage::error(id, ErrorCode::UnknownTrack, format!("`{track_id}` is not a track you publish"))).await;
        }
        self.ctx.rooms.set_muted(&joined.room, &joined.me.participant_id, &track_id, muted);
        self.send(ServerMessage::Ack { id, message_id: None }).await;
    }

    async fn chat(&mut self, id: Option<Value>, text: String) {
        let Some(joined) = self.joined.as_ref() else { return };
        if !joined.grants.publish_data {
            return self.send(ServerMessage::error(id, ErrorCode::Forbidden, "the access token does not grant publish_data")).await;
        }
        if text.trim().is_empty() || text.chars().count() > MAX_CHAT_CHARS {
            return self.send(ServerMessage::error(id, ErrorCode::InvalidMessage, format!("chat text must be 1 to {MAX_CHAT_CHARS} characters"))).await;
        }
        let message_id = random_id("MS_");
        let timestamp_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let chat = ServerMessage::Chat {
            message_id: message_id.clone(),
            participant_id: joined.me.participant_id.clone(),
            identity: joined.me.identity.clone(),
            text,
            timestamp_ms,
        };
        self.ctx.rooms.broadcast(&joined.room, &chat);
        self.send(ServerMessage::Ack { id, message_id: Some(message_id) }).await;
    }

    async fn on_media_event(&mut self, event: SfuEvent) {
        let Some(joined) = self.joined.as_mut() else { return };
        let message = match event {
            SfuEvent::TrackPublished(track) => {
                if track.publisher.as_str() == joined.me.participant_id {
                    joined.own_tracks.insert(track.id.to_string());
                }
                ServerMessage::TrackPublished { track: describe(&track, false) }
            }
            SfuEvent::TrackUnpublished(track) => {
                if joined.own_tracks.remove(track.as_str()) {
                    self.ctx.rooms.forget_track(&joined.room, track.as_str());
                }
                ServerMessage::TrackUnpublished { track_id: track.to_string() }
            }
            SfuEvent::SubscriberOffer(sdp) => ServerMessage::SubscribeOffer { sdp },
            SfuEvent::ConnectionFailed => {
                ServerMessage::error(None, ErrorCode::MediaConnectionFailed, "a media connection failed; leave and join again")
            }
        };
        self.send(message).await;
    }

    fn leave(&mut self) {
        if let Some(joined) = self.joined.take() {
            debug!(participant = %joined.me.participant_id, "leaving");
            self.ctx.rooms.remove(&joined.room, &joined.me.participant_id);
            // Dropping the media session takes the participant's media out of the room.
        }
    }
}
