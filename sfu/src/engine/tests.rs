//! The engine driven through its inputs alone, in simulated time: clients on the `rtc`
//! engine exchange datagrams with it in memory, so no test opens a socket or sleeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc, TransportLayerCc, TYPE_TCC_DELTA_SCALE_FACTOR,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{nack_pairs_from_sequence_numbers, TransportLayerNack};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{AUDIO_LEVEL_URI, SDES_MID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI};
use rtc::shared::{TaggedBytesMut, TransportContext};
use tokio::sync::{mpsc, oneshot};

use super::{Command, Engine, EngineSettings, Joining, Transmit};
use crate::feedback_tap::FeedbackTap;
use crate::forwarder::{ForwarderSettings, View};
use crate::metrics::{Counter, Counters};
use crate::peer::{add_host_candidates, HostCandidate, PeerRole, PeerSettings, SrtpProfile, FEEDBACK_TAP_SLOT};
use crate::remote::Remote;
use crate::simulcast::FrameSize;
use crate::{MediaGrants, ParticipantId, RoomId, SfuError, SfuEvent, TrackId, TrackSource};

const STEP: Duration = Duration::from_millis(2);

fn server_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 50_000))
}

/// The server's passive ICE-TCP candidate.
fn server_tcp_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7881))
}

/// The server's candidate a client's datagrams of `remote`'s transport go to.
fn server_candidate(remote: Remote) -> SocketAddr {
    match remote {
        Remote::Udp(_) => server_addr(),
        Remote::Tcp(_) => server_tcp_addr(),
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec { mime_type: "video/VP8".into(), clock_rate: 90_000, channels: 0, sdp_fmtp_line: String::new(), rtcp_feedback: vec![] }
}

/// A VP8 track of stream `stream`, sent with `ssrc`.
fn vp8_track(stream: &str, id: &str, ssrc: u32) -> MediaStreamTrack {
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
        active: true,
        codec: vp8(),
        ..Default::default()
    };
    MediaStreamTrack::new(stream.into(), id.into(), id.into(), RtpCodecKind::Video, vec![encoding])
}

/// The datagrams the engine sent, in order.
#[derive(Default)]
struct Wire {
    sent: Vec<(Vec<u8>, Remote)>,
}

impl Transmit for Wire {
    fn transmit(&mut self, datagram: &[u8], to: Remote) {
        self.sent.push((datagram.to_vec(), to));
    }
}

/// A client connection: an `rtc` peer connection at an address of its own.
struct Client {
    pc: RTCPeerConnection,
    /// Its UDP address, or the address its TCP stream to the server comes from.
    addr: Remote,
    /// RTP the client decrypted, with the track id it came on.
    received: Vec<(String, rtp::Packet)>,
    /// RTCP the client received.
    rtcp: Vec<Box<dyn rtcp::Packet>>,
}

impl Client {
    /// A client of VP8 and Opus, with RTX for VP8 if `rtx` (the `rtc` client does not hand
    /// RTX packets to the application: without it, retransmissions come on the media stream).
    fn new(addr: Remote, now: Instant, rtx: bool) -> Self {
        let mut media = MediaEngine::default();
        let nack = RTCPFeedback { typ: "nack".into(), parameter: String::new() };
        let video = RTCRtpCodecParameters { rtp_codec: RTCRtpCodec { rtcp_feedback: vec![nack], ..vp8() }, payload_type: 96 };
        media.register_codec(video, RtpCodecKind::Video).expect("vp8");
        if rtx {
            let codec = RTCRtpCodec {
                mime_type: "video/rtx".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "apt=96".into(),
                rtcp_feedback: vec![],
            };
            media.register_codec(RTCRtpCodecParameters { rtp_codec: codec, payload_type: 97 }, RtpCodecKind::Video).expect("rtx");
        }
        let opus = RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        };
        media.register_codec(RTCRtpCodecParameters { rtp_codec: opus, payload_type: 111 }, RtpCodecKind::Audio).expect("opus");
        // Audio levels, as browsers send them.
        let level = RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() };
        media.register_header_extension(level, RtpCodecKind::Audio, None).expect("audio level");
        // Simulcast layers, named by their RIDs; transport-wide sequence numbers.
        for uri in [SDES_MID_URI, SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI] {
            let extension = RTCRtpHeaderExtensionCapability { uri: uri.to_owned() };
            media.register_header_extension(extension, RtpCodecKind::Video, None).expect("simulcast extensions");
        }
        let registry = Registry::new().with(Slot::Custom(FEEDBACK_TAP_SLOT), FeedbackTap::delivering(|_| true));
        let mut pc =
            RTCPeerConnectionBuilder::new().with_media_engine(media).with_interceptor_registry(registry).build(now).expect("client");
        let candidate = match addr {
            Remote::Udp(addr) => HostCandidate::Udp(addr),
            Remote::Tcp(addr) => HostCandidate::ActiveTcp(addr.ip()),
        };
        add_host_candidates(&mut pc, &[candidate]).expect("host candidate");
        Self { pc, addr, received: Vec::new(), rtcp: Vec::new() }
    }

    /// Received RTCP packets of type `T`.
    fn rtcp_of<T: 'static>(&self) -> impl Iterator<Item = &T> {
        self.rtcp.iter().filter_map(|p| p.as_any().downcast_ref::<T>())
    }
}

/// One participant as a test sees it.
struct Member {
    id: ParticipantId,
    events: mpsc::UnboundedReceiver<SfuEvent>,
    /// Every event seen so far.
    seen: Vec<SfuEvent>,
    publisher: Option<usize>,
    subscriber: usize,
}

/// An engine, its clients and a simulated clock.
struct World {
    engine: Engine,
    now: Instant,
    wire: Wire,
    clients: Vec<Client>,
    members: HashMap<&'static str, Member>,
    /// Datagrams the engine sent to addresses no client has.
    strays: Vec<(Vec<u8>, Remote)>,
    next_port: u16,
    /// RTP from the server to this address is lost with this probability, reproducibly.
    lossy: Option<(Remote, StdRng, f64)>,
    /// New clients reach the server over TCP only (ICE-TCP, an active candidate).
    over_tcp: bool,
    /// New clients negotiate RTX.
    rtx_clients: bool,
    /// Every RTP datagram the server sent a client: when, to where, its SSRC, its size and
    /// its transport-wide number (the header is sent in the clear).
    wire_log: Vec<WireRtp>,
}

/// What a test client's packet is: its codec, stream, sequence number, clock ticks per
/// sequence number (its timestamp), and marker bit.
struct Written {
    mime_type: &'static str,
    ssrc: u32,
    sequence: u16,
    ticks: u32,
    marker: bool,
}

/// One RTP datagram the server sent, as the wire shows it.
#[derive(Debug, Clone, Copy)]
struct WireRtp {
    at: Instant,
    to: Remote,
    ssrc: u32,
    len: usize,
    transport_wide: Option<u16>,
}

