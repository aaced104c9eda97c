//! Entry points of the fuzz targets (`fuzz/`) and of the tests that replay their corpus: each
//! takes any bytes and must neither panic nor hang, nor grow without bound.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, Unmarshal};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Command, Engine, EngineSettings, Joining, Transmit};
use crate::feedback::Feedback;
use crate::forwarder::ForwarderSettings;
use crate::metrics::Counters;
use crate::peer::{PeerRole, PeerSettings};
use crate::srtp::gcm::{GcmReceiver, GcmRtcpReceiver, GcmSender, KEY_LEN, SALT_LEN};
use crate::{stun, MediaGrants, ParticipantId, RoomId, SrtpProfile};

/// A datagram as the worker's demultiplexer peeks at it before the engine: the STUN test,
/// the local ufrag that routes it, USE-CANDIDATE and MESSAGE-INTEGRITY.
pub fn stun(data: &[u8]) {
    if stun::is_stun(data) {
        let _ = stun::local_ufrag(data);
        let _ = stun::nominates(data);
        let _ = stun::integrity_holds(data, &stun::integrity_key("a-fuzzed-ice-password"));
    }
}

/// An SRTP and an SRTCP datagram opened with fixed keys (they fail authentication, as a
/// forgery does); and,
/// when the input reads as an RTP packet of version 2, that packet sealed and opened again,
/// which must give it back as it was.
pub fn srtp(data: &[u8]) {
    let provider = match rtc::crypto::default_provider() {
        Ok(provider) => provider,
        Err(_) => return,
    };
    let (key, salt) = ([0x5A; KEY_LEN], [0xC3; SALT_LEN]);
    let (Ok(mut sender), Ok(mut receiver)) =
        (GcmSender::new(provider.crypto(), &key, &salt), GcmReceiver::new(provider.crypto(), &key, &salt))
    else {
        return;
    };
    let _ = receiver.open(&mut data.to_vec());
    if let Ok(mut rtcp_receiver) = GcmRtcpReceiver::new(provider.crypto(), &key, &salt) {
        let _ = rtcp_receiver.open(&mut data.to_vec());
    }
    // The egress seals only what a receiver opened, RTP version 2 (rtc's parser takes any).
    let Ok(packet) = Packet::unmarshal(&mut &data[..]) else { return };
    if packet.header.version != 2 {
        return;
    }
    let Ok(clear) = packet.marshal() else { return };
    let mut sealed = Vec::new();
    if sender.protect(&packet, &mut sealed, |_| {}).is_ok() {
        let opened = receiver.open(&mut sealed).expect("what the sender sealed opens");
        assert_eq!(&sealed[..opened.end], &clear[..], "and is the packet sealed");
    }
}

/// An RTCP compound packet read as the engine reads a subscriber's (a NACK names at most 17
/// packets an entry, transport-wide feedback exactly the packets it counts, round trips from
/// any report block), and parsed by `rtc` as a publisher's is.
pub fn rtcp(data: &[u8]) {
    let arrival = crate::round_trip::ntp_middle(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    for feedback in crate::feedback::read(data) {
        match feedback {
            Feedback::Nack { lost, .. } => assert!(lost.count() <= 17 * data.len() / 4, "an entry names at most 17 packets"),
            Feedback::Reports(blocks) => {
                for block in blocks {
                    let _ = crate::round_trip::round_trip(arrival, block.last_sender_report, block.delay);
                }
            }
            Feedback::TransportWide(feedback) => {
                assert_eq!(feedback.packets().count(), usize::from(feedback.status_count()), "every packet counted is read");
            }
            Feedback::KeyframeRequest { .. } => {}
        }
    }
    if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &data[..]) {
        for packet in &packets {
            let _ = packet.marshal();
        }
    }
}

/// Discards what the engine sends.
struct Nowhere;

impl Transmit for Nowhere {
    fn transmit(&mut self, _: &[u8], _: crate::remote::Remote) {}
}

/// The server's media address in [`engine`].
const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 50_000);

/// An engine with one participant joined, kept between runs as a server keeps its rooms.
struct Fixture {
    engine: Engine,
    now: Instant,
    alice: ParticipantId,
    _events: mpsc::UnboundedReceiver<crate::SfuEvent>,
}

impl Fixture {
    fn new() -> Self {
        let now = Instant::now();
        let settings = EngineSettings {
            peers: PeerSettings {
                worker: 0,
                candidates: vec![SERVER],
                tcp_candidates: vec![],
                srtp_profiles: vec![SrtpProfile::AeadAes128Gcm],
            },
            forwarder: ForwarderSettings::default(),
            max_tracks: 16,
        };
        let wall_clock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut engine = Engine::new(settings, Counters::default(), now, wall_clock, StdRng::seed_from_u64(7));
        let (events, _events) = mpsc::unbounded_channel();
        let (reply, _) = oneshot::channel();
        let alice = ParticipantId::new("alice");
        let grants = MediaGrants { publish: true, subscribe: true };
        let join = Command::Join {
            joining: Joining { room: RoomId::new("fuzz"), participant: alice.clone(), identity: "alice".into(), grants, events },
            reply,
        };
        engine.handle_command(now, join, &mut Nowhere);
        Self { engine, now, alice, _events }
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// What reaches the engine from the network and from a joined client's signaling: the input
/// is a sequence of records, each a kind byte, a two-byte length and that many bytes: a datagram
/// from one of a few client addresses, a publisher offer, a subscriber answer, a remote
/// candidate, or time passing (the engine's timers run).
pub fn engine(data: &[u8]) {
    FIXTURE.with(|fixture| {
        let mut fixture = fixture.borrow_mut();
        // A panic of `rtc` that the engine isolated removed the participant: start again.
        if fixture.as_ref().is_some_and(|f| f.engine.known(&f.alice).is_err()) {
            *fixture = None;
        }
        let fixture = fixture.get_or_insert_with(Fixture::new);
        let mut rest = data;
        while let [kind, high, low, tail @ ..] = rest {
            let len = u16::from_be_bytes([*high, *low]);
            let (body, next) = tail.split_at(usize::from(len).min(tail.len()));
            rest = next;
            let text = || String::from_utf8_lossy(body).into_owned();
            let alice = fixture.alice.clone();
            let now = fixture.now;
            let engine = &mut fixture.engine;
            match kind % 5 {
                0 => {
                    let source = SocketAddr::from(([10, 0, 0, 2], 40_000 + u16::from(kind / 5)));
                    engine.handle_datagram(now, body, crate::remote::Remote::Udp(source), SERVER, &mut Nowhere);
                }
                1 => engine.handle_command(
                    now,
                    Command::PublisherOffer { participant: alice, sdp: text(), sources: Default::default(), reply: oneshot::channel().0 },
                    &mut Nowhere,
                ),
                2 => engine.handle_command(
                    now,
                    Command::SubscriberAnswer { participant: alice, sdp: text(), reply: oneshot::channel().0 },
                    &mut Nowhere,
                ),
                3 => {
                    let role = if kind & 0x80 == 0 { PeerRole::Publisher } else { PeerRole::Subscriber };
                    let candidate = RTCIceCandidateInit { candidate: text(), ..Default::default() };
                    engine.handle_command(
                        now,
                        Command::RemoteCandidate { participant: alice, role, candidate, reply: oneshot::channel().0 },
                        &mut Nowhere,
                    );
                }
                _ => {
                    fixture.now += Duration::from_millis(u64::from(len % 1000) * 10);
                    fixture.engine.handle_timeout(fixture.now);
                }
            }
            fixture.engine.flush(fixture.now, &mut Nowhere);
        }
    });
}
