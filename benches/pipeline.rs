//! The whole server-side forwarding path, without sockets: a publisher's SRTP datagram is
//! opened by its connection's ingress (AEAD AES-128-GCM in place, with the receiver reports,
//! NACKs and transport-wide feedback it keeps), fanned out by the forwarder and
//! SRTP-protected for 1, 10 or 100 subscriber connections by their egress, as the worker
//! does it. Client connections live
//! in memory and are connected by handing datagrams across, so no packet reaches a network.
//! Throughput is forwarded packets per second on one core.
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::egress::Egress;
use sfu::forwarder::{Forwarder, ForwarderSettings, MediaKind, Negotiated, Outgoing};
use sfu::ingress::{Ingress, Taken};
use sfu::peer::{add_host_candidates, build_peer, HostCandidate, PeerRole, PeerSettings, SrtpProfile};
use sfu::remote::Remote;
use sfu::{ParticipantKey, TrackId};

const FAN_OUT: [usize; 3] = [1, 10, 100];
const PAYLOAD_BYTES: usize = 1100;
const PUBLISHER_SSRC: u32 = 0x5EED;

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec { mime_type: "video/VP8".into(), clock_rate: 90_000, channels: 0, sdp_fmtp_line: String::new(), rtcp_feedback: vec![] }
}

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 99, 0, host], port))
}

/// A client connection and the server connection it talks to, joined in memory.
struct Pair {
    client: RTCPeerConnection,
    server: RTCPeerConnection,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
}

fn carry(from: &mut RTCPeerConnection, to: &mut RTCPeerConnection, local: SocketAddr, peer: SocketAddr, now: Instant) -> bool {
    let mut moved = false;
    while let Some(out) = from.poll_write() {
        moved = true;
        let transport = TransportContext { local_addr: local, peer_addr: peer, ecn: None, transport_protocol: TransportProtocol::UDP };
        let _ = to.handle_read(TaggedBytesMut { now, transport, message: out.message });
    }
    moved
}

fn tick(pc: &mut RTCPeerConnection, now: Instant) -> bool {
    if pc.poll_timeout().is_some_and(|t| t <= now) {
        let _ = pc.handle_timeout(now);
    }
    let mut connected = false;
    while let Some(event) = pc.poll_event() {
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected) = event {
            connected = true;
        }
    }
    while pc.poll_read().is_some() {}
    connected
}

impl Pair {
    fn connect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut client_up, mut server_up) = (false, false);
        while !(client_up && server_up) {
            assert!(Instant::now() < deadline, "in-memory connection did not come up");
            let now = Instant::now();
            carry(&mut self.client, &mut self.server, self.server_addr, self.client_addr, now);
            carry(&mut self.server, &mut self.client, self.client_addr, self.server_addr, now);
            client_up |= tick(&mut self.client, now);
            server_up |= tick(&mut self.server, now);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn client(client_addr: SocketAddr) -> (RTCPeerConnection, SocketAddr) {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let mut pc = RTCPeerConnectionBuilder::new().with_media_engine(media).build(Instant::now()).expect("client");
    add_host_candidates(&mut pc, &[HostCandidate::Udp(client_addr)]).expect("host candidate");
    (pc, client_addr)
}

fn server_settings() -> PeerSettings {
    PeerSettings { worker: 0, candidates: vec![addr(1, 50_000)], tcp_candidates: vec![], srtp_profiles: vec![SrtpProfile::AeadAes128Gcm] }
}

fn track(stream: &str, id: &str, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        stream.into(),
        id.into(),
        id.into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            active: true,
            codec: vp8(),
            ..Default::default()
        }],
    )
}

fn payload_type(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> u8 {
    let mut sender = pc.rtp_sender(sender).expect("sender");
    sender.get_parameters().rtp_parameters.codecs.iter().find(|c| c.rtp_codec.mime_type == "video/VP8").expect("vp8").payload_type
}

/// One offer/answer exchange.
fn negotiate(offerer: &mut RTCPeerConnection, answerer: &mut RTCPeerConnection) {
    let offer = offerer.create_offer(None).expect("offer");
    offerer.set_local_description(Instant::now(), offer.clone()).expect("local offer");
    answerer.set_remote_description(Instant::now(), RTCSessionDescription::offer(offer.sdp).expect("sdp")).expect("remote offer");
    let answer = answerer.create_answer(None).expect("answer");
    answerer.set_local_description(Instant::now(), answer.clone()).expect("local answer");
    offerer.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer.sdp).expect("sdp")).expect("remote answer");
}

/// The publisher: the client offers a VP8 track, the server answers; the server's ingress
/// is keyed and opens the track's SSRC.
fn publisher(track_id: &TrackId) -> (Pair, RTCRtpSenderId, Ingress) {
    let (mut client, client_addr) = client(addr(2, 40_000));
    let sender = client.add_track(track("pub", "cam", PUBLISHER_SSRC)).expect("track");
    let built = build_peer(Instant::now(), PeerRole::Publisher, &server_settings(), &mut rand::rng()).expect("server");
    let mut server = built.pc;
    negotiate(&mut client, &mut server);
    let mut pair = Pair { client, server, client_addr, server_addr: addr(1, 50_000) };
    pair.connect();
    let mut ingress = Ingress::new(built.keys, 1);
    ingress.start(Instant::now(), &mut pair.server, Instant::now() + Duration::from_secs(1)).expect("ingress keys");
    ingress.add_stream(Instant::now(), PUBLISHER_SSRC, None, *track_id, 90_000, true);
    (pair, sender, ingress)
}

