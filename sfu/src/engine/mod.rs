//! The room engine: every room of one media worker, sans-IO.
//!
//! It owns the rooms, their participants, each participant's two connections (the `rtc`
//! engine's peer connections with the worker's own ingress and egress beside them), the
//! tracks, the subscriptions and the forwarding table. Its inputs are a received datagram
//! with its source and local address ([`Engine::handle_datagram`]), a [`Command`] from
//! signaling ([`Engine::handle_command`]) or a deadline passing ([`Engine::handle_timeout`]),
//! each with `now`; [`Engine::flush`] then drains every connection with pending work. Its
//! outputs are datagrams handed to a [`Transmit`], events on each participant's
//! [`SfuEvent`] queue and on the taps, and [`Engine::next_deadline`]. It never reads a clock
//! and never touches a socket: the worker ([`crate::worker`]) does both, and the tests drive
//! it in simulated time.
//!
//! Layout: [`ice`] routes datagrams to connections and decides which sources may speak for
//! one; [`membership`] lets participants and their tracks in and out; [`negotiation`] makes
//! and takes session descriptions; [`rtcp`] handles feedback; [`downlink`] shares each
//! subscriber's estimated downlink among its simulcast tracks and probes it; [`dynacast`]
//! tells publishers which simulcast layers anyone needs; [`viewer`] serves participants that
//! offer their receiving connection themselves (WHEP); [`participant`] holds what the
//! engine keeps per participant; this module ties them to the packet path.

mod downlink;
mod dynacast;
mod ice;
mod membership;
mod negotiation;
mod participant;
mod rtcp;
#[cfg(test)]
mod tests;
mod viewer;
mod warnings;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::egress::Egress;
use crate::feedback;
use crate::forwarder::{Forwarder, ForwarderSettings, Outgoing, View};
use crate::ingress::{Ingress, Taken};
use crate::metrics::{Counter, Counters, Gauges, WorkerMetrics};
use crate::peer::{PeerRole, PeerSettings};
use crate::remote::Remote;
use crate::schedule::first_report;
use crate::speakers;
use crate::tap::{TapEvent, Taps};
use crate::{
    fault_kind, MediaGrants, MediaKind, ParticipantId, ParticipantKey, RoomId, SfuError, SfuEvent, TrackId, TrackInfo, TrackSource,
};
use ice::{IceRoutes, Route};
use participant::{peer_of, Participant, PeerKey, Subscription, MAX_EARLY_CHECKS};
use warnings::WarningBudget;

/// Who joins a room's media, and where its events go.
pub(crate) struct Joining {
    pub room: RoomId,
    pub participant: ParticipantId,
    /// The identity of its access token.
    pub identity: String,
    pub grants: MediaGrants,
    pub events: mpsc::UnboundedSender<SfuEvent>,
}

