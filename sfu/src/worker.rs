//! A media worker: one thread, one UDP port, and every room assigned to it.
//!
//! The worker owns its rooms' peer connections and forwarding table outright; signaling talks
//! to it only through [`Command`]s and hears back through [`SfuEvent`]s, so nothing on the
//! packet path takes a lock. Datagrams are demultiplexed by the ICE ufrag of STUN binding
//! requests, then by source address.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiver, RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::TRANSPORT_CC_URI;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::egress::Egress;
use crate::forwarder::{Forwarder, ForwarderSettings, KeyframeRequest, MediaKind, Negotiated, Outgoing, RtxStream};
use crate::ingress::{Ingress, Taken};
use crate::mailbox::{Delivery, Inbox};
use crate::metrics::SfuMetrics;
use crate::outbox::Outbox;
use crate::peer::{build_peer, PeerRole, PeerSettings};
use crate::round_trip;
use crate::socket::MediaSocket;
use crate::tap::{TapEvent, Taps};
use crate::{codec, stun, MediaGrants, ParticipantId, RoomId, SfuError, SfuEvent, TrackId, TrackInfo};

/// A request from signaling to the worker that owns the room.
pub(crate) enum Command {
    Join {
        room: RoomId,
        participant: ParticipantId,
        grants: MediaGrants,
        events: mpsc::UnboundedSender<SfuEvent>,
        reply: oneshot::Sender<Result<Vec<TrackInfo>, SfuError>>,
    },
    PublisherOffer {
        participant: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    SubscriberAnswer {
        participant: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
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
}

type PeerKey = (ParticipantId, PeerRole);

/// One of a participant's connections, with the deadline it last asked for.
struct Peer {
    pc: RTCPeerConnection,
    ufrag: String,
    deadline: Option<Instant>,
    /// Connectivity checks that came before the remote description (the client starts
    /// checking as soon as it has answered, and its answer travels the slower signaling
    /// path): handed to the engine once the answer is set, instead of leaving the client
    /// to retry a check that went unanswered.
    early_checks: Vec<TaggedBytesMut>,
    /// A subscriber connection's media send side.
    egress: Option<Egress>,
    /// A publisher connection's media receive side.
    ingress: Option<Ingress>,
}

/// Early connectivity checks kept per connection.
const MAX_EARLY_CHECKS: usize = 8;

/// A track this participant publishes.
struct Published {
    track: TrackId,
    receiver: RTCRtpReceiverId,
    info: TrackInfo,
}

/// Where the server's offers on the subscriber connection stand.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Negotiation {
    Stable,
    /// An offer is out; `again` means tracks changed since and another offer must follow.
    AwaitingAnswer {
        again: bool,
    },
}

struct Participant {
    room: RoomId,
    grants: MediaGrants,
    events: mpsc::UnboundedSender<SfuEvent>,
    /// Boxed: a connection is several kilobytes, and the participants map keeps spare slots.
    publisher: Option<Box<Peer>>,
    subscriber: Option<Box<Peer>>,
    /// By the publisher connection's media track id.
    published: HashMap<String, Published>,
    subscriptions: HashMap<TrackId, Subscription>,
    negotiation: Negotiation,
}

/// A published track sent on this participant's subscriber connection.
struct Subscription {
    sender: RTCRtpSenderId,
    /// The SSRC the subscriber receives the track on.
    ssrc: u32,
    /// The publisher's codec, to find its payload type in the subscriber's answer.
    codec: RTCRtpCodec,
    kind: MediaKind,
    /// Whether its m-line offers every codec of its kind (see `Worker::subscribe`).
    all_codecs: bool,
}

impl Participant {
    fn peer_mut(&mut self, role: PeerRole) -> Option<&mut Peer> {
        match role {
            PeerRole::Publisher => self.publisher.as_deref_mut(),
            PeerRole::Subscriber => self.subscriber.as_deref_mut(),
        }
    }
}

/// What a worker needs to run.
pub(crate) struct WorkerSetup {
    pub index: usize,
    pub socket: MediaSocket,
    /// Shared settings of the worker's connections.
    pub peers: PeerSettings,
    pub forwarder: ForwarderSettings,
    pub metrics: Arc<SfuMetrics>,
}

pub(crate) struct Worker {
    index: usize,
    socket: MediaSocket,
    peers: PeerSettings,
    metrics: Arc<SfuMetrics>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Vec<ParticipantId>>,
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    forwarder: Forwarder,
    /// Peers with input since they were last drained.
    dirty: HashSet<PeerKey>,
    outgoing: Vec<Outgoing>,
    /// Protected datagrams held until the batch is handled, then sent in trains.
    outbox: Outbox,
    /// Participants whose connection panicked inside the engine since the last flush.
    poisoned: Vec<ParticipantId>,
    taps: Taps,
}

/// How long a loop may sleep when no connection asks for a deadline.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

impl Worker {
    pub(crate) fn new(setup: WorkerSetup) -> Self {
        Self {
            index: setup.index,
            socket: setup.socket,
            peers: setup.peers,
            metrics: setup.metrics,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            forwarder: Forwarder::new(setup.forwarder),
            dirty: HashSet::new(),
            outgoing: Vec::new(),
            outbox: Outbox::default(),
            poisoned: Vec::new(),
            taps: Taps::default(),
        }
    }