impl WireRtp {
    /// Reads an RTP datagram's clear header: the transport-wide number is the first (the only)
    /// one-byte header extension the egress writes.
    fn read(at: Instant, to: Remote, datagram: &[u8]) -> Option<Self> {
        if datagram.len() < 12 || datagram[0] >> 6 != 2 || (192..=223).contains(&datagram[1]) {
            return None;
        }
        let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let extension = datagram[0] & 0x10 != 0 && datagram.get(12..14) == Some(&[0xBE, 0xDE][..]);
        let transport_wide = extension.then(|| datagram.get(17..19).map(|n| u16::from_be_bytes([n[0], n[1]]))).flatten();
        Some(Self { at, to, ssrc, len: datagram.len(), transport_wide })
    }
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let settings = EngineSettings {
            peers: PeerSettings {
                worker: 0,
                candidates: vec![server_addr()],
                tcp_candidates: vec![server_tcp_addr()],
                srtp_profiles: vec![SrtpProfile::AeadAes128Gcm],
            },
            forwarder: ForwarderSettings::default(),
            max_tracks: 16,
        };
        let wall_clock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let engine = Engine::new(settings, Counters::default(), now, wall_clock, StdRng::seed_from_u64(11));
        Self {
            engine,
            now,
            wire: Wire::default(),
            clients: Vec::new(),
            members: HashMap::new(),
            strays: Vec::new(),
            next_port: 40_000,
            lossy: None,
            over_tcp: false,
            rtx_clients: false,
            wire_log: Vec::new(),
        }
    }

    fn new_client(&mut self) -> usize {
        self.next_port += 1;
        let addr = SocketAddr::from(([10, 0, 0, 2], self.next_port));
        let addr = if self.over_tcp { Remote::Tcp(addr) } else { Remote::Udp(addr) };
        self.clients.push(Client::new(addr, self.now, self.rtx_clients));
        self.clients.len() - 1
    }

    fn command<T>(&mut self, command: Command, mut rx: oneshot::Receiver<T>) -> T {
        self.engine.handle_command(self.now, command, &mut self.wire);
        self.engine.flush(self.now, &mut self.wire);
        rx.try_recv().expect("the engine answers every request at once")
    }

    /// Joins `name` to room `demo` with a subscriber connection.
    fn join(&mut self, name: &'static str, publish: bool) {
        let (events, rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let id = ParticipantId::new(name);
        let grants = MediaGrants { publish, subscribe: true };
        let command = Command::Join {
            joining: Joining { room: RoomId::new("demo"), participant: id.clone(), identity: name.to_owned(), grants, events },
            reply,
        };
        self.command(command, reply_rx).expect("joined");
        let subscriber = self.new_client();
        self.members.insert(name, Member { id, events: rx, seen: Vec::new(), publisher: None, subscriber });
    }

    /// Joins `name` to room `demo` as a viewer of `source` (an identity, or the room's first
    /// publisher): without a subscriber connection, then with the offer of a client that
    /// receives one audio and one video track.
    fn join_viewer(&mut self, name: &'static str, source: Option<&str>) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let id = ParticipantId::new(name);
        let grants = MediaGrants { publish: false, subscribe: false };
        let command = Command::Join {
            joining: Joining { room: RoomId::new("demo"), participant: id.clone(), identity: name.to_owned(), grants, events },
            reply,
        };
        self.command(command, reply_rx).expect("joined");
        let client = self.new_client();
        let now = self.now;
        let pc = &mut self.clients[client].pc;
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
            pc.add_transceiver_from_kind(kind, Some(init)).expect("transceiver");
        }
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(now, offer.clone()).expect("local offer");
        let (reply, rx) = oneshot::channel();
        let command = Command::ViewerOffer { participant: id.clone(), sdp: offer.sdp, source: source.map(str::to_owned), reply };
        let answer = self.command(command, rx).expect("the viewer's offer is answered");
        assert!(answer.contains("a=sendonly"), "the server sends on the viewer's m-lines:\n{answer}");
        let pc = &mut self.clients[client].pc;
        pc.set_remote_description(now, RTCSessionDescription::answer(answer).expect("sdp")).expect("remote answer");
        self.members.insert(name, Member { id, events: events_rx, seen: Vec::new(), publisher: None, subscriber: client });
    }

    /// `name` publishes one VP8 track sent with `ssrc`; returns its sender.
    fn publish_vp8(&mut self, name: &'static str, ssrc: u32) -> RTCRtpSenderId {
        let client = self.new_client();
        let track = vp8_track(name, "cam", ssrc);
        let sender = self.clients[client].pc.add_track(track).expect("track");
        self.negotiate_publisher(name, client);
        self.members.get_mut(name).expect("member").publisher = Some(client);
        sender
    }

    /// `name` publishes one VP8 track of three simulcast layers, RIDs `q`, `h` and `f`
    /// (lowest first) sent with `ssrcs`; returns its sender.
    fn publish_simulcast(&mut self, name: &'static str, ssrcs: [u32; 3]) -> RTCRtpSenderId {
        let client = self.new_client();
        let encodings = SIMULCAST_RIDS
            .iter()
            .zip(ssrcs)
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { rid: (*rid).to_owned(), ssrc: Some(ssrc), ..Default::default() },
                active: true,
                codec: vp8(),
                ..Default::default()
            })
            .collect();
        let track = MediaStreamTrack::new(name.into(), "cam".into(), "cam".into(), RtpCodecKind::Video, encodings);
        let sender = self.clients[client].pc.add_track(track).expect("track");
        self.negotiate_publisher(name, client);
        self.members.get_mut(name).expect("member").publisher = Some(client);
        sender
    }

    /// [`World::publish_vp8`], then its first packet, with which the engine announces the
    /// track.
    fn announce_vp8(&mut self, name: &'static str, ssrc: u32) -> RTCRtpSenderId {
        let sender = self.publish_vp8(name, ssrc);
        self.run(Duration::from_millis(300));
        self.send_rtp(name, sender, ssrc, 1);
        sender
    }

    /// `name` publishes one Opus track sent with `ssrc`; returns its sender.
    fn publish_opus(&mut self, name: &'static str, ssrc: u32) -> RTCRtpSenderId {
        let client = self.new_client();
        let encoding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            active: true,
            codec: RTCRtpCodec { mime_type: "audio/opus".into(), clock_rate: 48_000, channels: 2, ..Default::default() },
            ..Default::default()
        };
        let track = MediaStreamTrack::new(name.into(), "mic".into(), "mic".into(), RtpCodecKind::Audio, vec![encoding]);
        let sender = self.clients[client].pc.add_track(track).expect("track");
        self.negotiate_publisher(name, client);
        self.members.get_mut(name).expect("member").publisher = Some(client);
        sender
    }

    /// Sends `name`'s Opus packet `sequence` with the audio level `level` (-dBov).
    fn send_audio(&mut self, name: &str, sender: RTCRtpSenderId, ssrc: u32, sequence: u16, level: u8) {
        let packet = Written { mime_type: "audio/opus", ssrc, sequence, ticks: 960, marker: false };
        self.write_rtp(name, sender, packet, &[(AUDIO_LEVEL_URI, Bytes::from(vec![level]))], Bytes::from_static(&[0xf8, 0xff, 0xfe]));
    }

    /// Writes `packet` on `name`'s publisher connection through `sender`, with the header
    /// extensions (by URI, as negotiated) and `payload` given.
    fn write_rtp(&mut self, name: &str, sender: RTCRtpSenderId, packet: Written, extensions: &[(&str, Bytes)], payload: Bytes) {
        let client = self.members[name].publisher.expect("publishing");
        let mut rtp_sender = self.clients[client].pc.rtp_sender(sender).expect("sender");
        let parameters = &rtp_sender.get_parameters().rtp_parameters;
        let payload_type = parameters.codecs.iter().find(|c| c.rtp_codec.mime_type == packet.mime_type).expect("codec").payload_type;
        let mut header = rtp::header::Header {
            version: 2,
            payload_type,
            ssrc: packet.ssrc,
            sequence_number: packet.sequence,
            timestamp: u32::from(packet.sequence) * packet.ticks,
            marker: packet.marker,
            ..Default::default()
        };
        for (uri, value) in extensions {
            let id = parameters.header_extensions.iter().find(|e| e.uri == *uri).expect("negotiated").id as u8;
            header.set_extension(id, value.clone()).expect("extension");
        }
        rtp_sender.write_rtp(self.now, rtp::Packet { header, payload }).expect("write");
    }

    /// Offers `name`'s publisher connection (on `client`) as it now is and applies the
    /// server's answer.
    fn negotiate_publisher(&mut self, name: &str, client: usize) {
        self.negotiate_publisher_saying(name, client, HashMap::new());
    }

    /// [`World::negotiate_publisher`], saying what each section (by mid) captures.
    fn negotiate_publisher_saying(&mut self, name: &str, client: usize, sources: HashMap<String, TrackSource>) {
        let now = self.now;
        let pc = &mut self.clients[client].pc;
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(now, offer.clone()).expect("local offer");
        let id = self.members[name].id.clone();
        let (reply, rx) = oneshot::channel();
        let answer = self.command(Command::PublisherOffer { participant: id, sdp: offer.sdp, sources, reply }, rx).expect("answer");
        let pc = &mut self.clients[client].pc;
        pc.set_remote_description(now, RTCSessionDescription::answer(answer).expect("sdp")).expect("remote answer");
    }

    /// Sends the publisher's packet `sequence` of the track on `sender`.
    fn send_rtp(&mut self, name: &str, sender: RTCRtpSenderId, ssrc: u32, sequence: u16) {
        self.send_vp8(name, sender, ssrc, sequence, None, payload(sequence));
    }

    /// Sends the publisher's VP8 packet `sequence` with `payload` on `sender`, of the
    /// simulcast layer `rid` (named in the MID and RID header extensions, as browsers do).
    fn send_vp8(&mut self, name: &str, sender: RTCRtpSenderId, ssrc: u32, sequence: u16, rid: Option<&str>, payload: Bytes) {
        let client = self.members[name].publisher.expect("publishing");
        let mid = self.clients[client].pc.rtp_transceiver(RTCRtpTransceiverId::from(sender)).and_then(|t| t.mid().clone());
        let extensions = match rid {
            Some(rid) => {
                vec![(SDES_MID_URI, Bytes::from(mid.expect("a mid").into_bytes())), (SDES_RTP_STREAM_ID_URI, Bytes::from(rid.to_owned()))]
            }
            None => Vec::new(),
        };
        let packet = Written { mime_type: "video/VP8", ssrc, sequence, ticks: 3000, marker: true };
        self.write_rtp(name, sender, packet, &extensions, payload);
    }

    /// Moves time on by `duration` in steps, carrying datagrams both ways, answering the
    /// server's subscriber offers and running every timer that falls due.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += STEP;
            self.exchange();
        }
    }

    fn exchange(&mut self) {
        let now = self.now;
        for client in &mut self.clients {
            if client.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = client.pc.handle_timeout(now);
            }
            while let Some(out) = client.pc.poll_write() {
                assert_eq!(out.transport.transport_protocol, client.addr.protocol(), "the client uses its own transport");
                self.engine.handle_datagram(now, &out.message, client.addr, server_candidate(client.addr), &mut self.wire);
            }
        }
        // The deadline the engine keeps between turns is never later than a fresh walk of
        // every connection's would give: a later one would be a timer that fires late.
        let kept = self.engine.next_deadline(now);
        assert!(kept <= self.engine.earliest_deadline(now), "the kept deadline is later than the earliest one");
        if kept <= now {
            self.engine.handle_timeout(now);
        }
        self.engine.flush(now, &mut self.wire);
        for (datagram, to) in std::mem::take(&mut self.wire.sent) {
            let Some(client) = self.clients.iter_mut().find(|c| c.addr == to) else {
                self.strays.push((datagram, to));
                continue;
            };
            self.wire_log.extend(WireRtp::read(now, to, &datagram));
            if let Some((_, rng, loss)) = self.lossy.as_mut().filter(|(lossy, _, _)| *lossy == to) {
                let rtp = datagram.len() > 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1]);
                if rtp && rng.random_bool(*loss) {
                    continue;
                }
            }
            let transport =
                TransportContext { local_addr: to.addr(), peer_addr: server_candidate(to), ecn: None, transport_protocol: to.protocol() };
            let _ = client.pc.handle_read(TaggedBytesMut { now, transport, message: BytesMut::from(&datagram[..]) });
        }
        for client in &mut self.clients {
            while let Some(message) = client.pc.poll_read() {
                match message.message {
                    RTCMessage::RtpPacket(track, packet) => client.received.push((track, packet)),
                    RTCMessage::RtcpPacket(_, packets) => client.rtcp.extend(packets),
                    _ => {}
                }
            }
            while client.pc.poll_event().is_some() {}
        }
        let names: Vec<&'static str> = self.members.keys().copied().collect();
        for name in names {
            while let Ok(event) = self.members.get_mut(name).expect("member").events.try_recv() {
                if let SfuEvent::SubscriberOffer(sdp) = &event {
                    self.answer(name, sdp.clone());
                }
                self.members.get_mut(name).expect("member").seen.push(event);
            }
        }
    }

    fn answer(&mut self, name: &str, offer: String) {
        let (client, id) = (self.members[name].subscriber, self.members[name].id.clone());
        let now = self.now;
        let pc = &mut self.clients[client].pc;
        pc.set_remote_description(now, RTCSessionDescription::offer(offer).expect("sdp")).expect("remote offer");
        let answer = pc.create_answer(None).expect("answer");
        pc.set_local_description(now, answer.clone()).expect("local answer");
        let (reply, rx) = oneshot::channel();
        self.command(Command::SubscriberAnswer { participant: id, sdp: answer.sdp, reply }, rx).expect("answer taken");
    }

    fn received(&self, name: &str) -> &[(String, rtp::Packet)] {
        &self.clients[self.members[name].subscriber].received
    }

    /// PLIs `name`'s publisher connection received.
    fn plis(&self, name: &str) -> usize {
        self.clients[self.members[name].publisher.expect("publishing")].rtcp_of::<PictureLossIndication>().count()
    }

    /// `name` NACKs `lost` (outgoing sequence numbers) of the stream `media_ssrc` it receives.
    fn nack(&mut self, name: &str, media_ssrc: u32, lost: &[u16]) {
        let nack = TransportLayerNack { sender_ssrc: 1, media_ssrc, nacks: nack_pairs_from_sequence_numbers(lost) };
        let message = RTCMessage::RtcpPacket(String::new(), vec![Box::new(nack)]);
        let client = &mut self.clients[self.members[name].subscriber];
        client.pc.handle_write(TaggedRTCMessage { now: self.now, message }).expect("nack written");
    }

    /// `name` reports on every RTP datagram the server sent it since entry `from` of the wire
    /// log: the `i`th of them, sent at `at`, arrived at `arrival(i, at)` or was lost (`None`).
    /// Returns where the next report starts.
    fn report(&mut self, name: &str, from: usize, arrival: impl Fn(usize, Instant) -> Option<Instant>) -> usize {
        let to = self.clients[self.members[name].subscriber].addr;
        let epoch = self.wire_log.first().map_or(self.now, |w| w.at);
        let fates: Vec<(u16, Option<Instant>)> = self.wire_log[from..]
            .iter()
            .filter(|w| w.to == to)
            .filter_map(|w| w.transport_wide.map(|n| (n, w.at)))
            .enumerate()
            .map(|(i, (n, at))| (n, arrival(i, at)))
            .collect();
        let next = self.wire_log.len();
        let Some(&(base, _)) = fates.first() else { return next };
        assert!(fates.iter().enumerate().all(|(i, (n, _))| *n == base.wrapping_add(i as u16)), "consecutive numbers");
        let first = fates.iter().find_map(|(_, arrival)| *arrival).unwrap_or(epoch);
        let ticks = first.duration_since(epoch).as_millis() as u64 / 64;
        let mut reported = epoch + Duration::from_millis(ticks * 64);
        let (mut packet_chunks, mut recv_deltas) = (Vec::new(), Vec::new());
        for (_, arrival) in &fates {
            let symbol = match arrival {
                None => SymbolTypeTcc::PacketNotReceived,
                Some(arrival) => {
                    let quarters = arrival.duration_since(reported).as_micros() as i64 / TYPE_TCC_DELTA_SCALE_FACTOR;
                    reported += Duration::from_micros((quarters * TYPE_TCC_DELTA_SCALE_FACTOR) as u64);
                    let symbol =
                        if quarters <= 255 { SymbolTypeTcc::PacketReceivedSmallDelta } else { SymbolTypeTcc::PacketReceivedLargeDelta };
                    recv_deltas.push(RecvDelta { type_tcc_packet: symbol, delta: quarters * TYPE_TCC_DELTA_SCALE_FACTOR });
                    symbol
                }
            };
            packet_chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: symbol,
                run_length: 1,
            }));
        }
        let feedback = TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 1,
            base_sequence_number: base,
            packet_status_count: fates.len() as u16,
            reference_time: ticks as u32,
            fb_pkt_count: 0,
            packet_chunks,
            recv_deltas,
        };
        let message = RTCMessage::RtcpPacket(String::new(), vec![Box::new(feedback)]);
        let client = &mut self.clients[self.members[name].subscriber];
        client.pc.handle_write(TaggedRTCMessage { now: self.now, message }).expect("feedback written");
        next
    }

    /// `name`'s receiver report: it lost `fraction` of the stream `media_ssrc` since the last.
    fn report_loss(&mut self, name: &str, media_ssrc: u32, fraction: f64) {
        let block = ReceptionReport { ssrc: media_ssrc, fraction_lost: (fraction * 256.0).min(255.0) as u8, ..Default::default() };
        let report = ReceiverReport { ssrc: 1, reports: vec![block], ..Default::default() };
        let message = RTCMessage::RtcpPacket(String::new(), vec![Box::new(report)]);
        let client = &mut self.clients[self.members[name].subscriber];
        client.pc.handle_write(TaggedRTCMessage { now: self.now, message }).expect("report written");
    }

    /// The engine's estimate of `name`'s downlink.
    fn estimate(&self, name: &str) -> Option<f64> {
        let key = self.engine.keys[&self.members[name].id];
        self.engine.participants[&key].subscriber.as_ref()?.egress.as_ref()?.estimate()
    }

    /// `name` tells how it shows `track`.
    fn set_view(&mut self, name: &str, track: TrackId, view: View) -> Result<(), SfuError> {
        let participant = self.members[name].id.clone();
        let (reply, rx) = oneshot::channel();
        self.command(Command::SetView { participant, track, view, reply }, rx)
    }

    fn set_muted(&mut self, name: &str, track: TrackId, muted: bool) {
        let participant = self.members[name].id.clone();
        self.engine.handle_command(self.now, Command::SetMuted { participant, track, muted }, &mut self.wire);
        self.engine.flush(self.now, &mut self.wire);
    }

    fn leave(&mut self, name: &str) {
        let id = self.members[name].id.clone();
        self.engine.handle_command(self.now, Command::Leave { participant: id }, &mut self.wire);
        self.engine.flush(self.now, &mut self.wire);
    }

    /// The track whose publication `name` heard first.
    fn published_track(&self, name: &str) -> TrackId {
        let published = self.members[name].seen.iter().find_map(|e| match e {
            SfuEvent::TrackPublished(info) => Some(info.id),
            _ => None,
        });
        published.expect("a track was published")
    }

    /// The ICE ufrag the server's latest subscriber offer to `name` gave.
    fn subscriber_ufrag(&self, name: &str) -> String {
        let offer = self.members[name].seen.iter().rev().find_map(|e| match e {
            SfuEvent::SubscriberOffer(sdp) => Some(sdp.clone()),
            _ => None,
        });
        let offer = offer.expect("an offer was made");
        let line = offer.lines().find(|l| l.starts_with("a=ice-ufrag:")).expect("ufrag");
        line["a=ice-ufrag:".len()..].trim().to_owned()
    }
}