/// A request from signaling to the engine that owns the room.
pub(crate) enum Command {
    Join {
        joining: Joining,
        reply: oneshot::Sender<Result<Vec<TrackInfo>, SfuError>>,
    },
    PublisherOffer {
        participant: ParticipantId,
        sdp: String,
        /// What each sending section (by mid) captures.
        sources: HashMap<String, TrackSource>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    SubscriberAnswer {
        participant: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// A viewer's offer of its receiving connection, showing `source` (an identity; `None`:
    /// the room's first publisher).
    ViewerOffer {
        participant: ParticipantId,
        sdp: String,
        source: Option<String>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    RemoteCandidate {
        participant: ParticipantId,
        role: PeerRole,
        candidate: RTCIceCandidateInit,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Leave {
        participant: ParticipantId,
    },
    AttachTap {
        room: RoomId,
        id: u64,
        sink: mpsc::UnboundedSender<TapEvent>,
        queued: Arc<AtomicUsize>,
        capacity: usize,
        reply: oneshot::Sender<()>,
    },
    DetachTap {
        room: RoomId,
        tap: u64,
    },
    TapKeyframeRequest {
        track: TrackId,
    },
    SetMuted {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    /// How a subscriber shows one of the tracks it receives.
    SetView {
        participant: ParticipantId,
        track: TrackId,
        view: View,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
}

/// Where the engine's datagrams go: the worker's outbox and socket (or TCP streams), or a
/// test's list.
pub(crate) trait Transmit {
    /// Sends (or queues) one datagram to `to`.
    fn transmit(&mut self, datagram: &[u8], to: Remote);
}

/// What an engine needs to run.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// Shared settings of its connections.
    pub peers: PeerSettings,
    pub forwarder: ForwarderSettings,
    /// Most tracks one participant may publish.
    pub max_tracks: usize,
}

/// The rounds in which the engine ranks each room's speakers.
struct SpeakerRounds {
    next: Instant,
    /// Who each room was last told speaks, loudest first.
    told: HashMap<RoomId, Vec<ParticipantKey>>,
}

/// How long the engine may sleep when nothing asks for a deadline.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// Every room of one worker.
pub(crate) struct Engine {
    settings: EngineSettings,
    counters: Counters,
    /// The wall clock at one instant, from which reports' NTP times are derived.
    clock: (Instant, SystemTime),
    participants: HashMap<ParticipantKey, Participant>,
    /// Signaling's ids of the participants, for its commands.
    keys: HashMap<ParticipantId, ParticipantKey>,
    /// Media membership: the one record of who is in which of the worker's rooms.
    rooms: HashMap<RoomId, Vec<ParticipantKey>>,
    ice: IceRoutes,
    /// The fan-out table, and the one record of every subscription.
    forwarder: Forwarder<Subscription>,
    /// Peers with input since they were last drained.
    dirty: HashSet<PeerKey>,
    outgoing: Vec<Outgoing>,
    /// Participants whose connection panicked inside the engine since the last flush.
    poisoned: Vec<ParticipantKey>,
    taps: Taps,
    /// Every random choice the engine makes (ICE credentials, SSRCs, report phases): from
    /// the OS in the worker, seeded in tests.
    rng: StdRng,
    warnings: WarningBudget,
    /// Each room's speakers as last told, and when they are next ranked.
    speakers: SpeakerRounds,
    /// The earliest deadline of all, kept between turns: `None` once something may have
    /// moved a deadline later (a timeout, a command, an event), so the next
    /// [`Engine::next_deadline`] walks every connection again. The packet path only brings
    /// deadlines forward, and does so here ([`Engine::sooner`]).
    wakeup: Option<Instant>,
    /// Subscribers whose downlink probe is being sent.
    probing: Vec<ParticipantKey>,
    /// What each simulcast track's publisher was last told to send (dynacast).
    demand: HashMap<TrackId, dynacast::Demand>,
}

impl Engine {
    /// An engine with no rooms, counting on from `counters`; `wall_clock` is the wall-clock
    /// time at `now`, `rng` a cryptographic generator.
    pub(crate) fn new(settings: EngineSettings, counters: Counters, now: Instant, wall_clock: SystemTime, rng: StdRng) -> Self {
        let forwarder = Forwarder::new(settings.forwarder.clone());
        Self {
            settings,
            counters,
            clock: (now, wall_clock),
            participants: HashMap::new(),
            keys: HashMap::new(),
            rooms: HashMap::new(),
            ice: IceRoutes::default(),
            forwarder,
            dirty: HashSet::new(),
            outgoing: Vec::new(),
            poisoned: Vec::new(),
            taps: Taps::default(),
            rng,
            warnings: WarningBudget::default(),
            speakers: SpeakerRounds { next: now + speakers::ROUND, told: HashMap::new() },
            wakeup: None,
            probing: Vec::new(),
            demand: HashMap::new(),
        }
    }

    /// The wall-clock time at `now`.
    fn wall_clock(&self, now: Instant) -> SystemTime {
        let (at, wall_clock) = self.clock;
        match now.checked_duration_since(at) {
            Some(later) => wall_clock + later,
            None => wall_clock - at.duration_since(now),
        }
    }

    /// When the engine next needs [`Engine::handle_timeout`], at most a second from `now`.
    pub(crate) fn next_deadline(&mut self, now: Instant) -> Instant {
        if let Some(at) = self.wakeup {
            return at;
        }
        let at = self.earliest_deadline(now);
        self.wakeup = Some(at);
        at
    }

    /// Every connection's deadlines and the forwarder's, walked: the earliest, or a second
    /// from `now`.
    fn earliest_deadline(&self, now: Instant) -> Instant {
        self.participants
            .values()
            .flat_map(|p| [p.publisher.as_ref(), p.subscriber.as_ref()])
            .flatten()
            .flat_map(|peer| {
                [peer.deadline, peer.egress.as_ref().and_then(Egress::deadline), peer.ingress.as_ref().and_then(Ingress::deadline)]
            })
            .flatten()
            .chain(self.forwarder.keyframe_deadline())
            .chain((!self.rooms.is_empty()).then_some(self.speakers.next))
            .fold(now + IDLE_WAKEUP, Instant::min)
    }

    /// Brings the kept deadline forward to `deadline`, which the packet path just set.
    fn sooner(&mut self, deadline: Option<Instant>) {
        if let (Some(at), Some(deadline)) = (self.wakeup.as_mut(), deadline) {
            *at = (*at).min(deadline);
        }
    }

    /// Forgets the kept deadline: something may have moved one later, or forward where
    /// [`Engine::sooner`] does not see it.
    fn forget_deadline(&mut self) {
        self.wakeup = None;
    }

    /// Runs what is due at `now`: reports and feedback, deferred keyframe requests, and the
    /// connections' own timers.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.forget_deadline();
        self.send_due_feedback(now);
        if now >= self.speakers.next {
            self.rank_speakers(now);
            self.tell_layers_needed(now);
        }
        let mut requests = Vec::new();
        self.forwarder.due_keyframe_requests(now, &mut requests);
        for request in requests {
            self.send_keyframe_request(now, request);
        }
        for (id, participant) in &mut self.participants {
            for role in [PeerRole::Publisher, PeerRole::Subscriber] {
                let Some(peer) = participant.peer_mut(role) else { continue };
                if peer.deadline.is_none_or(|d| d > now) {
                    continue;
                }
                match isolate(|| peer.pc.handle_timeout(now)) {
                    Some(Ok(())) => {}
                    Some(Err(err)) => debug!(participant = %id, ?role, %err, "timeout handling failed"),
                    None => self.poisoned.push(*id),
                }
                self.dirty.insert((*id, role));
            }
        }
    }

    /// Takes one datagram received from `source` on the local address `local` (the
    /// candidate it was sent to). A publisher's media of a known stream is forwarded at
    /// once; anything else goes to its connection, drained by the next [`Engine::flush`].
    /// Returns whether it came from a connection: an authenticated check, or a source one
    /// bound.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        payload: &[u8],
        source: Remote,
        local: SocketAddr,
        out: &mut dyn Transmit,
    ) -> bool {
        let key = match self.ice.route(payload, source) {
            Route::Check { key, nominated } => {
                if nominated {
                    // Media goes to the pair the client nominated, and only there.
                    if let Some(egress) = peer_of(&mut self.participants, &key).and_then(|p| p.egress.as_mut()) {
                        egress.set_remote(source);
                    }
                }
                key
            }
            Route::Bound(key) => key,
            Route::Forged => {
                self.counters.add(Counter::ForgedChecks, 1);
                return false;
            }
            Route::Unknown => {
                self.counters.add(Counter::Unroutable, 1);
                return false;
            }
        };
        let Some(participant) = self.participants.get_mut(&key.0) else { return true };
        let Some(peer) = participant.peer_mut(key.1) else { return true };
        let mut message = BytesMut::from(payload);
        if let Some(egress) = peer.egress.as_mut().filter(|e| e.is_started() && feedback::is_rtcp(payload)) {
            // A subscriber's RTCP, read here rather than through the engine.
            match egress.open_rtcp(&mut message) {
                Ok(compound) => {
                    let len = compound.len();
                    self.subscriber_feedback(now, key.0, &message[..len], out);
                }
                Err(err) => {
                    self.counters.add(Counter::SrtpRefused, 1);
                    debug!(participant = %key.0, %err, "feedback refused");
                }
            }
            return true;
        }
        let taken = match peer.ingress.as_mut() {
            Some(ingress) => ingress.take(now, message),
            None => Taken::Engine(message),
        };
        let message = match taken {
            Taken::Engine(message) => message,
            Taken::Media(track, packet) => {
                let feedback_due = peer.ingress.as_ref().and_then(Ingress::deadline);
                let room = (!self.taps.is_empty()).then(|| participant.room.clone());
                self.sooner(feedback_due);
                self.forward_published(now, room.as_ref(), &track, packet, out);
                return true;
            }
            Taken::Padding => {
                let feedback_due = peer.ingress.as_ref().and_then(Ingress::deadline);
                self.sooner(feedback_due);
                return true;
            }
            Taken::Refused(err) => {
                self.counters.add(Counter::SrtpRefused, 1);
                debug!(participant = %key.0, %err, "media refused");
                return true;
            }
        };
        let transport = TransportContext { local_addr: local, peer_addr: source.addr(), ecn: None, transport_protocol: source.protocol() };
        let input = TaggedBytesMut { now, transport, message };
        if peer.pc.remote_description().is_none() {
            if crate::stun::is_stun(&input.message) && peer.early_checks.len() < MAX_EARLY_CHECKS {
                peer.early_checks.push(input);
            }
            return true;
        }
        match isolate(|| peer.pc.handle_read(input)) {
            Some(Ok(())) => {}
            Some(Err(err)) => debug!(participant = %key.0, role = ?key.1, %err, "datagram rejected"),
            None => self.poisoned.push(key.0),
        }
        self.dirty.insert(key);
        true
    }

    /// Drains every connection with pending work until none has any, sends the downlink
    /// probes' padding that is due, then takes out of their rooms the participants whose
    /// connection panicked.
    pub(crate) fn flush(&mut self, now: Instant, out: &mut dyn Transmit) {
        while let Some(key) = self.dirty.iter().next().cloned() {
            self.dirty.remove(&key);
            self.drain(now, &key, out);
        }
        self.send_probe_padding(now, out);
        self.remove_poisoned(now, out);
    }

    fn drain(&mut self, now: Instant, key: &PeerKey, out: &mut dyn Transmit) {
        let Some(peer) = peer_of(&mut self.participants, key) else { return };
        let polled = isolate(|| {
            let mut messages = Vec::new();
            while let Some(message) = peer.pc.poll_read() {
                messages.push(message);
            }
            let mut events = Vec::new();
            while let Some(event) = peer.pc.poll_event() {
                events.push(event);
            }
            (messages, events)
        });
        let Some((messages, events)) = polled else { return self.poisoned.push(key.0) };
        if !events.is_empty() {
            // Tracks opened or closed, media started: deadlines of all kinds moved.
            self.forget_deadline();
        }
        for event in events {
            self.handle_event(now, key, event);
        }
        for message in messages {
            self.handle_message(key, message, out);
        }
        let Some(peer) = peer_of(&mut self.participants, key) else { return };
        let flushed = isolate(|| {
            while let Some(written) = peer.pc.poll_write() {
                out.transmit(&written.message, Remote::peer_of(&written.transport));
            }
            peer.pc.poll_timeout()
        });
        match flushed {
            Some(deadline) => {
                peer.deadline = deadline;
                self.sooner(deadline);
            }
            None => self.poisoned.push(key.0),
        }
    }

    /// Takes out of the room every participant whose connection panicked inside the
    /// engine: its state can no longer be trusted, the rest of the worker's rooms can.
    fn remove_poisoned(&mut self, now: Instant, out: &mut dyn Transmit) {
        for key in std::mem::take(&mut self.poisoned) {
            if let Some(participant) = self.participants.get(&key) {
                tracing::error!(participant = %participant.id, "peer connection panicked in the engine; participant removed");
                let _ = participant.events.send(SfuEvent::ConnectionFailed);
            }
            self.leave(now, key, out);
        }
    }

    fn handle_event(&mut self, now: Instant, key: &PeerKey, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) if key.1 == PeerRole::Publisher => {
                self.publish_track(now, key.0, init.track_id, init.receiver_id, init.ssrc, init.rid);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(media_track_id)) if key.1 == PeerRole::Publisher => {
                self.unpublish(now, key.0, &media_track_id);
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(participant = %key.0, role = ?key.1, %state, "connection state");
                if state == RTCPeerConnectionState::Connected {
                    self.start_media(now, key);
                }
                if state == RTCPeerConnectionState::Failed {
                    if let Some(p) = self.participants.get(&key.0) {
                        let _ = p.events.send(SfuEvent::ConnectionFailed);
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_message(&mut self, key: &PeerKey, message: TaggedRTCMessage, out: &mut dyn Transmit) {
        let now = message.now;
        match (key.1, message.message) {
            (PeerRole::Publisher, RTCMessage::RtpPacket(media_track_id, packet)) => {
                let Some(participant) = self.participants.get_mut(&key.0) else { return };
                let Some(track) = participant.published.get(&media_track_id).map(|p| p.track) else { return };
                let mut feedback_due = None;
                if let Some(ingress) = participant.publisher.as_mut().and_then(|p| p.ingress.as_mut()) {
                    ingress.received(now, &packet);
                    feedback_due = ingress.deadline();
                }
                let room = (!self.taps.is_empty()).then(|| participant.room.clone());
                self.sooner(feedback_due);
                self.forward_published(now, room.as_ref(), &track, packet, out);
            }
            (PeerRole::Publisher, RTCMessage::RtcpPacket(media_track_id, packets)) => {
                self.publisher_rtcp(now, key.0, &media_track_id, &packets);
            }
            _ => {}
        }
    }

    /// Forwards a publisher's packet of `track` to the track's subscribers, and to the taps of
    /// `room`, which the caller clones only while the worker has taps.
    fn forward_published(
        &mut self,
        now: Instant,
        room: Option<&RoomId>,
        track: &TrackId,
        packet: rtc::rtp::packet::Packet,
        out: &mut dyn Transmit,
    ) {
        if let Some(room) = room.filter(|_| self.forwarder.is_tapped(now, track, packet.header.ssrc, &packet.payload)) {
            self.taps.send_rtp(&mut self.counters, room, track, now, &packet);
        }
        self.counters.add(Counter::PacketsIn, 1);
        self.counters.add(Counter::BytesIn, packet.payload.len() as u64);
        let mut outgoing = std::mem::take(&mut self.outgoing);
        self.forwarder.forward(now, track, packet, &mut outgoing);
        self.send_outgoing(now, &mut outgoing, out);
        self.outgoing = outgoing;
        while let Some(request) = self.forwarder.take_request() {
            self.send_keyframe_request(now, request);
        }
    }

    /// Protects rewritten packets for their subscribers and transmits them.
    fn send_outgoing(&mut self, now: Instant, outgoing: &mut Vec<Outgoing>, out: &mut dyn Transmit) {
        for packet in outgoing.drain(..) {
            let Some(subscriber) = self.participants.get_mut(&packet.subscriber) else { continue };
            let Some(egress) = subscriber.subscriber.as_mut().and_then(|peer| peer.egress.as_mut()) else { continue };
            match egress.protect(now, &packet.packet, packet.patch.as_ref()) {
                Ok((datagram, to)) => {
                    out.transmit(datagram, to);
                    if packet.rtx {
                        self.counters.add(Counter::RtxPackets, 1);
                    }
                    self.counters.add(Counter::PacketsOut, 1);
                    self.counters.add(Counter::BytesOut, packet.packet.payload.len() as u64);
                }
                Err(err) => debug!(subscriber = %packet.subscriber, track = %packet.track, %err, "forward failed"),
            }
        }
    }

    /// Keys a subscriber connection's egress, or a publisher connection's ingress, once DTLS
    /// is done.
    fn start_media(&mut self, now: Instant, key: &PeerKey) {
        let Some(peer) = peer_of(&mut self.participants, key) else { return };
        if let Some(egress) = peer.egress.as_mut().filter(|e| !e.is_started()) {
            if let Err(err) = egress.start(now, &mut peer.pc, first_report(now, &mut self.rng)) {
                if self.warnings.allow(now) {
                    warn!(participant = %key.0, %err, "subscriber media cannot be protected");
                }
            }
        }
        if let Some(ingress) = peer.ingress.as_mut().filter(|i| !i.is_started()) {
            // Until it is keyed the engine opens the publisher's media, so it still flows.
            if let Err(err) = ingress.start(now, &mut peer.pc, first_report(now, &mut self.rng)) {
                if self.warnings.allow(now) {
                    warn!(participant = %key.0, %err, "publisher media left to the engine");
                }
            }
        }
    }

    /// Handles one command from signaling. Engine code that panics on what a client sent
    /// takes that participant out of the room (as a panic on one of its datagrams does), and
    /// the request gets [`SfuError::Engine`].
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command, out: &mut dyn Transmit) {
        self.forget_deadline();
        match command {
            Command::Join { joining, reply } => {
                if self.keys.contains_key(&joining.participant) {
                    let _ = reply.send(Err(SfuError::AlreadyJoined));
                    return;
                }
                let key = ParticipantKey::next();
                self.keys.insert(joining.participant.clone(), key);
                let _ = reply.send(self.isolated(key, |engine| engine.join(now, key, joining)));
            }
            Command::PublisherOffer { participant, sdp, sources, reply } => {
                let result =
                    self.known(&participant).and_then(|key| self.isolated(key, |engine| engine.publisher_offer(now, key, sdp, sources)));
                let _ = reply.send(result);
            }
            Command::SubscriberAnswer { participant, sdp, reply } => {
                let result = self.known(&participant).and_then(|key| self.isolated(key, |engine| engine.subscriber_answer(now, key, sdp)));
                let _ = reply.send(result);
            }
            Command::ViewerOffer { participant, sdp, source, reply } => {
                let result =
                    self.known(&participant).and_then(|key| self.isolated(key, |engine| engine.viewer_offer(now, key, sdp, source)));
                let _ = reply.send(result);
            }
            Command::RemoteCandidate { participant, role, candidate, reply } => {
                let result = self.known(&participant).and_then(|key| {
                    self.isolated(key, |engine| {
                        let peer = engine.participants.get_mut(&key).and_then(|p| p.peer_mut(role)).ok_or(SfuError::NotNegotiated)?;
                        peer.pc
                            .add_remote_candidate(candidate)
                            .map_err(|e| SfuError::InvalidCandidate(format!("the candidate cannot be applied ({})", fault_kind(&e))))
                    })
                });
                let _ = reply.send(result);
            }
            Command::Leave { participant } => {
                if let Ok(key) = self.known(&participant) {
                    self.leave(now, key, out);
                }
            }
            Command::AttachTap { room, id, sink, queued, capacity, reply } => {
                let published = self.rooms.get(&room).into_iter().flatten().filter_map(|m| self.participants.get(m));
                for published in published.flat_map(|p| p.published.values()) {
                    let _ = sink.send(TapEvent::TrackPublished(published.info.clone()));
                }
                let _ = sink.send(TapEvent::Attached);
                self.taps.attach(room, id, sink, queued, capacity);
                let _ = reply.send(());
            }
            Command::DetachTap { room, tap } => self.taps.detach(&room, tap),
            Command::TapKeyframeRequest { track } => {
                if let Some(request) = self.forwarder.keyframe_request(now, &track, None) {
                    self.send_keyframe_request(now, request);
                }
            }
            Command::SetMuted { participant, track, muted } => {
                // Only the track's publisher (or signaling on an admin's behalf, through it).
                let publishes = self
                    .known(&participant)
                    .is_ok_and(|key| self.participants.get(&key).is_some_and(|p| p.published.values().any(|t| t.track == track)));
                if let Some(request) = publishes.then(|| self.forwarder.set_muted(now, &track, muted)).flatten() {
                    self.send_keyframe_request(now, request);
                }
            }
            Command::SetView { participant, track, view, reply } => {
                let result = self.known(&participant).and_then(|key| {
                    let request = self.forwarder.set_view(now, &track, &key, view).map_err(|_| SfuError::NotSubscribed)?;
                    if let Some(request) = request {
                        self.send_keyframe_request(now, request);
                    }
                    // Its downlink is shared anew at once, by what it now shows.
                    if let Some(subscriber) = self.participants.get_mut(&key) {
                        subscriber.allocated = None;
                    }
                    self.allocate(now, key);
                    Ok(())
                });
                let _ = reply.send(result);
            }
        }
    }

    /// Ranks every room's speakers by their audio tracks' loudness and tells the rooms whose
    /// speakers changed (at most once a [`speakers::ROUND`]).
    fn rank_speakers(&mut self, now: Instant) {
        self.speakers.next = now + speakers::ROUND;
        self.speakers.told.retain(|room, _| self.rooms.contains_key(room));
        for (room, members) in &self.rooms {
            let mut speaking: Vec<(ParticipantKey, f32)> = members
                .iter()
                .filter_map(|m| self.participants.get(m).map(|p| (*m, p)))
                .map(|(m, p)| {
                    let audio = p.published.values().filter(|t| t.info.kind == MediaKind::Audio);
                    (m, audio.map(|t| self.forwarder.loudness(&t.track, now)).fold(0.0, f32::max))
                })
                .filter(|(_, loudness)| *loudness >= speakers::SPEAKING)
                .collect();
            speaking.sort_by(|a, b| b.1.total_cmp(&a.1));
            let order: Vec<ParticipantKey> = speaking.iter().map(|(m, _)| *m).collect();
            let told = self.speakers.told.entry(room.clone()).or_default();
            if *told == order {
                continue;
            }
            *told = order;
            let named: Vec<(ParticipantId, f32)> =
                speaking.iter().filter_map(|(m, loudness)| self.participants.get(m).map(|p| (p.id.clone(), *loudness))).collect();
            for member in members.iter().filter_map(|m| self.participants.get(m)) {
                let _ = member.events.send(SfuEvent::ActiveSpeakers(named.clone()));
            }
        }
    }

    /// The key of the participant signaling knows as `id`.
    pub(crate) fn known(&self, id: &ParticipantId) -> Result<ParticipantKey, SfuError> {
        self.keys.get(id).copied().ok_or(SfuError::UnknownParticipant)
    }

    /// Runs `f` for a participant's request; a panic poisons the participant (removed at the
    /// next flush) and fails the request.
    fn isolated<T>(&mut self, participant: ParticipantKey, f: impl FnOnce(&mut Self) -> Result<T, SfuError>) -> Result<T, SfuError> {
        match isolate(|| f(self)) {
            Some(result) => result,
            None => {
                self.poisoned.push(participant);
                Err(SfuError::Engine("the request failed inside the media engine".to_owned()))
            }
        }
    }

    /// The clients' TCP streams no connection is bound to any more (it closed, or the
    /// stream was pushed out by newer sources), for the worker to close.
    pub(crate) fn take_unbound_streams(&mut self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.ice.take_unbound_streams()
    }

    /// What the engine counted so far.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Publishes the engine's counts and how many rooms, participants and tracks it holds.
    pub(crate) fn publish_metrics(&self, slot: &WorkerMetrics) {
        let gauges = Gauges { rooms: self.rooms.len(), participants: self.participants.len(), tracks: self.forwarder.track_count() };
        slot.publish(&self.counters, gauges);
    }

    /// Gives up on every room after a panic that escaped isolation: each participant hears
    /// its media connection failed.
    pub(crate) fn abandon(self) {
        for participant in self.participants.values() {
            let _ = participant.events.send(SfuEvent::ConnectionFailed);
        }
    }
}

/// Runs engine code, turning a panic (a bug in the engine reached by hostile input, say)
/// into `None` instead of the end of the worker thread. Free on the path that does not
/// panic.
fn isolate<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}