    /// Runs on the calling thread until every [`crate::mailbox::Mailbox`] is gone.
    pub(crate) fn run(mut self, inbox: Inbox) {
        info!(worker = self.index, addr = %self.socket.local_addr(), "media worker started");
        loop {
            let deadline = self.next_deadline();
            let ready = match self.socket.wait(&inbox, deadline.saturating_duration_since(Instant::now())) {
                Ok(ready) => ready,
                Err(err) => {
                    warn!(worker = self.index, %err, "media worker cannot wait for its socket");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if ready.commands && !self.handle_commands(&inbox) {
                break;
            }
            if ready.datagrams {
                self.receive_batch();
            }
            let now = Instant::now();
            if now >= deadline {
                self.handle_timeouts(now);
            }
            self.flush();
            self.send_outbox();
            self.remove_poisoned(Instant::now());
        }
        info!(worker = self.index, "media worker stopped");
    }

    /// Handles every queued command; `false` once every mailbox is gone.
    fn handle_commands(&mut self, inbox: &Inbox) -> bool {
        inbox.silence();
        loop {
            match inbox.next() {
                Delivery::Command(command) => self.handle_command(command),
                Delivery::Empty => return true,
                Delivery::Closed => return false,
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let idle = Instant::now() + IDLE_WAKEUP;
        self.participants
            .values()
            .flat_map(|p| [p.publisher.as_ref(), p.subscriber.as_ref()])
            .flatten()
            .flat_map(|peer| {
                [peer.deadline, peer.egress.as_ref().and_then(Egress::deadline), peer.ingress.as_ref().and_then(Ingress::deadline)]
            })
            .flatten()
            .fold(idle, Instant::min)
    }

    fn handle_timeouts(&mut self, now: Instant) {
        let wall_clock = SystemTime::now();
        for (id, participant) in &mut self.participants {
            for role in [PeerRole::Publisher, PeerRole::Subscriber] {
                let Some(peer) = participant.peer_mut(role) else { continue };
                let mut feedback = peer.egress.as_mut().and_then(|e| e.due_reports(now, wall_clock)).unwrap_or_default();
                if let Some(ingress) = peer.ingress.as_mut().filter(|i| i.deadline().is_some_and(|due| due <= now)) {
                    let nacked = ingress.due_feedback(now, &mut feedback);
                    SfuMetrics::add(&self.metrics.publisher_nacks, nacked as u64);
                }
                if !feedback.is_empty() {
                    let message = RTCMessage::RtcpPacket(String::new(), feedback);
                    match isolate(|| peer.pc.handle_write(TaggedRTCMessage { now, message })) {
                        Some(Ok(())) => {}
                        Some(Err(err)) => debug!(participant = %id, ?role, %err, "RTCP not sent"),
                        None => self.poisoned.push(id.clone()),
                    }
                    self.dirty.insert((id.clone(), role));
                }
                if peer.deadline.is_some_and(|d| d <= now) {
                    match isolate(|| peer.pc.handle_timeout(now)) {
                        Some(Ok(())) => {}
                        Some(Err(err)) => debug!(participant = %id, ?role, %err, "timeout handling failed"),
                        None => self.poisoned.push(id.clone()),
                    }
                    self.dirty.insert((id.clone(), role));
                }
            }
        }
    }

    fn receive_batch(&mut self) {
        let received = match self.socket.recv_batch() {
            Ok(received) => received,
            Err(err) => return warn!(worker = self.index, %err, "media socket receive failed"),
        };
        let now = Instant::now();
        for index in 0..received {
            let Some(datagram) = self.socket.datagram(index) else { continue };
            let (message, peer_addr, local_addr) = (BytesMut::from(datagram.payload), datagram.peer, datagram.local);
            let Some(key) = self.route(&message, peer_addr) else {
                SfuMetrics::add(&self.metrics.unroutable_datagrams, 1);
                continue;
            };
            let Some(participant) = self.participants.get_mut(&key.0) else { continue };
            let Some(peer) = participant.peer_mut(key.1) else { continue };
            // A publisher's media of a known stream is opened here, past the engine.
            let taken = match peer.ingress.as_mut() {
                Some(ingress) => ingress.take(now, message),
                None => Taken::Engine(message),
            };
            let message = match taken {
                Taken::Engine(message) => message,
                Taken::Media(track, packet) => {
                    let room = participant.room.clone();
                    self.forward_published(now, &room, &track, packet);
                    continue;
                }
                Taken::Refused(err) => {
                    SfuMetrics::add(&self.metrics.srtp_refused, 1);
                    debug!(participant = %key.0, %err, "media refused");
                    continue;
                }
            };
            let input = TaggedBytesMut {
                now,
                transport: TransportContext { local_addr, peer_addr, ecn: None, transport_protocol: TransportProtocol::UDP },
                message,
            };
            if peer.pc.remote_description().is_none() {
                if stun::local_ufrag(&input.message).is_some() && peer.early_checks.len() < MAX_EARLY_CHECKS {
                    peer.early_checks.push(input);
                }
                continue;
            }
            // STUN, by RFC 7983's first byte; everything else comes from where the client sends.
            let from_client = (input.message.first().is_some_and(|&b| b > 3)).then_some(peer_addr);
            match isolate(|| peer.pc.handle_read(input)) {
                Some(Ok(())) => {
                    if let (Some(addr), Some(egress)) = (from_client, peer.egress.as_mut()) {
                        egress.set_remote(addr);
                    }
                }
                Some(Err(err)) => debug!(participant = %key.0, role = ?key.1, %err, "datagram rejected"),
                None => self.poisoned.push(key.0.clone()),
            }
            self.dirty.insert(key);
        }
    }

    /// Finds the connection a datagram belongs to: STUN by ufrag (learning the source
    /// address), everything else by source address.
    fn route(&mut self, datagram: &[u8], from: SocketAddr) -> Option<PeerKey> {
        if let Some(ufrag) = stun::local_ufrag(datagram) {
            let key = self.by_ufrag.get(ufrag)?.clone();
            self.by_addr.insert(from, key.clone());
            return Some(key);
        }
        self.by_addr.get(&from).cloned()
    }

    /// Drains every dirty connection until no connection has pending work.
    fn flush(&mut self) {
        while let Some(key) = self.dirty.iter().next().cloned() {
            self.dirty.remove(&key);
            self.drain(&key);
        }
    }

    fn drain(&mut self, key: &PeerKey) {
        let now = Instant::now();
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
        let Some((messages, events)) = polled else { return self.poisoned.push(key.0.clone()) };
        for event in events {
            self.handle_event(now, key, event);
        }
        for message in messages {
            self.handle_message(key, message);
        }
        let Some(peer) = peer_of(&mut self.participants, key) else { return };
        let socket = &self.socket;
        let flushed = isolate(|| {
            while let Some(out) = peer.pc.poll_write() {
                socket.send(&out.message, out.transport.peer_addr);
            }
            peer.pc.poll_timeout()
        });
        match flushed {
            Some(deadline) => peer.deadline = deadline,
            None => self.poisoned.push(key.0.clone()),
        }
    }

    /// Takes out of the room every participant whose connection panicked inside the
    /// engine: its state can no longer be trusted, the rest of the worker's rooms can.
    fn remove_poisoned(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.poisoned) {
            if let Some(participant) = self.participants.get(&id) {
                tracing::error!(participant = %id, "peer connection panicked in the engine; participant removed");
                let _ = participant.events.send(SfuEvent::ConnectionFailed);
            }
            self.leave(now, &id);
        }
    }

    fn handle_event(&mut self, now: Instant, key: &PeerKey, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) if key.1 == PeerRole::Publisher => {
                self.publish_track(now, &key.0, init.track_id, init.receiver_id, init.ssrc);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(media_track_id)) if key.1 == PeerRole::Publisher => {
                let Some(participant) = self.participants.get_mut(&key.0) else { return };
                if let Some(published) = participant.published.remove(&media_track_id) {
                    if let Some(ingress) = participant.publisher.as_mut().and_then(|p| p.ingress.as_mut()) {
                        ingress.remove_track(&published.track);
                    }
                    let room = participant.room.clone();
                    let subscribers = self.forwarder.remove_track(&published.track);
                    self.unpublished(now, &room, vec![(published.track, subscribers)]);
                }
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

    fn handle_message(&mut self, key: &PeerKey, message: TaggedRTCMessage) {
        let now = message.now;
        match (key.1, message.message) {
            (PeerRole::Publisher, RTCMessage::RtpPacket(media_track_id, packet)) => {
                let Some(participant) = self.participants.get_mut(&key.0) else { return };
                let Some(track) = participant.published.get(&media_track_id).map(|p| p.track.clone()) else { return };
                if let Some(ingress) = participant.publisher.as_mut().and_then(|p| p.ingress.as_mut()) {
                    ingress.received(now, &packet);
                }
                let room = participant.room.clone();
                self.forward_published(now, &room, &track, packet);
            }
            (PeerRole::Subscriber, RTCMessage::RtcpPacket(track_id, packets)) => {
                self.handle_subscriber_rtcp(now, &key.0, &TrackId::new(track_id), &packets);
            }
            (PeerRole::Publisher, RTCMessage::RtcpPacket(media_track_id, packets)) => {
                let Some(participant) = self.participants.get_mut(&key.0) else { return };
                let Some(track) = participant.published.get(&media_track_id).map(|p| &p.track) else { return };
                let mut ingress = participant.publisher.as_deref_mut().and_then(|p| p.ingress.as_mut());
                for packet in &packets {
                    if let Some(report) = packet.as_any().downcast_ref::<SenderReport>() {
                        if let Some(ingress) = ingress.as_mut() {
                            ingress.sender_report(now, report.ssrc, report.ntp_time);
                        }
                        let event = || TapEvent::SenderReport {
                            track: track.clone(),
                            ssrc: report.ssrc,
                            ntp_time: report.ntp_time,
                            rtp_time: report.rtp_time,
                        };
                        self.taps.send(&participant.room, event);
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_subscriber_rtcp(&mut self, now: Instant, subscriber: &ParticipantId, track: &TrackId, packets: &[Box<dyn rtcp::Packet>]) {
        for packet in packets {
            let any = packet.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                let lost: Vec<u16> = nack.nacks.iter().flat_map(|pair| pair.packet_list()).collect();
                SfuMetrics::add(&self.metrics.nacks, lost.len() as u64);
                let mut outgoing = std::mem::take(&mut self.outgoing);
                let found = self.forwarder.on_nack(now, track, subscriber, lost, &mut outgoing);
                SfuMetrics::add(&self.metrics.retransmits, found as u64);
                self.send_outgoing(now, &mut outgoing);
                self.outgoing = outgoing;
            } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                SfuMetrics::add(&self.metrics.keyframe_requests, 1);
                if let Some(request) = self.forwarder.keyframe_request(now, track) {
                    self.send_keyframe_request(now, request);
                }
            } else if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                let arrival = round_trip::ntp_middle(SystemTime::now());
                let echoed = report.reports.iter().filter_map(|r| round_trip::round_trip(arrival, r.last_sender_report, r.delay));
                if let Some(rtt) = echoed.max() {
                    SfuMetrics::add(&self.metrics.round_trips, 1);
                    SfuMetrics::add(&self.metrics.round_trip_micros, rtt.as_micros() as u64);
                    self.forwarder.set_round_trip(subscriber, rtt);
                }
            }
        }
    }

    /// Forwards a publisher's packet of `track` to the track's subscribers and taps.
    fn forward_published(&mut self, now: Instant, room: &RoomId, track: &TrackId, packet: rtc::rtp::packet::Packet) {
        if !self.taps.is_empty() {
            self.taps.send_rtp(&self.metrics, room, track, now, &packet);
        }
        SfuMetrics::add(&self.metrics.packets_in, 1);
        SfuMetrics::add(&self.metrics.bytes_in, packet.payload.len() as u64);
        let mut outgoing = std::mem::take(&mut self.outgoing);
        self.forwarder.forward(now, track, packet, &mut outgoing);
        self.send_outgoing(now, &mut outgoing);
        self.outgoing = outgoing;
    }

    /// Protects rewritten packets for their subscribers and queues them in the outbox, sent
    /// when the batch is handled or the outbox is full.
    fn send_outgoing(&mut self, now: Instant, outgoing: &mut Vec<Outgoing>) {
        for out in outgoing.drain(..) {
            if self.outbox.is_full() {
                self.send_outbox();
            }
            let Some(subscriber) = self.participants.get_mut(&out.subscriber) else { continue };
            if !subscriber.subscriptions.contains_key(&out.track) {
                continue;
            }
            let Some(egress) = subscriber.subscriber.as_mut().and_then(|peer| peer.egress.as_mut()) else { continue };
            match egress.protect(now, &out.packet) {
                Ok((datagram, to)) => {
                    self.outbox.push(datagram, to);
                    if out.rtx {
                        SfuMetrics::add(&self.metrics.rtx_packets, 1);
                    }
                    SfuMetrics::add(&self.metrics.packets_out, 1);
                    SfuMetrics::add(&self.metrics.bytes_out, out.packet.payload.len() as u64);
                }
                Err(err) => debug!(subscriber = %out.subscriber, track = %out.track, %err, "forward failed"),
            }
        }
    }

    /// Sends the datagrams the outbox holds.
    fn send_outbox(&mut self) {
        if !self.outbox.is_empty() {
            self.socket.send_trains(&self.outbox);
            self.outbox.clear();
        }
    }

    /// Keys a subscriber connection's egress, or a publisher connection's ingress, once DTLS
    /// is done.
    fn start_media(&mut self, now: Instant, key: &PeerKey) {
        let Some(peer) = peer_of(&mut self.participants, key) else { return };
        if let Some(egress) = peer.egress.as_mut().filter(|e| !e.is_started()) {
            if let Err(err) = egress.start(now, &mut peer.pc) {
                warn!(participant = %key.0, %err, "subscriber media cannot be protected");
            }
        }
        if let Some(ingress) = peer.ingress.as_mut().filter(|i| !i.is_started()) {
            // Until it is keyed the engine opens the publisher's media, so it still flows.
            if let Err(err) = ingress.start(now, &mut peer.pc) {
                warn!(participant = %key.0, %err, "publisher media left to the engine");
            }
        }
    }

    fn send_keyframe_request(&mut self, now: Instant, request: KeyframeRequest) {
        let Some(publisher) = self.participants.get_mut(&request.publisher) else { return };
        let Some(receiver) = publisher.published.values().find(|p| p.track == request.track).map(|p| p.receiver) else {
            return;
        };
        let Some(peer) = publisher.publisher.as_mut() else { return };
        let Some(mut receiver) = peer.pc.rtp_receiver(receiver) else { return };
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: request.media_ssrc };
        match receiver.write_rtcp(now, vec![Box::new(pli)]) {
            Ok(()) => {
                SfuMetrics::add(&self.metrics.plis_sent, 1);
                self.dirty.insert((request.publisher, PeerRole::Publisher));
            }
            Err(err) => debug!(track = %request.track, %err, "PLI not sent"),
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Join { room, participant, grants, events, reply } => {
                let _ = reply.send(self.join(now, room, participant, grants, events));
            }
            Command::PublisherOffer { participant, sdp, reply } => {
                let _ = reply.send(self.publisher_offer(now, &participant, sdp));
            }
            Command::SubscriberAnswer { participant, sdp, reply } => {
                let _ = reply.send(self.subscriber_answer(now, &participant, sdp));
            }
            Command::RemoteCandidate { participant, role, candidate, reply } => {
                let result = self
                    .participants
                    .get_mut(&participant)
                    .ok_or(SfuError::UnknownParticipant)
                    .and_then(|p| p.peer_mut(role).ok_or(SfuError::NotNegotiated))
                    .and_then(|peer| peer.pc.add_remote_candidate(candidate).map_err(|e| SfuError::InvalidCandidate(e.to_string())));
                let _ = reply.send(result);
            }
            Command::Leave { participant } => self.leave(now, &participant),
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
                if let Some(request) = self.forwarder.keyframe_request(now, &track) {
                    self.send_keyframe_request(now, request);
                }
            }
        }
    }

    fn join(
        &mut self,
        now: Instant,
        room: RoomId,
        id: ParticipantId,
        grants: MediaGrants,
        events: mpsc::UnboundedSender<SfuEvent>,
    ) -> Result<Vec<TrackInfo>, SfuError> {
        if self.participants.contains_key(&id) {
            return Err(SfuError::AlreadyJoined);
        }
        let subscriber = if grants.subscribe { Some(self.open_peer(now, &id, PeerRole::Subscriber)?) } else { None };
        let members = self.rooms.entry(room.clone()).or_default();
        if members.is_empty() {
            SfuMetrics::shift(&self.metrics.rooms, 1);
        }
        let existing: Vec<TrackInfo> = members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .flat_map(|p| p.published.values().map(|published| published.info.clone()))
            .collect();
        members.push(id.clone());
        SfuMetrics::shift(&self.metrics.participants, 1);
        self.participants.insert(
            id.clone(),
            Participant {
                room,
                grants,
                events,
                publisher: None,
                subscriber,
                published: HashMap::new(),
                subscriptions: HashMap::new(),
                negotiation: Negotiation::Stable,
            },
        );
        if grants.subscribe {
            for track in &existing {
                self.subscribe(now, &id, track);
            }
            self.renegotiate(now, &id);
        }
        Ok(existing)
    }

    fn publisher_offer(&mut self, now: Instant, id: &ParticipantId, sdp: String) -> Result<String, SfuError> {
        let participant = self.participants.get(id).ok_or(SfuError::UnknownParticipant)?;
        if !participant.grants.publish {
            return Err(SfuError::NotAllowed);
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let new_peer = if participant.publisher.is_none() { Some(self.open_peer(now, id, PeerRole::Publisher)?) } else { None };
        let participant = self.participants.get_mut(id).ok_or(SfuError::UnknownParticipant)?;
        if let Some(peer) = new_peer {
            participant.publisher = Some(peer);
        }
        let Some(peer) = participant.publisher.as_mut() else { return Err(SfuError::NotNegotiated) };
        peer.pc.set_remote_description(now, offer).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let answer = peer.pc.create_answer(None).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        peer.pc.set_local_description(now, answer.clone()).map_err(|e| SfuError::Engine(e.to_string()))?;
        self.dirty.insert((id.clone(), PeerRole::Publisher));
        Ok(answer.sdp)
    }

    fn subscriber_answer(&mut self, now: Instant, id: &ParticipantId, sdp: String) -> Result<(), SfuError> {
        let participant = self.participants.get_mut(id).ok_or(SfuError::UnknownParticipant)?;
        if participant.negotiation == Negotiation::Stable {
            return Err(SfuError::NotNegotiated);
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let peer = participant.subscriber.as_mut().ok_or(SfuError::NotNegotiated)?;
        peer.pc.set_remote_description(now, answer).map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        for check in std::mem::take(&mut peer.early_checks) {
            if let Err(err) = peer.pc.handle_read(check) {
                debug!(participant = %id, %err, "early connectivity check rejected");
            }
        }
        let again = participant.negotiation == Negotiation::AwaitingAnswer { again: true };
        participant.negotiation = Negotiation::Stable;
        // Forwarding to a sender starts once its payload type is negotiated.
        let mut ready = Vec::new();
        for (track, subscription) in &participant.subscriptions {
            let Some(mut sender) = peer.pc.rtp_sender(subscription.sender) else { continue };
            match negotiated(&mut sender, &subscription.codec) {
                Some(negotiated) => ready.push((track.clone(), negotiated)),
                // A track subscribed after the answered offer went out is in the next one.
                None if again => debug!(participant = %id, %track, "track waits for the next offer"),
                None => warn!(participant = %id, %track, codec = %subscription.codec.mime_type, "subscriber does not accept the codec"),
            }
        }
        self.dirty.insert((id.clone(), PeerRole::Subscriber));
        for (track, negotiated) in ready {
            if let Some(request) = self.forwarder.set_negotiated(now, &track, id, negotiated) {
                self.send_keyframe_request(now, request);
            }
        }
        if again {
            self.renegotiate(now, id);
        }
        Ok(())
    }

    fn publish_track(&mut self, now: Instant, id: &ParticipantId, media_track_id: String, receiver_id: RTCRtpReceiverId, ssrc: u32) {
        let Some(participant) = self.participants.get_mut(id) else { return };
        let Some(peer) = participant.publisher.as_deref_mut() else { return };
        let Some(mut receiver) = peer.pc.rtp_receiver(receiver_id) else { return };
        let kind = match receiver.track().kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let Some(codec) = receiver.track().codec(ssrc).cloned() else {
            warn!(participant = %id, "published track without a codec");
            return;
        };
        let twcc = receiver.get_parameters().rtp_parameters.header_extensions.iter().find(|e| e.uri == TRANSPORT_CC_URI).map(|e| e.id);
        let track =
            participant.published.get(&media_track_id).map_or_else(|| TrackId::new(format!("{id}/{media_track_id}")), |p| p.track.clone());
        if let Some(ingress) = peer.ingress.as_mut() {
            let nack = kind == MediaKind::Video && codec.rtcp_feedback.iter().any(|f| f.typ == "nack" && f.parameter.is_empty());
            ingress.add_stream(now, ssrc, track.clone(), codec.clock_rate, nack);
            if let Some(extension_id) = twcc.and_then(|id| u8::try_from(id).ok()) {
                ingress.enable_twcc(now, extension_id);
            }
        }
        if participant.published.contains_key(&media_track_id) {
            return; // another simulcast layer of a known track
        }
        let info = TrackInfo { id: track.clone(), publisher: id.clone(), kind, codec: codec.clone() };
        participant.published.insert(media_track_id, Published { track: track.clone(), receiver: receiver_id, info: info.clone() });
        self.forwarder.add_track(track.clone(), id.clone(), kind, codec.clock_rate);
        SfuMetrics::shift(&self.metrics.tracks, 1);
        info!(participant = %id, %track, codec = %codec.mime_type, "track published");
        let room = participant.room.clone();
        self.taps.send(&room, || TapEvent::TrackPublished(info.clone()));
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in &members {
            if let Some(p) = self.participants.get(member) {
                let _ = p.events.send(SfuEvent::TrackPublished(info.clone()));
            }
            if member != id && self.participants.get(member).is_some_and(|p| p.grants.subscribe) {
                self.subscribe(now, member, &info);
                self.renegotiate(now, member);
            }
        }
    }

    /// Adds a sender for `track` to the subscriber's connection (negotiated separately).
    fn subscribe(&mut self, now: Instant, subscriber: &ParticipantId, track: &TrackInfo) {
        let Some(participant) = self.participants.get_mut(subscriber) else { return };
        let Some(peer) = participant.subscriber.as_mut() else { return };
        let ssrc = rand::random::<u32>();
        let kind = match track.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let media_track = MediaStreamTrack::new(
            track.publisher.to_string(),
            track.id.to_string(),
            track.id.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                active: true,
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        match peer.pc.add_track(media_track) {
            Ok(sender) => {
                // The engine fixes the codecs it accepts for a kind from the first answered
                // m-line of that kind, and later tracks may use other codecs: so until the
                // subscriber has answered a kind, one m-line of it offers every codec. The
                // others offer only their track's codec (and its RTX) where that names one
                // format: the engine reads every m-line of every answer again, at a cost that
                // grows with the square of its codecs.
                let all_codecs =
                    !codec::has_one_format(&track.codec.mime_type) || needs_every_codec(&peer.pc, &participant.subscriptions, track.kind);
                if let Some(mut transceiver) = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(sender)) {
                    // The subscriber connection only ever sends.
                    transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
                    offer_codecs(&mut transceiver, (!all_codecs).then_some(&track.codec));
                }
                if let Some(egress) = peer.egress.as_mut() {
                    egress.add_stream(ssrc, track.codec.clock_rate);
                }
                let subscription = Subscription { sender, ssrc, codec: track.codec.clone(), kind: track.kind, all_codecs };
                participant.subscriptions.insert(track.id.clone(), subscription);
                self.forwarder.subscribe(now, &track.id, subscriber.clone(), ssrc);
            }
            Err(err) => warn!(%subscriber, track = %track.id, %err, "cannot add subscriber track"),
        }
    }

    /// Sends a new offer on the subscriber connection, or queues one behind the outstanding.
    fn renegotiate(&mut self, now: Instant, id: &ParticipantId) {
        let Some(participant) = self.participants.get_mut(id) else { return };
        if let Negotiation::AwaitingAnswer { again } = &mut participant.negotiation {
            *again = true;
            return;
        }
        if participant.subscriptions.is_empty() && participant.subscriber.as_ref().is_none_or(|p| p.pc.remote_description().is_none()) {
            return; // nothing to offer yet
        }
        let Some(peer) = participant.subscriber.as_mut() else { return };
        let offer = match peer.pc.create_offer(None) {
            Ok(offer) => offer,
            Err(err) => return warn!(participant = %id, %err, "cannot create subscriber offer"),
        };
        if let Err(err) = peer.pc.set_local_description(now, offer.clone()) {
            return warn!(participant = %id, %err, "cannot apply subscriber offer");
        }
        participant.negotiation = Negotiation::AwaitingAnswer { again: false };
        let _ = participant.events.send(SfuEvent::SubscriberOffer(offer.sdp));
        self.dirty.insert((id.clone(), PeerRole::Subscriber));
    }

    /// Takes removed tracks off their subscribers' connections (one renegotiation per
    /// subscriber, however many tracks went) and tells the room.
    fn unpublished(&mut self, now: Instant, room: &RoomId, removed: Vec<(TrackId, Vec<ParticipantId>)>) {
        let mut affected: Vec<ParticipantId> = Vec::new();
        for (track, subscribers) in &removed {
            SfuMetrics::shift(&self.metrics.tracks, -1);
            for subscriber in subscribers {
                let Some(p) = self.participants.get_mut(subscriber) else { continue };
                if let (Some(subscription), Some(peer)) = (p.subscriptions.remove(track), p.subscriber.as_mut()) {
                    if let Some(egress) = peer.egress.as_mut() {
                        egress.remove_stream(subscription.ssrc);
                    }
                    if let Err(err) = peer.pc.remove_track(subscription.sender) {
                        debug!(%subscriber, %track, %err, "remove_track failed");
                    }
                    // Another m-line of the kind takes over offering every codec, while the
                    // kind is not answered yet.
                    let kind = subscription.kind;
                    if subscription.all_codecs && needs_every_codec(&peer.pc, &p.subscriptions, kind) {
                        if let Some(heir) = p.subscriptions.values_mut().find(|s| s.kind == kind) {
                            heir.all_codecs = true;
                            if let Some(mut transceiver) = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(heir.sender)) {
                                offer_codecs(&mut transceiver, None);
                            }
                        }
                    }
                }
                if !affected.contains(subscriber) {
                    affected.push(subscriber.clone());
                }
            }
        }
        for subscriber in &affected {
            self.renegotiate(now, subscriber);
        }
        let members = self.rooms.get(room).cloned().unwrap_or_default();
        for (track, _) in removed {
            self.taps.send(room, || TapEvent::TrackUnpublished(track.clone()));
            for member in &members {
                if let Some(p) = self.participants.get(member) {
                    let _ = p.events.send(SfuEvent::TrackUnpublished(track.clone()));
                }
            }
        }
    }

    fn leave(&mut self, now: Instant, id: &ParticipantId) {
        let Some(room) = self.participants.get(id).map(|p| p.room.clone()) else { return };
        let removed = self.forwarder.remove_participant(id);
        self.unpublished(now, &room, removed);
        let Some(mut participant) = self.participants.remove(id) else { return };
        SfuMetrics::shift(&self.metrics.participants, -1);
        if let Some(members) = self.rooms.get_mut(&participant.room) {
            members.retain(|m| m != id);
            if members.is_empty() {
                self.rooms.remove(&participant.room);
                SfuMetrics::shift(&self.metrics.rooms, -1);
            }
        }
        for peer in [participant.publisher.take(), participant.subscriber.take()].into_iter().flatten() {
            self.close_peer(peer);
        }
        self.by_addr.retain(|_, key| &key.0 != id);
        self.dirty.retain(|key| &key.0 != id);
        info!(participant = %id, "participant left the media plane");
    }

    /// Builds one of a participant's connections and makes it reachable by its ICE ufrag.
    fn open_peer(&mut self, now: Instant, id: &ParticipantId, role: PeerRole) -> Result<Box<Peer>, SfuError> {
        let peer = build_peer(now, role, &self.peers)?;
        self.by_ufrag.insert(peer.ufrag.clone(), (id.clone(), role));
        let (egress, ingress) = match role {
            PeerRole::Subscriber => (Some(Egress::new(peer.keys)), None),
            PeerRole::Publisher => (None, Some(Ingress::new(peer.keys))),
        };
        Ok(Box::new(Peer { pc: peer.pc, ufrag: peer.ufrag, deadline: None, early_checks: Vec::new(), egress, ingress }))
    }

    /// Closes a connection (flushing its DTLS close) and forgets its ufrag.
    fn close_peer(&mut self, mut peer: Box<Peer>) {
        self.by_ufrag.remove(&peer.ufrag);
        if peer.pc.close().is_ok() {
            while let Some(out) = peer.pc.poll_write() {
                self.socket.send(&out.message, out.transport.peer_addr);
            }
        }
    }
}

/// Whether a subscriber connection still needs an m-line of `kind` that offers every codec:
/// none of its `subscriptions` of that kind offers them, and the engine's codecs for the kind
/// are not fixed yet (they are once the remote description has an m-line of the kind).
fn needs_every_codec(pc: &RTCPeerConnection, subscriptions: &HashMap<TrackId, Subscription>, kind: MediaKind) -> bool {
    if subscriptions.values().any(|s| s.kind == kind && s.all_codecs) {
        return false;
    }
    let prefix = match kind {
        MediaKind::Audio => "m=audio ",
        MediaKind::Video => "m=video ",
    };
    !pc.remote_description().is_some_and(|d| d.sdp.lines().any(|line| line.starts_with(prefix)))
}

/// Makes a subscriber transceiver offer `only` this codec (and its RTX), or every codec of
/// its kind.
fn offer_codecs(transceiver: &mut RTCRtpTransceiver<'_>, only: Option<&RTCRtpCodec>) {
    let preferences = only.map(|codec| vec![RTCRtpCodecParameters { rtp_codec: codec.clone(), ..Default::default() }]).unwrap_or_default();
    if let Err(err) = transceiver.set_codec_preferences(preferences) {
        debug!(%err, "codec preferences not set");
    }
}

/// The connection `key` names, if its participant and role still exist.
fn peer_of<'a>(participants: &'a mut HashMap<ParticipantId, Participant>, key: &PeerKey) -> Option<&'a mut Peer> {
    participants.get_mut(&key.0).and_then(|p| p.peer_mut(key.1))
}

/// Runs engine code for one connection, turning a panic (a bug in the engine reached by
/// hostile input, say) into `None` instead of the end of the worker thread. Free on the
/// path that does not panic.
fn isolate<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// The payload type the subscriber's answer gave `codec` on this sender, and the RTX stream
/// if the answer kept an `rtx` format for it.
fn negotiated(sender: &mut rtc::rtp_transceiver::rtp_sender::RTCRtpSender<'_>, codec: &RTCRtpCodec) -> Option<Negotiated> {
    let parameters = sender.get_parameters();
    let codecs = &parameters.rtp_parameters.codecs;
    let payload_type = codecs.iter().find(|c| crate::codec::same_format(&c.rtp_codec, codec))?.payload_type;
    let rtx_payload_type = codecs.iter().find(|c| crate::codec::is_rtx_for(&c.rtp_codec, payload_type)).map(|c| c.payload_type);
    let rtx_ssrc = parameters.encodings.first().and_then(|e| e.rtp_coding_parameters.rtx.as_ref()).map(|rtx| rtx.ssrc);
    let rtx = match (rtx_ssrc, rtx_payload_type) {
        (Some(ssrc), Some(payload_type)) => Some(RtxStream { ssrc, payload_type }),
        _ => None,
    };
    Some(Negotiated { payload_type, rtx })
}