fn payload(sequence: u16) -> Bytes {
    let mut bytes = vec![0x10, 0, 0]; // a VP8 descriptor with the start bit, then data
    bytes.extend((0..600u32).map(|i| (i as u16 ^ sequence) as u8));
    Bytes::from(bytes)
}

/// Alice publishes, Bob (joined first) and Carol (joined after) subscribe; `count` packets
/// from Alice after everyone is connected.
fn meeting(count: u16) -> (World, RTCRtpSenderId) {
    let mut world = World::new();
    world.join("bob", false);
    world.join("alice", true);
    let sender = world.announce_vp8("alice", 0xA1); // the engine announces the track on its first packet
    world.run(Duration::from_millis(300));
    world.join("carol", false);
    world.run(Duration::from_millis(300));
    send_run(&mut world, "alice", sender, 0xA1, 2..2 + count);
    (world, sender)
}

#[test]
fn clients_that_reach_the_server_over_tcp_only_publish_and_subscribe_like_the_rest() {
    let mut world = World::new();
    world.join("bob", false);
    world.over_tcp = true;
    world.join("carol", false);
    world.join("alice", true);
    let sender = world.announce_vp8("alice", 0xA1);
    assert!(matches!(world.clients[world.members["alice"].publisher.expect("publishing")].addr, Remote::Tcp(_)));
    world.run(Duration::from_millis(300));
    send_run(&mut world, "alice", sender, 0xA1, 2..52);
    // Bob over UDP, Carol over TCP, from Alice over TCP.
    for name in ["bob", "carol"] {
        let payloads: Vec<Bytes> = world.received(name).iter().map(|(_, p)| p.payload.clone()).collect();
        assert_eq!(payloads, (2..52).map(payload).collect::<Vec<_>>(), "{name} got every packet, byte-identical");
    }
    assert!(world.strays.is_empty(), "every datagram went to a client on the transport it used");
}