/// A subscriber: the server offers one sendonly VP8 track, the client answers; its egress
/// is keyed, and checked once by the client decrypting a packet it protected. With the
/// track's SSRC and the payload type the client gave VP8.
fn subscriber(index: usize) -> (Pair, Egress, u32, u8) {
    let (mut client, client_addr) = client(addr(3, 40_001 + index as u16));
    let built = build_peer(Instant::now(), PeerRole::Subscriber, &server_settings(), &mut rand::rng()).expect("server");
    let mut server = built.pc;
    let ssrc = 0x1000 + index as u32;
    let sender = server.add_track(track("pub", "pub/cam", ssrc)).expect("track");
    if let Some(mut transceiver) = server.rtp_transceiver(RTCRtpTransceiverId::from(sender)) {
        transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
    }
    negotiate(&mut server, &mut client);
    let mut pair = Pair { client, server, client_addr, server_addr: addr(1, 50_000) };
    pair.connect();
    let mut egress = Egress::new(built.keys);
    egress.start(Instant::now(), &mut pair.server, Instant::now() + Duration::from_secs(1)).expect("egress keys");
    egress.set_remote(Remote::Udp(client_addr));
    let pt = payload_type(&mut pair.server, sender);
    let probe = rtp::Packet {
        header: rtp::header::Header { version: 2, payload_type: pt, ssrc, sequence_number: 1, ..Default::default() },
        payload: Bytes::from_static(b"probe"),
    };
    let (datagram, _) = egress.protect(Instant::now(), &probe, None).expect("protect");
    let transport =
        TransportContext { local_addr: client_addr, peer_addr: pair.server_addr, ecn: None, transport_protocol: TransportProtocol::UDP };
    pair.client.handle_read(TaggedBytesMut { now: Instant::now(), transport, message: BytesMut::from(datagram) }).expect("client reads");
    let decrypted = std::iter::from_fn(|| pair.client.poll_read())
        .any(|m| matches!(m.message, RTCMessage::RtpPacket(_, p) if p.payload == probe.payload));
    assert!(decrypted, "the client decrypts what the egress protected");
    (pair, egress, ssrc, pt)
}

fn pipeline(c: &mut Criterion) {
    let payload = Bytes::from(vec![0xAB; PAYLOAD_BYTES]);
    let mut group = c.benchmark_group("server_pipeline");
    group.sample_size(30);
    for n in FAN_OUT {
        let track_id = TrackId::next();
        let (mut publisher, publisher_sender, mut ingress) = publisher(&track_id);
        let publisher_pt = payload_type(&mut publisher.client, publisher_sender);
        let mut forwarder = Forwarder::new(ForwarderSettings::default());
        forwarder.add_track(track_id, ParticipantKey::next(), MediaKind::Video, 90_000);
        let mut subscribers = Vec::new();
        for i in 0..n {
            let (pair, egress, ssrc, pt) = subscriber(i);
            let id = ParticipantKey::next();
            forwarder.subscribe(&track_id, id, ssrc, ());
            forwarder.set_negotiated(Instant::now(), &track_id, &id, Negotiated { payload_type: pt, rtx: None });
            subscribers.push((pair, egress));
        }
        let mut seq = 0u16;
        let mut out: Vec<Outgoing> = Vec::with_capacity(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("decrypt+forward+encrypt", n), |b| {
            b.iter_batched(
                || {
                    // The publisher client produces the next SRTP datagram (not timed).
                    seq = seq.wrapping_add(1);
                    let packet = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: publisher_pt,
                            ssrc: PUBLISHER_SSRC,
                            sequence_number: seq,
                            timestamp: u32::from(seq) * 3000,
                            ..Default::default()
                        },
                        payload: payload.clone(),
                    };
                    let now = Instant::now();
                    publisher.client.rtp_sender(publisher_sender).expect("sender").write_rtp(now, packet).expect("write");
                    let mut datagrams: Vec<BytesMut> = Vec::new();
                    while let Some(out) = publisher.client.poll_write() {
                        datagrams.push(out.message);
                    }
                    datagrams
                },
                |datagrams| {
                    let now = Instant::now();
                    for datagram in datagrams {
                        match ingress.take(now, datagram) {
                            Taken::Media(track, packet) => forwarder.forward(now, &track, packet, &mut out),
                            Taken::Engine(_) | Taken::Padding => panic!("the track's SSRC is the ingress's"),
                            Taken::Refused(err) => panic!("refused: {err}"),
                        }
                    }
                    for (outgoing, (_, egress)) in out.drain(..).zip(subscribers.iter_mut()) {
                        let (datagram, to) = egress.protect(now, &outgoing.packet, outgoing.patch.as_ref()).expect("forward");
                        black_box((datagram.len(), to));
                    }
                    if ingress.deadline().is_some_and(|due| due <= now) {
                        let mut feedback = Vec::new();
                        ingress.due_feedback(now, &mut feedback);
                        let message = RTCMessage::RtcpPacket(String::new(), feedback);
                        publisher.server.handle_write(TaggedRTCMessage { now, message }).expect("feedback");
                        while publisher.server.poll_write().is_some() {}
                    }
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