#[test]
fn subscribers_receive_a_publishers_packets_byte_identical_and_leave_unpublishes() {
    let (mut world, _) = meeting(50);
    for name in ["bob", "carol"] {
        let received = world.received(name);
        let payloads: Vec<&Bytes> = received.iter().map(|(_, p)| &p.payload).collect();
        assert_eq!(payloads.len(), 50, "{name} got every packet sent after it connected");
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(**p, payload(2 + i as u16), "{name}'s packet {i} is the publisher's payload");
        }
        let sequences: Vec<u16> = received.iter().map(|(_, p)| p.header.sequence_number).collect();
        assert!(sequences.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{name}'s sequence numbers run on without gaps");
    }
    let track = world.published_track("bob");
    world.leave("alice");
    world.run(Duration::from_millis(20));
    for name in ["alice", "bob", "carol"] {
        assert!(world.members[name].seen.iter().any(|e| matches!(e, SfuEvent::TrackUnpublished(t) if *t == track)), "{name} heard");
    }
    assert!(world.strays.is_empty(), "nothing went to an address no client has");
}

#[test]
fn subscribers_packets_carry_transport_wide_numbers_and_their_feedback_moves_the_estimate() {
    let (mut world, _) = meeting(50);
    let numbers: Vec<u16> = world
        .received("bob")
        .iter()
        .map(|(_, packet)| {
            let [extension] = &packet.header.extensions[..] else { panic!("one extension: {:?}", packet.header.extensions) };
            u16::from_be_bytes([extension.payload[0], extension.payload[1]])
        })
        .collect();
    assert_eq!(numbers.len(), 50);
    assert!(numbers.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "one number per packet, in order: {numbers:?}");
    let before = world.estimate("bob").expect("Bob negotiated transport-wide congestion control");
    // His receiver report says he lost a little (too little to act on), then his
    // transport-wide feedback says he lost every packet.
    let ssrc = world.received("bob")[0].1.header.ssrc;
    world.report_loss("bob", ssrc, 0.05);
    world.run(Duration::from_millis(20));
    assert_eq!(world.estimate("bob"), Some(before), "5 % lost");
    world.report("bob", 0, |_, _| None);
    world.run(Duration::from_millis(20));
    let after = world.estimate("bob").expect("still");
    assert!(after < before, "every packet lost lowers the estimate: {before} -> {after}");
}

#[test]
fn a_track_its_publisher_stops_in_a_renegotiation_leaves_the_room() {
    let (mut world, sender) = meeting(5);
    let track = world.published_track("bob");
    let client = world.members["alice"].publisher.expect("publishing");
    world.clients[client].pc.rtp_transceiver(RTCRtpTransceiverId::from(sender)).expect("its transceiver").stop().expect("stopped");
    world.negotiate_publisher("alice", client);
    world.run(Duration::from_millis(50));
    for name in ["alice", "bob", "carol"] {
        assert!(world.members[name].seen.iter().any(|e| matches!(e, SfuEvent::TrackUnpublished(t) if *t == track)), "{name} heard");
    }
}

#[test]
fn an_attacker_who_knows_a_ufrag_but_not_the_password_gets_nothing() {
    let (mut world, sender) = meeting(5);
    let ufrag = world.subscriber_ufrag("bob");
    let before = world.received("bob").len();
    let attacker = Remote::Udp(SocketAddr::from(([203, 0, 113, 9], 6666)));
    let forged = crate::stun::tests::binding_request(format!("{ufrag}:evil").as_bytes(), "not-the-password", true);
    for round in 0..20u16 {
        world.engine.handle_datagram(world.now, &forged, attacker, server_addr(), &mut world.wire);
        world.engine.handle_datagram(world.now, b"\x80\x60\x00\x01garbage-from-the-attacker", attacker, server_addr(), &mut world.wire);
        world.send_rtp("alice", sender, 0xA1, 100 + round);
        world.run(STEP * 5);
    }
    let to_attacker: usize = world.strays.iter().filter(|(_, to)| *to == attacker).map(|(d, _)| d.len()).sum();
    assert_eq!(to_attacker, 0, "not a byte to the attacker: no media, no STUN answer");
    assert_eq!(world.received("bob").len() - before, 20, "the victim lost nothing");
    assert_eq!(world.engine.counters().get(Counter::ForgedChecks), 20);
}

#[test]
fn spoofed_checks_from_many_sources_leave_no_state_behind() {
    let (mut world, _) = meeting(1);
    let ufrag = world.subscriber_ufrag("bob");
    let bound = world.engine.ice.bound_addresses();
    let forged = crate::stun::tests::binding_request(format!("{ufrag}:evil").as_bytes(), "guess", false);
    for i in 0..20_000u32 {
        let source = Remote::Udp(SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 1000 + (i % 50_000) as u16)));
        world.engine.handle_datagram(world.now, &forged, source, server_addr(), &mut world.wire);
    }
    world.engine.flush(world.now, &mut world.wire);
    assert_eq!(world.engine.ice.bound_addresses(), bound, "no source was bound");
    assert!(world.wire.sent.is_empty(), "nothing answered");
    let bob = &world.engine.participants[&world.engine.keys[&world.members["bob"].id]];
    assert!(bob.subscriber.as_ref().is_some_and(|p| p.early_checks.is_empty()), "no check was kept for later");
}

#[test]
fn subscriber_offers_declare_wms_and_name_streams_and_tracks_with_tokens() {
    let (world, _) = meeting(1);
    let offers: Vec<&String> = world.members["carol"]
        .seen
        .iter()
        .filter_map(|e| match e {
            SfuEvent::SubscriberOffer(sdp) => Some(sdp),
            _ => None,
        })
        .collect();
    assert!(!offers.is_empty());
    // RFC 8830: msid-id = 1*64token-char.
    let token = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|c| matches!(c, 0x21 | 0x23..=0x27 | 0x2A..=0x2B | 0x2D..=0x2E | 0x30..=0x39 | 0x41..=0x5A | 0x5E..=0x7E))
    };
    for offer in offers {
        let semantics: Vec<&str> = offer.lines().filter(|l| l.starts_with("a=msid-semantic")).collect();
        assert_eq!(semantics, ["a=msid-semantic: WMS"], "{offer}");
        let msids: Vec<&str> = offer.lines().filter_map(|l| l.strip_prefix("a=msid:")).collect();
        assert!(!msids.is_empty(), "{offer}");
        for msid in msids {
            let ids: Vec<&str> = msid.split(' ').collect();
            assert_eq!(ids.len(), 2, "{msid}");
            assert!(ids.iter().all(|id| token(id)), "not RFC 8830 tokens: {msid}");
            assert_eq!(ids[1], world.published_track("bob").to_string(), "the track is named by its id");
        }
    }
}

#[test]
fn a_candidate_that_panics_the_engine_fails_that_participant_only() {
    // rtc 0.21.1 computes a candidate's priority as `256 - component` when the priority
    // given is 0: component 257 underflows, a panic wherever overflow is checked.
    let (mut world, sender) = meeting(1);
    let (reply, rx) = oneshot::channel();
    let candidate = rtc::peer_connection::transport::RTCIceCandidateInit {
        candidate: "candidate:1 257 udp 0 192.0.2.1 9 typ host".to_owned(),
        ..Default::default()
    };
    let carol = world.members["carol"].id.clone();
    let result = world.command(Command::RemoteCandidate { participant: carol, role: PeerRole::Subscriber, candidate, reply }, rx);
    if cfg!(debug_assertions) {
        assert!(matches!(result, Err(SfuError::Engine(_))), "{result:?}");
        world.run(STEP);
        assert!(world.members["carol"].seen.iter().any(|e| matches!(e, SfuEvent::ConnectionFailed)), "carol heard her media failed");
        assert!(!world.engine.keys.contains_key(&world.members["carol"].id), "and is out of the room");
        assert_eq!(world.engine.participants.len(), 2);
    }
    let before = world.received("bob").len();
    world.send_rtp("alice", sender, 0xA1, 500);
    world.run(STEP * 5);
    assert_eq!(world.received("bob").len(), before + 1, "the room goes on");
}

#[test]
fn an_abandoned_engine_tells_every_participant_their_media_failed() {
    let (world, _) = meeting(1);
    let World { engine, mut members, .. } = world;
    engine.abandon();
    for name in ["alice", "bob", "carol"] {
        let member = members.get_mut(name).expect("member");
        let mut failed = false;
        while let Ok(event) = member.events.try_recv() {
            failed |= matches!(event, SfuEvent::ConnectionFailed);
        }
        assert!(failed, "{name} heard");
    }
}

#[test]
fn an_offer_of_more_tracks_than_allowed_is_refused_and_changes_nothing() {
    let mut world = World::new();
    world.join("alice", true);
    let client = world.new_client();
    let now = world.now;
    let pc = &mut world.clients[client].pc;
    for i in 0..17u32 {
        pc.add_track(vp8_track("alice", &format!("cam{i}"), 100 + i)).expect("track");
    }
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(now, offer.clone()).expect("local offer");
    let id = world.members["alice"].id.clone();
    let (reply, rx) = oneshot::channel();
    let result = world.command(Command::PublisherOffer { participant: id, sdp: offer.sdp, sources: HashMap::new(), reply }, rx);
    assert!(matches!(result, Err(SfuError::TooManyTracks { offered: 17, max: 16 })), "{result:?}");
    let alice = &world.engine.participants[&world.engine.keys[&world.members["alice"].id]];
    assert!(alice.publisher.is_none(), "no publisher connection was made");
}

#[test]
fn refused_descriptions_and_candidates_name_the_fault_not_the_input() {
    let mut world = World::new();
    world.join("alice", true);
    let id = world.members["alice"].id.clone();
    let marker = "JUNKJUNK";
    let junk_line = format!("a={}\r\n", marker.repeat(8 * 1024));
    let offers = [
        // Not SDP at all, one line of 64 KB.
        marker.repeat(8 * 1024),
        // SDP that parses, with an attribute the offer cannot be applied with.
        format!("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{junk_line}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
    ];
    for sdp in offers {
        let (reply, rx) = oneshot::channel();
        let result = world.command(Command::PublisherOffer { participant: id.clone(), sdp, sources: HashMap::new(), reply }, rx);
        let Err(err @ SfuError::InvalidSdp(_)) = result else { panic!("refused as invalid SDP: {result:?}") };
        let text = err.to_string();
        assert!(text.len() < 120 && !text.contains(marker), "{}", &text[..text.len().min(200)]);
    }
    // A priority that is not a number, after 8 KB of foundation.
    let candidate = rtc::peer_connection::transport::RTCIceCandidateInit {
        candidate: format!("candidate:{} 1 udp {marker} 192.0.2.1 9 typ host", marker.repeat(1024)),
        ..Default::default()
    };
    let (reply, rx) = oneshot::channel();
    let result = world.command(Command::RemoteCandidate { participant: id, role: PeerRole::Subscriber, candidate, reply }, rx);
    let Err(err @ SfuError::InvalidCandidate(_)) = result else { panic!("refused as an invalid candidate: {result:?}") };
    let text = err.to_string();
    assert!(text.len() < 120 && !text.contains(marker), "{}", &text[..text.len().min(200)]);
    // The refused offers cost nothing: the client's next, valid, one is answered and its
    // media flows.
    world.announce_vp8("alice", 0xA1);
    world.run(Duration::from_millis(300));
    assert!(world.members["alice"].seen.iter().any(|e| matches!(e, SfuEvent::TrackPublished(_))), "the track was published");
}

#[test]
fn a_new_subscriber_that_never_asks_gets_a_keyframe_request_sent_for_it() {
    let mut world = World::new();
    world.join("alice", true);
    world.announce_vp8("alice", 0xA1);
    world.run(Duration::from_millis(600));
    let before = world.plis("alice");
    // Bob's client never sends a PLI; his answer alone makes the server ask.
    world.join("bob", false);
    world.run(Duration::from_millis(100));
    assert_eq!(world.plis("alice"), before + 1, "bob's subscription asked for a keyframe");
    // Carol answers within the throttle interval: her request waits for its end, then goes.
    world.join("carol", false);
    world.run(Duration::from_millis(100));
    assert_eq!(world.plis("alice"), before + 1, "throttled");
    world.run(Duration::from_millis(500));
    assert_eq!(world.plis("alice"), before + 2, "sent when the interval ended");
}

#[test]
fn mute_stops_a_tracks_media_and_unmute_resumes_it_with_a_keyframe_request() {
    let (mut world, sender) = meeting(1);
    let track = world.published_track("bob");
    let before = world.received("bob").len();
    world.set_muted("alice", track, true);
    world.run(Duration::from_secs(1));
    for sequence in 100..110 {
        world.send_rtp("alice", sender, 0xA1, sequence);
        world.run(STEP * 5);
    }
    assert_eq!(world.received("bob").len(), before, "nothing while muted");
    world.set_muted("bob", track, false);
    world.send_rtp("alice", sender, 0xA1, 110);
    world.run(STEP * 5);
    assert_eq!(world.received("bob").len(), before, "only its publisher unmutes a track");
    let plis = world.plis("alice");
    world.set_muted("alice", track, false);
    world.run(STEP * 5);
    assert_eq!(world.plis("alice"), plis + 1, "unmute asks for a keyframe");
    world.send_rtp("alice", sender, 0xA1, 111);
    world.run(STEP * 5);
    assert_eq!(world.received("bob").len(), before + 1, "media flows again");
}

#[test]
fn a_lossy_link_is_repaired_by_nacks_and_a_flood_of_them_is_bounded() {
    let (mut world, sender) = meeting(1);
    let media_ssrc = world.received("bob")[0].1.header.ssrc;
    // A NACK naming one packet a thousand times gets it sent once (the client's replay
    // window then drops the copy it already has).
    let last = world.received("bob").last().expect("a packet").1.header.sequence_number;
    let before = world.engine.counters().get(Counter::Retransmits);
    world.nack("bob", media_ssrc, &[last; 1000]);
    world.run(Duration::from_millis(20));
    assert_eq!(world.engine.counters().get(Counter::Retransmits), before + 1);
    let bob = world.clients[world.members["bob"].subscriber].addr;
    world.lossy = Some((bob, StdRng::seed_from_u64(7), 0.2));
    let first_out = world.received("bob").last().expect("a packet").1.header.sequence_number.wrapping_add(1);
    let skip = world.received("bob").len();
    let got = |world: &World| -> std::collections::BTreeMap<u16, Bytes> {
        world.received("bob")[skip..].iter().map(|(_, p)| (p.header.sequence_number, p.payload.clone())).collect()
    };
    // Bob asks for what is missing every 5 packets (50 ms), as a receiver does each round
    // trip; the server keeps a packet at least 250 ms for that.
    let mut nacked = 0;
    for (i, sequence) in (3..203u16).enumerate() {
        world.send_rtp("alice", sender, 0xA1, sequence);
        world.run(STEP * 5);
        if i % 5 == 4 {
            let have = got(&world);
            let sent = i as u16 + 1;
            let missing: Vec<u16> = (0..sent).map(|n| first_out.wrapping_add(n)).filter(|s| !have.contains_key(s)).collect();
            nacked += missing.len();
            if !missing.is_empty() {
                world.nack("bob", media_ssrc, &missing);
            }
        }
    }
    world.lossy = None;
    let have = got(&world);
    let missing: Vec<u16> = (0..200u16).map(|n| first_out.wrapping_add(n)).filter(|s| !have.contains_key(s)).collect();
    world.nack("bob", media_ssrc, &missing);
    world.run(Duration::from_millis(50));
    assert!(nacked >= 40, "the seeded link lost packets: {nacked} asked for");
    let have = got(&world);
    assert_eq!(have.len(), 200, "every lost packet was retransmitted");
    for (n, sequence) in (3..203u16).enumerate() {
        assert_eq!(have[&first_out.wrapping_add(n as u16)], payload(sequence), "retransmitted byte-identical");
    }
}

#[test]
fn subscribers_get_sender_reports_and_publishers_receiver_reports() {
    let (mut world, sender) = meeting(1);
    for sequence in 3..400u16 {
        world.send_rtp("alice", sender, 0xA1, sequence);
        world.run(STEP * 5);
    }
    let media_ssrc = world.received("bob")[0].1.header.ssrc;
    let bob = &world.clients[world.members["bob"].subscriber];
    let reports: Vec<&SenderReport> = bob.rtcp_of::<SenderReport>().filter(|r| r.ssrc == media_ssrc).collect();
    assert!(reports.len() >= 2, "a sender report a second on bob's stream: {}", reports.len());
    let last = reports.last().expect("a report");
    // It counts what was sent up to when it went: at most a second (100 packets) ago.
    let (counted, received) = (last.packet_count as usize, world.received("bob").len());
    assert!(counted <= received && counted + 110 >= received, "it counts what was sent: {counted} of {received}");
    let alice = &world.clients[world.members["alice"].publisher.expect("publishing")];
    let blocks: Vec<_> = alice.rtcp_of::<ReceiverReport>().flat_map(|r| r.reports.iter()).filter(|b| b.ssrc == 0xA1).collect();
    assert!(blocks.len() >= 2, "receiver reports on alice's stream: {}", blocks.len());
    assert_eq!(blocks.last().expect("a block").total_lost, 0);
}

/// `count` packets from `name`'s track on `sender`, paced as the meeting's are.
fn send_run(world: &mut World, name: &str, sender: RTCRtpSenderId, ssrc: u32, sequences: std::ops::Range<u16>) {
    for sequence in sequences {
        world.send_rtp(name, sender, ssrc, sequence);
        world.run(STEP * 5);
    }
    world.run(Duration::from_millis(50));
}

#[test]
fn a_viewer_receives_the_first_publisher_and_then_the_next_on_one_continuous_stream() {
    let mut world = World::new();
    world.join("alice", true);
    let alice = world.announce_vp8("alice", 0xA1);
    world.join("bob", true);
    let bob = world.announce_vp8("bob", 0xB1);
    world.join_viewer("viv", None);
    world.run(Duration::from_millis(300));
    assert!(world.members["viv"].seen.iter().all(|e| !matches!(e, SfuEvent::SubscriberOffer(_))), "a viewer is never offered to");

    send_run(&mut world, "alice", alice, 0xA1, 2..32);
    send_run(&mut world, "bob", bob, 0xB1, 2..12);
    let received = world.received("viv").to_vec();
    let payloads: Vec<&Bytes> = received.iter().map(|(_, p)| &p.payload).collect();
    assert_eq!(payloads.len(), 30, "the viewer got the first publisher's packets, and only those");
    assert!(payloads.iter().zip(2..).all(|(p, sequence)| **p == payload(sequence)), "byte-identical");

    // Alice leaves: Bob, the room's next publisher, takes her place on the same stream.
    world.leave("alice");
    world.run(Duration::from_millis(50));
    send_run(&mut world, "bob", bob, 0xB1, 12..42);
    let received = world.received("viv").to_vec();
    assert_eq!(received.len(), 60, "then Bob's");
    assert!(received[30..].iter().zip(12..).all(|((_, p), sequence)| p.payload == payload(sequence)), "Bob's, byte-identical");
    let ssrcs: Vec<u32> = received.iter().map(|(_, p)| p.header.ssrc).collect();
    assert!(ssrcs.windows(2).all(|w| w[0] == w[1]), "one SSRC throughout");
    let sequences: Vec<u16> = received.iter().map(|(_, p)| p.header.sequence_number).collect();
    assert!(sequences.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "numbered on without a jump: {sequences:?}");
    assert!(world.plis("bob") >= 1, "Bob was asked for a keyframe for the viewer");

    // The viewer's feedback reaches the track its slot carries: a NACK is answered, a PLI
    // goes to Bob.
    let (ssrc, lost) = (received[0].1.header.ssrc, received[50].1.header.sequence_number);
    let before = world.engine.counters().get(Counter::Retransmits);
    world.nack("viv", ssrc, &[lost]);
    world.run(Duration::from_millis(20));
    assert_eq!(world.engine.counters().get(Counter::Retransmits), before + 1, "the NACKed packet was sent again");
    let plis = world.plis("bob");
    world.run(Duration::from_secs(1)); // past the keyframe throttle
    let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: ssrc };
    let client = world.members["viv"].subscriber;
    let message = RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]);
    world.clients[client].pc.handle_write(TaggedRTCMessage { now: world.now, message }).expect("pli written");
    world.run(Duration::from_millis(50));
    assert_eq!(world.plis("bob"), plis + 1, "the viewer's PLI reached Bob");
}

#[test]
fn a_viewer_that_names_an_identity_receives_that_participant_only() {
    let mut world = World::new();
    world.join("alice", true);
    let alice = world.publish_vp8("alice", 0xA1);
    world.join_viewer("viv", Some("bob"));
    world.run(Duration::from_millis(300));
    send_run(&mut world, "alice", alice, 0xA1, 1..11);
    assert!(world.received("viv").is_empty(), "Alice is not the one named");
    world.join("bob", true);
    let bob = world.publish_vp8("bob", 0xB1);
    world.run(Duration::from_millis(300));
    send_run(&mut world, "bob", bob, 0xB1, 1..21);
    let received = world.received("viv");
    // The first packet announces the track, and is forwarded to the viewer with the rest.
    assert_eq!(received.len(), 20, "every packet of Bob's");
    assert!(received.iter().zip(1..).all(|((_, p), sequence)| p.payload == payload(sequence)));
}

#[test]
fn a_viewer_offer_is_refused_on_a_connection_that_already_receives_and_for_junk() {
    let mut world = World::new();
    world.join("carol", false);
    let (reply, rx) = oneshot::channel();
    let command = Command::ViewerOffer { participant: world.members["carol"].id.clone(), sdp: "v=0\r\n".into(), source: None, reply };
    assert!(matches!(world.command(command, rx), Err(SfuError::AlreadyReceiving)));
    let (events, _events) = mpsc::unbounded_channel();
    let (reply, rx) = oneshot::channel();
    let id = ParticipantId::new("dave");
    let grants = MediaGrants { publish: false, subscribe: false };
    world
        .command(
            Command::Join {
                joining: Joining { room: RoomId::new("demo"), participant: id.clone(), identity: "dave".into(), grants, events },
                reply,
            },
            rx,
        )
        .expect("joined");
    let sending = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n";
    for sdp in ["this is no SDP", sending] {
        let (reply, rx) = oneshot::channel();
        let command = Command::ViewerOffer { participant: id.clone(), sdp: sdp.into(), source: None, reply };
        assert!(matches!(world.command(command, rx), Err(SfuError::InvalidSdp(_))), "{sdp}");
    }
    assert_eq!(world.engine.ice.connections(), 1, "no route is left behind for the refused offer (carol's connection only)");
}

#[test]
fn a_viewer_whose_checks_never_come_is_told_its_media_failed() {
    let mut world = World::new();
    world.join("alice", true);
    world.join_viewer("viv", None);
    // The player goes away before it checks: nothing of it reaches the server again.
    world.clients.pop();
    for _ in 0..400 {
        world.now += Duration::from_millis(100);
        world.exchange();
    }
    assert!(world.members["viv"].seen.iter().any(|e| matches!(e, SfuEvent::ConnectionFailed)), "the viewer heard its media failed");
}

#[test]
fn a_viewer_keeps_its_source_when_someone_who_joined_earlier_starts_publishing() {
    let mut world = World::new();
    world.join("alice", true);
    world.join("bob", true);
    let bob = world.announce_vp8("bob", 0xB1);
    world.join_viewer("viv", None);
    world.run(Duration::from_millis(300));
    send_run(&mut world, "bob", bob, 0xB1, 2..12);
    let alice = world.announce_vp8("alice", 0xA1);
    send_run(&mut world, "alice", alice, 0xA1, 2..12);
    send_run(&mut world, "bob", bob, 0xB1, 12..22);
    let received = world.received("viv");
    assert_eq!(received.len(), 20, "Bob's packets, and none of Alice's");
    assert!(received.iter().zip(2..).all(|((_, p), sequence)| p.payload == payload(sequence)));
}

#[test]
fn a_track_has_the_source_its_publisher_said_for_its_section_and_nothing_else_is_kept() {
    let mut world = World::new();
    world.join("bob", false);
    world.join("alice", true);
    let client = world.new_client();
    let sender = world.clients[client].pc.add_track(vp8_track("alice", "screen", 0xA1)).expect("track");
    let said = HashMap::from([("0".to_owned(), TrackSource::ScreenShare), ("junk".to_owned(), TrackSource::Camera)]);
    world.negotiate_publisher_saying("alice", client, said);
    world.members.get_mut("alice").expect("member").publisher = Some(client);
    world.run(Duration::from_millis(300));
    world.send_rtp("alice", sender, 0xA1, 1);
    world.run(Duration::from_millis(100));
    let published = world.members["bob"].seen.iter().find_map(|e| match e {
        SfuEvent::TrackPublished(info) => Some(info.source),
        _ => None,
    });
    assert_eq!(published, Some(TrackSource::ScreenShare));
    let key = world.engine.known(&world.members["alice"].id).expect("alice");
    assert_eq!(world.engine.participants[&key].sources.len(), 1, "only the offer's sending sections are kept");
}

/// The speakers `name` was last told of.
fn last_speakers(world: &World, name: &str) -> Option<Vec<String>> {
    world.members[name].seen.iter().rev().find_map(|e| match e {
        SfuEvent::ActiveSpeakers(speakers) => Some(speakers.iter().map(|(id, _)| id.to_string()).collect()),
        _ => None,
    })
}

#[test]
fn the_room_hears_who_speaks_and_when_they_stop_at_most_every_round() {
    let mut world = World::new();
    world.join("bob", false);
    world.join("alice", true);
    let alice = world.publish_opus("alice", 0xA0);
    world.join("carol", true);
    let carol = world.publish_opus("carol", 0xC0);
    world.run(Duration::from_millis(300));
    // A second of Alice at -30 dBov and Carol at -70 (background noise), a packet each 20 ms.
    for sequence in 1..50 {
        world.send_audio("alice", alice, 0xA0, sequence, 30);
        world.send_audio("carol", carol, 0xC0, sequence, 70);
        world.run(Duration::from_millis(20));
    }
    assert_eq!(last_speakers(&world, "bob"), Some(vec!["alice".to_owned()]), "Alice speaks, Carol does not");
    let told = world.members["bob"].seen.iter().filter(|e| matches!(e, SfuEvent::ActiveSpeakers(_))).count();
    assert_eq!(told, 1, "told once, not every round");
    // Alice falls silent.
    for sequence in 50..100 {
        world.send_audio("alice", alice, 0xA0, sequence, 127);
        world.run(Duration::from_millis(20));
    }
    assert_eq!(last_speakers(&world, "bob"), Some(vec![]), "nobody speaks");
    assert_eq!(last_speakers(&world, "alice"), Some(vec![]), "the speaker hears it too");
}

/// The RIDs of [`World::publish_simulcast`]'s layers, lowest first.
const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// The VP8 payload of simulcast `layer`'s packet `number` (one packet per frame): its
/// descriptor with picture ID and TL0PICIDX `number`, then 100, 300 or 1,100 bytes of
/// frame (about 25, 75 and 265 kbit/s at 30 frames a second). A keyframe's header gives
/// the layer's size: 320x180, 640x360 or 1280x720.
fn layer_payload(layer: usize, number: u16, keyframe: bool) -> Bytes {
    let mut payload = crate::vp8::tests::payload(number, number as u8, true, keyframe);
    if keyframe {
        let descriptor = crate::vp8::Descriptor::parse(&payload).expect("VP8").len;
        payload.truncate(usize::from(descriptor));
        let [width, height] = [320u16 << layer, 180 << layer].map(u16::to_le_bytes);
        payload.extend_from_slice(&[0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, width[0], width[1], height[0], height[1]]);
    }
    payload.resize(payload.len() + [100, 300, 1100][layer], layer as u8);
    Bytes::from(payload)
}

/// Sends frame `frame` of each of `layers` (one packet each, 33 ms apart), starting a
/// keyframe on those `keyframe` names, and lets 33 ms pass. Each layer numbers its packets
/// and pictures from a base of its own.
fn send_layers(world: &mut World, sender: RTCRtpSenderId, ssrcs: [u32; 3], frame: u16, layers: &[usize], keyframe: &[usize]) {
    for &layer in layers {
        let number = 1000 * layer as u16 + frame;
        let payload = layer_payload(layer, number, keyframe.contains(&layer));
        world.send_vp8("alice", sender, ssrcs[layer], number, Some(SIMULCAST_RIDS[layer]), payload);
    }
    world.run(Duration::from_millis(33));
}

/// A room where `subscribers` (each with RTX or not) joined before Alice, who then published
/// one VP8 track of three simulcast layers with `ssrcs` ([`World::publish_simulcast`]).
fn simulcast_room(subscribers: &[(&'static str, bool)], ssrcs: [u32; 3]) -> (World, RTCRtpSenderId) {
    let mut world = World::new();
    for &(name, rtx) in subscribers {
        world.rtx_clients = rtx;
        world.join(name, false);
    }
    world.rtx_clients = false;
    world.join("alice", true);
    let sender = world.publish_simulcast("alice", ssrcs);
    world.run(Duration::from_millis(300));
    (world, sender)
}

/// The PLIs `name`'s publisher connection received for the stream `ssrc`.
fn plis_for(world: &World, name: &str, ssrc: u32) -> usize {
    let client = &world.clients[world.members[name].publisher.expect("publishing")];
    client.rtcp_of::<PictureLossIndication>().filter(|pli| pli.media_ssrc == ssrc).count()
}

/// What Bob received since `from`: outgoing sequence number, VP8 picture ID and TL0PICIDX,
/// and whether the packet starts a keyframe.
fn received_pictures(world: &World, from: usize) -> Vec<(u16, u16, u8, bool)> {
    world.received("bob")[from..]
        .iter()
        .map(|(_, packet)| {
            let descriptor = crate::vp8::Descriptor::parse(&packet.payload).expect("VP8");
            let picture = descriptor.picture_id.expect("picture id").value;
            (packet.header.sequence_number, picture, descriptor.tl0_pic_idx.expect("TL0PICIDX").1, descriptor.keyframe_start)
        })
        .collect()
}

#[test]
fn a_simulcast_subscriber_gets_one_layer_switched_at_keyframes_with_its_numbers_continued() {
    let ssrcs = [0x51, 0x52, 0x53];
    let (mut world, sender) = simulcast_room(&[("bob", false)], ssrcs);
    let all = [0, 1, 2];
    // Every layer sends; the browser's first keyframes went before Bob's subscription was
    // negotiated, so the server asks for one of the top layer.
    for frame in 1..=30 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 1 { &all } else { &[] });
    }
    assert!(world.received("bob").is_empty(), "nothing before a keyframe of the layer Bob is to get");
    assert!(plis_for(&world, "alice", ssrcs[2]) >= 1, "a keyframe of the top layer was asked for");
    assert_eq!(plis_for(&world, "alice", ssrcs[0]) + plis_for(&world, "alice", ssrcs[1]), 0, "and of no other");
    for frame in 31..=40 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 31 { &[2] } else { &[] });
    }
    let top = received_pictures(&world, 0);
    let expected: Vec<_> = (2031..=2040u16).map(|n| (n, n, n as u8, n == 2031)).collect();
    assert_eq!(top, expected, "the top layer from its keyframe, as sent");
    assert!(world.received("bob").iter().all(|(_, p)| p.header.ssrc == world.received("bob")[0].1.header.ssrc), "one stream");

    // The top layer stops (the browser's uplink shrank): Bob moves to the middle one at its
    // next keyframe, which the server asks for.
    let plis_before = plis_for(&world, "alice", ssrcs[1]);
    for frame in 41..=60 {
        send_layers(&mut world, sender, ssrcs, frame, &[0, 1], &[]);
    }
    assert!(plis_for(&world, "alice", ssrcs[1]) > plis_before, "a keyframe of the middle layer was asked for");
    let seen = world.received("bob").len();
    assert_eq!(seen, 10, "nothing of the lower layers before their keyframe");
    for frame in 61..=70 {
        send_layers(&mut world, sender, ssrcs, frame, &[0, 1], if frame == 61 { &[1] } else { &[] });
    }
    let middle = received_pictures(&world, seen);
    let expected: Vec<_> = (2041..=2050u16).map(|n| (n, n, n as u8, n == 2041)).collect();
    assert_eq!(middle, expected, "sequence numbers, picture IDs and TL0PICIDX go on from the top layer's");
    for (index, (_, packet)) in world.received("bob")[seen..].iter().enumerate() {
        let sent = layer_payload(1, 1061 + index as u16, index == 0);
        assert_eq!(packet.payload[5..], sent[5..], "the frame itself is forwarded as sent");
    }

    // The top layer comes back with a keyframe: Bob is back on it at once.
    let seen = world.received("bob").len();
    send_layers(&mut world, sender, ssrcs, 71, &[2, 1, 0], &[2]);
    send_layers(&mut world, sender, ssrcs, 72, &[2, 1, 0], &[]);
    assert_eq!(received_pictures(&world, seen), [(2051, 2051, 2051u16 as u8, true), (2052, 2052, 2052u16 as u8, false)]);
}

#[test]
fn a_subscriber_whose_downlink_loses_its_packets_is_moved_down_then_probed_and_moved_back_up_once_it_carries_them() {
    let ssrcs = [0x61, 0x62, 0x63];
    let (mut world, sender) = simulcast_room(&[("bob", true), ("carol", false)], ssrcs);
    let all = [2, 1, 0];
    for frame in 1..=30 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 1 || frame == 20 { &all } else { &[] });
    }
    for name in ["bob", "carol"] {
        let top = world.received(name).last().map(|(_, p)| p.payload.clone());
        assert_eq!(top, Some(layer_payload(2, 2030, false)), "{name} is on the top layer");
    }
    // Bob's link loses most of what he is sent: his receiver reports say so three times a
    // second, for two seconds.
    let media_ssrc = world.received("bob")[0].1.header.ssrc;
    for frame in 31..=90 {
        if frame % 10 == 1 {
            world.report_loss("bob", media_ssrc, 0.9);
        }
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame % 30 == 0 { &all } else { &[] });
    }
    let mut reported = world.wire_log.len();
    let estimate = world.estimate("bob").expect("an estimate");
    assert!(estimate < 200_000.0, "{estimate}");
    // Frame 90 is a keyframe of every layer; Bob's picture numbers run on from the top
    // layer's, so his frame is compared past them.
    let last = |world: &World, name: &str| world.received(name).last().map(|(_, p)| p.payload.slice(5..));
    assert_eq!(last(&world, "bob"), Some(layer_payload(0, 90, true).slice(5..)), "Bob is on the layer his link carries");
    assert_eq!(last(&world, "carol"), Some(layer_payload(2, 2090, true).slice(5..)), "Carol keeps the top layer");
    assert_eq!(world.estimate("carol").map(|e| e >= 2_000_000.0), Some(true), "Carol's estimate is her own");

    // Then his link carries everything, 20 ms late, and his reports say so: the server
    // probes it with padding on his repair stream, finds the room, and moves him back up at
    // a keyframe once the room has lasted a second.
    let media: Vec<u32> = world.received("bob").iter().map(|(_, p)| p.header.ssrc).collect();
    let probed_from = world.wire_log.len();
    for frame in 91..=240 {
        if frame % 30 == 1 {
            world.report_loss("bob", media_ssrc, 0.0);
        }
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame % 30 == 0 { &all } else { &[] });
        if frame % 3 == 0 {
            reported = world.report("bob", reported, |_, at| Some(at + Duration::from_millis(20)));
        }
    }
    let bob = world.clients[world.members["bob"].subscriber].addr;
    let padding: Vec<&WireRtp> = world.wire_log[probed_from..].iter().filter(|w| w.to == bob && !media.contains(&w.ssrc)).collect();
    assert!(padding.len() >= 5, "at least a cluster of padding: {}", padding.len());
    assert!(padding.iter().all(|w| w.len == 12 + 8 + 255 + 16), "padding only, numbered: {padding:?}");
    let estimate = world.estimate("bob").expect("an estimate");
    assert!(estimate >= 300_000.0, "the probes found room: {estimate}");
    assert_eq!(last(&world, "bob"), Some(layer_payload(2, 2240, true).slice(5..)), "Bob is back on the top layer");
}

#[test]
fn a_subscriber_gets_no_larger_layer_than_its_view_needs_and_nothing_while_it_has_paused() {
    let ssrcs = [0x71, 0x72, 0x73];
    let (mut world, sender) = simulcast_room(&[("bob", false)], ssrcs);
    let all = [2, 1, 0];
    for frame in 1..=30 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 1 || frame == 20 { &all } else { &[] });
    }
    let last = |world: &World| world.received("bob").last().map(|(_, p)| p.payload.slice(5..));
    assert_eq!(last(&world), Some(layer_payload(2, 2030, false).slice(5..)), "Bob is on the top layer");
    let track = world.published_track("bob");

    // Bob shows the track in a thumbnail: the lowest layer fills it, and he is moved to it
    // at its keyframe, which the server asks for.
    let size = Some(FrameSize { width: 300, height: 200 });
    world.set_view("bob", track, View { paused: false, size }).expect("Bob receives the track");
    for frame in 31..=40 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 35 { &[0] } else { &[] });
    }
    assert!(plis_for(&world, "alice", ssrcs[0]) >= 1, "a keyframe of the lowest layer was asked for");
    assert_eq!(last(&world), Some(layer_payload(0, 40, false).slice(5..)), "Bob is on the lowest layer");
    let size = Some(FrameSize { width: 600, height: 400 });
    world.set_view("bob", track, View { paused: false, size }).expect("Bob receives the track");
    for frame in 41..=45 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 42 { &all } else { &[] });
    }
    assert_eq!(last(&world), Some(layer_payload(1, 1045, false).slice(5..)), "a larger box: the middle layer");

    // He hides it: nothing of it is sent. Shown again at any size, it resumes on the top
    // layer at its keyframe, numbered on from the last packet he had.
    world.set_view("bob", track, View { paused: true, size: None }).expect("Bob receives the track");
    let before = world.received("bob").len();
    let numbered = world.received("bob")[before - 1].1.header.sequence_number;
    for frame in 46..=60 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 50 { &all } else { &[] });
    }
    assert_eq!(world.received("bob").len(), before, "nothing while paused");
    let plis = plis_for(&world, "alice", ssrcs[2]);
    world.set_view("bob", track, View::default()).expect("Bob receives the track");
    for frame in 61..=70 {
        send_layers(&mut world, sender, ssrcs, frame, &all, if frame == 65 { &[2] } else { &[] });
    }
    assert!(plis_for(&world, "alice", ssrcs[2]) > plis, "a keyframe of the top layer was asked for");
    let resumed = &world.received("bob")[before..];
    assert_eq!(resumed.len(), 6, "from the top layer's keyframe on");
    assert_eq!(resumed[0].1.header.sequence_number, numbered.wrapping_add(1), "numbered on");
    assert_eq!(resumed[0].1.payload.slice(5..), layer_payload(2, 2065, true).slice(5..));

    // A track Bob does not receive, and one that is no one's.
    let err = world.set_view("alice", track, View::default());
    assert!(matches!(err, Err(SfuError::NotSubscribed)), "Alice does not receive her own track: {err:?}");
    let err = world.set_view("bob", TrackId::parse("TR_0000000000000000").expect("a track id"), View::default());
    assert!(matches!(err, Err(SfuError::NotSubscribed)), "{err:?}");
}

/// The dynacast orders `name` heard: which of its layers (by RID) to send.
fn layer_orders(world: &World, name: &str) -> Vec<Vec<(String, bool)>> {
    let orders = world.members[name].seen.iter().filter_map(|e| match e {
        SfuEvent::PublishLayers { active, .. } => Some(active.clone()),
        _ => None,
    });
    orders.collect()
}

#[test]
fn a_publisher_is_told_to_pause_the_layers_no_one_needs_and_to_resume_them_when_needed() {
    let ssrcs = [0x81, 0x82, 0x83];
    let (mut world, sender) = simulcast_room(&[("bob", false)], ssrcs);
    for frame in 1..=30 {
        send_layers(&mut world, sender, ssrcs, frame, &[2, 1, 0], if frame == 1 { &[2, 1, 0] } else { &[] });
    }
    let track = world.published_track("bob");
    let layers = |sent: [bool; 3]| vec![SIMULCAST_RIDS.map(str::to_owned).into_iter().zip(sent).collect::<Vec<_>>()];
    assert!(layer_orders(&world, "alice").is_empty(), "Bob needs every layer, which Alice sends from the start");

    // Bob shows the track in a thumbnail: the layers above the lowest are paused once no one
    // has needed them for three seconds.
    let size = Some(FrameSize { width: 320, height: 180 });
    world.set_view("bob", track, View { paused: false, size }).expect("Bob receives the track");
    world.run(Duration::from_millis(2500));
    assert!(layer_orders(&world, "alice").is_empty(), "not yet");
    world.run(Duration::from_millis(1000));
    assert_eq!(layer_orders(&world, "alice"), layers([true, false, false]));

    // He shows it large again: every layer resumes at the next round.
    world.set_view("bob", track, View::default()).expect("Bob receives the track");
    world.run(Duration::from_millis(400));
    assert_eq!(layer_orders(&world, "alice")[1..], layers([true, true, true]));

    // He pauses it: no one needs any layer. A recording then needs every one.
    world.set_view("bob", track, View { paused: true, size: None }).expect("Bob receives the track");
    world.run(Duration::from_millis(3500));
    assert_eq!(layer_orders(&world, "alice")[2..], layers([false, false, false]));
    let (sink, _tapped) = mpsc::unbounded_channel();
    let (reply, rx) = oneshot::channel();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    world.command(Command::AttachTap { room: RoomId::new("demo"), id: 1, sink, queued, capacity: 10, reply }, rx);
    world.run(Duration::from_millis(400));
    assert_eq!(layer_orders(&world, "alice")[3..], layers([true, true, true]));
}
