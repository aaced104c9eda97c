//! Forwarding-table tests over a seeded lossy, reordering in-memory network.

use super::*;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const VIDEO_PT: u8 = 96;

fn track() -> TrackId {
    static TRACK: std::sync::OnceLock<TrackId> = std::sync::OnceLock::new();
    *TRACK.get_or_init(TrackId::next)
}

fn alice() -> ParticipantKey {
    static ALICE: std::sync::OnceLock<ParticipantKey> = std::sync::OnceLock::new();
    *ALICE.get_or_init(ParticipantKey::next)
}

/// Subscriber `n` (the same key each time it is asked for).
fn sub(n: usize) -> ParticipantKey {
    static SUBSCRIBERS: std::sync::OnceLock<Vec<ParticipantKey>> = std::sync::OnceLock::new();
    SUBSCRIBERS.get_or_init(|| (0..100).map(|_| ParticipantKey::next()).collect())[n]
}

fn video_packet(ssrc: u32, seq: u16, ts: u32) -> rtp::Packet {
    let mut payload = vec![0u8; 200];
    payload[..2].copy_from_slice(&seq.to_be_bytes());
    payload[2..6].copy_from_slice(&ssrc.to_be_bytes());
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 100,
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![rtp::header::Extension { id: 3, payload: Bytes::from_static(&[1, 2]) }],
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

fn negotiated(rtx: Option<RtxStream>) -> Negotiated {
    Negotiated { payload_type: VIDEO_PT, rtx }
}

/// A forwarder with one video track and `n` subscribers that have all negotiated.
fn room(n: usize, now: Instant) -> Forwarder {
    let mut f = Forwarder::new(ForwarderSettings::default());
    f.add_track(track(), alice(), MediaKind::Video, 90_000);
    for i in 0..n {
        f.subscribe(&track(), sub(i), 1000 + i as u32, ());
        f.set_negotiated(now, &track(), &sub(i), negotiated(None));
    }
    f
}

/// A link that drops and reorders packets, reproducibly from its seed.
struct LossyLink {
    rng: StdRng,
    loss: f64,
    reorder: f64,
}

impl LossyLink {
    fn new(seed: u64, loss: f64, reorder: f64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), loss, reorder }
    }

    fn carry<T>(&mut self, batch: Vec<T>) -> Vec<T> {
        let mut delivered: Vec<T> = batch.into_iter().filter(|_| !self.rng.random_bool(self.loss)).collect();
        for i in 1..delivered.len() {
            if self.rng.random_bool(self.reorder) {
                delivered.swap(i - 1, i);
            }
        }
        delivered
    }
}

#[test]
fn fans_out_to_every_subscriber_with_own_ssrc_and_identical_payload() {
    let now = Instant::now();
    let mut f = room(100, now);
    let mut out = Vec::new();
    for seq in 0..50u16 {
        let sent = video_packet(42, seq, u32::from(seq) * 3000);
        out.clear();
        f.forward(now, &track(), sent.clone(), &mut out);
        assert_eq!(out.len(), 100);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.subscriber, sub(i));
            assert_eq!(o.packet.header.ssrc, 1000 + i as u32);
            assert_eq!(o.packet.header.payload_type, VIDEO_PT);
            assert_eq!(o.packet.header.sequence_number, seq);
            assert!(!o.packet.header.extension && o.packet.header.extensions.is_empty());
            assert_eq!(o.packet.payload, sent.payload, "payload forwarded byte-identical");
        }
    }
}

#[test]
fn subscriber_waits_for_negotiation_before_receiving() {
    let now = Instant::now();
    let mut f = room(0, now);
    f.subscribe(&track(), sub(0), 5, ());
    let mut out = Vec::new();
    f.forward(now, &track(), video_packet(1, 1, 0), &mut out);
    assert!(out.is_empty());
    f.set_negotiated(now, &track(), &sub(0), negotiated(None));
    f.forward(now, &track(), video_packet(1, 2, 0), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn publisher_restart_keeps_subscriber_sequence_continuous() {
    let t0 = Instant::now();
    let mut f = room(2, t0);
    let mut seen: Vec<(u16, u32)> = Vec::new();
    let mut out = Vec::new();
    for seq in 60_000..60_100u16 {
        f.forward(t0, &track(), video_packet(1, seq, u32::from(seq) * 3000), &mut out);
    }
    // The publisher restarts: new SSRC, random sequence and timestamp base.
    let t1 = t0 + Duration::from_millis(40);
    for seq in 17..117u16 {
        f.forward(t1, &track(), video_packet(2, seq, 9_000_000 + u32::from(seq) * 3000), &mut out);
    }
    for o in out.iter().filter(|o| o.subscriber == sub(1)) {
        seen.push((o.packet.header.sequence_number, o.packet.header.timestamp));
    }
    assert_eq!(seen.len(), 200);
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "sequence numbers continue across the restart");
        assert!(pair[1].1.wrapping_sub(pair[0].1) > 0 && pair[1].1.wrapping_sub(pair[0].1) < 0x8000_0000, "timestamps advance");
    }
}

#[test]
fn nack_is_served_from_cache_over_a_lossy_reordering_link() {
    let now = Instant::now();
    let mut f = room(3, now);
    let mut link = LossyLink::new(7, 0.1, 0.1);
    // What each subscriber received, by outgoing sequence number.
    let mut received: Vec<BTreeMap<u16, Bytes>> = vec![BTreeMap::new(); 3];
    let mut sent_payloads = BTreeMap::new();
    let mut out = Vec::new();
    for seq in 0..300u16 {
        let p = video_packet(9, seq, u32::from(seq) * 3000);
        sent_payloads.insert(seq, p.payload.clone());
        f.forward(now, &track(), p, &mut out);
    }
    let mut in_flight = std::mem::take(&mut out);
    let mut rounds = 0;
    loop {
        for o in link.carry(std::mem::take(&mut in_flight)) {
            let idx = (o.packet.header.ssrc - 1000) as usize;
            received[idx].insert(o.packet.header.sequence_number, o.packet.payload);
        }
        let mut any_missing = false;
        for (i, got) in received.iter().enumerate() {
            let missing: Vec<u16> = (0..300u16).filter(|s| !got.contains_key(s)).collect();
            if !missing.is_empty() {
                any_missing = true;
                let found = f.on_nack(now, &track(), &sub(i), missing.iter().copied(), &mut in_flight);
                assert_eq!(found, missing.len(), "every lost packet is still cached");
            }
        }
        if !any_missing {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "retransmissions converge");
    }
    assert!(rounds >= 1, "the seeded link did lose packets");
    for got in &received {
        assert_eq!(got, &sent_payloads);
    }
}

#[test]
fn nack_for_packets_older_than_the_cache_finds_nothing() {
    let now = Instant::now();
    let mut f = room(1, now);
    let mut out = Vec::new();
    for seq in 0..3000u16 {
        f.forward(now, &track(), video_packet(9, seq, 0), &mut out);
    }
    out.clear();
    assert_eq!(f.on_nack(now, &track(), &sub(0), [5, 2999], &mut out), 1);
    assert_eq!(out[0].packet.header.sequence_number, 2999);
}

#[test]
fn keyframe_requests_from_many_subscribers_are_throttled() {
    let t0 = Instant::now();
    let mut f = room(50, t0);
    let mut out = Vec::new();
    f.forward(t0, &track(), video_packet(77, 1, 0), &mut out);
    let t1 = t0 + Duration::from_secs(1);
    let relayed: Vec<_> = (0..50).filter_map(|_| f.keyframe_request(t1, &track(), None)).collect();
    assert_eq!(relayed, vec![KeyframeRequest { publisher: alice(), track: track(), media_ssrc: 77 }]);
    assert!(f.keyframe_request(t1 + Duration::from_millis(499), &track(), None).is_none());
    assert!(f.keyframe_request(t1 + Duration::from_millis(500), &track(), None).is_some());
}

#[test]
fn subscriber_leaving_mid_stream_stops_only_its_packets() {
    let now = Instant::now();
    let mut f = room(3, now);
    let mut out = Vec::new();
    f.forward(now, &track(), video_packet(1, 1, 0), &mut out);
    assert_eq!(out.len(), 3);
    assert!(f.remove_participant(&sub(1)).is_empty(), "sub1 published nothing");
    out.clear();
    f.forward(now, &track(), video_packet(1, 2, 0), &mut out);
    let receivers: Vec<_> = out.iter().map(|o| o.subscriber).collect();
    assert_eq!(receivers, vec![sub(0), sub(2)]);
    assert_eq!(out[1].packet.header.sequence_number, 2);
}

#[test]
fn publisher_leaving_removes_its_tracks_and_names_their_subscribers() {
    let now = Instant::now();
    let mut f = room(2, now);
    let removed = f.remove_participant(&alice());
    let removed: Vec<_> =
        removed.into_iter().map(|(track, subs)| (track, subs.iter().map(|s| (s.subscriber, s.ssrc)).collect::<Vec<_>>())).collect();
    assert_eq!(removed, vec![(track(), vec![(sub(0), 1000), (sub(1), 1001)])]);
    let mut out = Vec::new();
    f.forward(now, &track(), video_packet(1, 1, 0), &mut out);
    assert!(out.is_empty());
    assert_eq!(f.subscription_count(), 0);
}

#[test]
fn nack_is_answered_on_the_rtx_stream_when_negotiated() {
    let now = Instant::now();
    let mut f = Forwarder::new(ForwarderSettings::default());
    f.add_track(track(), alice(), MediaKind::Video, 90_000);
    f.subscribe(&track(), sub(0), 1000, ());
    let rtx = RtxStream { ssrc: 2000, payload_type: 97 };
    f.set_negotiated(now, &track(), &sub(0), negotiated(Some(rtx)));
    let mut out = Vec::new();
    for seq in 500..510u16 {
        f.forward(now, &track(), video_packet(9, seq, u32::from(seq) * 3000), &mut out);
    }
    let originals: Vec<rtp::Packet> = out.drain(..).map(|o| o.packet).collect();
    assert_eq!(f.on_nack(now, &track(), &sub(0), [503, 507], &mut out), 2);
    for (i, (o, lost)) in out.iter().zip([503u16, 507]).enumerate() {
        let original = &originals[usize::from(lost - 500)];
        assert!(o.rtx);
        assert_eq!((o.packet.header.ssrc, o.packet.header.payload_type), (2000, 97));
        assert_eq!(o.packet.header.sequence_number, i as u16, "the RTX stream has its own sequence");
        assert_eq!(o.packet.header.timestamp, original.header.timestamp);
        assert_eq!(&o.packet.payload[..2], &lost.to_be_bytes(), "original sequence number first");
        assert_eq!(&o.packet.payload[2..], &original.payload[..]);
    }
}

#[test]
fn the_retransmission_window_follows_the_slowest_subscribers_round_trip() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut f = room(2, start);
    // 4 round trips of the slowest subscriber (150 ms): 600 ms, within 250 ms .. 1 s.
    f.set_round_trip(&sub(0), Duration::from_millis(20));
    f.set_round_trip(&sub(1), Duration::from_millis(150));
    let mut out = Vec::new();
    for seq in 0..=100u16 {
        f.forward(at(u64::from(seq) * 10), &track(), video_packet(9, seq, 0), &mut out);
    }
    out.clear();
    assert_eq!(f.on_nack(at(1000), &track(), &sub(0), [35, 45], &mut out), 1, "650 ms old: gone; 550 ms old: kept");
    assert_eq!(out[0].packet.header.sequence_number, 45);
    // The slow subscriber's link got faster: back to the least window, 250 ms.
    f.set_round_trip(&sub(1), Duration::from_millis(10));
    f.forward(at(1010), &track(), video_packet(9, 101, 0), &mut out);
    out.clear();
    assert_eq!(f.on_nack(at(1010), &track(), &sub(1), [70, 80], &mut out), 1, "310 ms old: gone; 210 ms old: kept");
    assert_eq!(out[0].packet.header.sequence_number, 80);
}

#[test]
fn a_nack_is_deduplicated_capped_and_held_to_the_retransmission_budget() {
    use crate::retransmit::{BUDGET_SHARE, MAX_PACKETS_PER_NACK};
    let t0 = Instant::now();
    let mut f = room(1, t0);
    let mut out = Vec::new();
    // Two seconds of a track at 500 packets/s of 212 bytes (106 KB/s).
    for seq in 0..1000u16 {
        f.forward(t0 + Duration::from_millis(u64::from(seq) * 2), &track(), video_packet(9, seq, 0), &mut out);
    }
    let now = t0 + Duration::from_millis(2000);
    out.clear();
    assert_eq!(f.on_nack(now, &track(), &sub(0), std::iter::repeat_n(990, 1000), &mut out), 1, "each packet once");
    out.clear();
    let found = f.on_nack(now, &track(), &sub(0), 900..1000, &mut out);
    assert_eq!(found, MAX_PACKETS_PER_NACK, "at most a NACK's worth");
    let mut bytes = found * 212;
    for _ in 0..100 {
        bytes += f.on_nack(now, &track(), &sub(0), 936..1000, &mut out) * 212;
    }
    let budget = 106_000.0 * BUDGET_SHARE;
    assert!(bytes as f64 <= budget + 212.0, "{bytes} bytes retransmitted at once, budget {budget}");
    assert!(bytes as f64 >= budget * 0.9, "the budget is spent before refusing: {bytes}");
    let later = now + Duration::from_millis(100);
    let refill = f.on_nack(later, &track(), &sub(0), 990..1000, &mut out);
    assert!((1..=10).contains(&refill), "the budget refills with time: {refill}");
}

#[test]
fn a_throttled_keyframe_request_goes_out_when_the_interval_ends() {
    let t0 = Instant::now();
    let mut f = room(2, t0);
    let mut out = Vec::new();
    f.forward(t0, &track(), video_packet(77, 1, 0), &mut out);
    assert!(f.keyframe_request(t0, &track(), None).is_some());
    let t1 = t0 + Duration::from_millis(100);
    assert!(f.keyframe_request(t1, &track(), None).is_none(), "throttled");
    let due = t0 + ForwarderSettings::default().keyframe_interval;
    assert_eq!(f.keyframe_deadline(), Some(due));
    let mut requests = Vec::new();
    f.due_keyframe_requests(due - Duration::from_millis(1), &mut requests);
    assert!(requests.is_empty());
    f.due_keyframe_requests(due, &mut requests);
    assert_eq!(requests, vec![KeyframeRequest { publisher: alice(), track: track(), media_ssrc: 77 }]);
    assert_eq!(f.keyframe_deadline(), None, "sent once");
}

#[test]
fn a_muted_track_forwards_nothing_and_unmuting_asks_for_a_keyframe() {
    let t0 = Instant::now();
    let mut f = room(2, t0);
    let mut out = Vec::new();
    f.forward(t0, &track(), video_packet(77, 1, 0), &mut out);
    assert_eq!(out.len(), 2);
    out.clear();
    assert_eq!(f.set_muted(t0, &track(), true), None);
    assert!(!f.is_tapped(t0, &track(), 77, &[]), "nor to the taps");
    f.forward(t0, &track(), video_packet(77, 2, 3000), &mut out);
    assert!(out.is_empty(), "muted packets go nowhere");
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(f.set_muted(t1, &track(), false).map(|r| r.media_ssrc), Some(77), "unmute asks for a keyframe");
    f.forward(t1, &track(), video_packet(77, 3, 6000), &mut out);
    assert_eq!(out.len(), 2);
}

/// SSRCs of the three simulcast layers of [`simulcast_room`]'s track, lowest first.
const LAYERS: [u32; 3] = [71, 72, 73];

/// A forwarder with one three-layer VP8 simulcast track, every layer bound, and `n`
/// subscribers that have all negotiated.
fn simulcast_room(n: usize, now: Instant) -> Forwarder {
    let mut f = Forwarder::new(ForwarderSettings::default());
    f.add_simulcast_track(track(), alice(), 90_000, PayloadFormat::Vp8, 3);
    for (layer, ssrc) in LAYERS.into_iter().enumerate() {
        f.bind_layer(&track(), layer, ssrc);
    }
    for i in 0..n {
        f.subscribe(&track(), sub(i), 1000 + i as u32, ());
        f.set_negotiated(now, &track(), &sub(i), negotiated(None));
    }
    f
}

/// Packet `seq` of simulcast `layer`: one packet per frame, picture IDs and TL0PICIDX
/// counting with it from a base of the layer's own.
fn layer_packet(layer: usize, seq: u16, key: bool) -> rtp::Packet {
    let base = 1000 * layer as u16;
    let mut packet = video_packet(LAYERS[layer], base + seq, u32::from(seq) * 3000);
    packet.payload = Bytes::from(crate::vp8::tests::payload(base + seq, (base + seq) as u8, true, key));
    packet
}

/// The picture ID and TL0PICIDX a subscriber sees in an outgoing packet.
fn pictures(out: &Outgoing) -> (u16, u8) {
    let mut payload = out.packet.payload.to_vec();
    if let Some(patch) = out.patch {
        patch.apply(&mut payload);
    }
    let descriptor = Descriptor::parse(&payload).expect("a VP8 descriptor");
    (descriptor.picture_id.expect("a picture id").value, descriptor.tl0_pic_idx.expect("a TL0PICIDX").1)
}

#[test]
fn a_simulcast_subscriber_gets_the_highest_layer_from_its_keyframe_and_moves_down_when_it_stops() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut f = simulcast_room(2, t0);
    let mut out = Vec::new();
    // 33 ms frames on every layer, the highest first; only layer 0 starts with a keyframe.
    for seq in 0..10u16 {
        for layer in (0..3).rev() {
            f.forward(at(u64::from(seq) * 33), &track(), layer_packet(layer, seq, seq == 0 && layer == 0), &mut out);
        }
    }
    assert!(out.is_empty(), "layer 2 sends, and no subscriber has had its keyframe");
    let requests: Vec<_> = std::iter::from_fn(|| f.take_request()).collect();
    assert_eq!(requests.len(), 1, "one request for both, throttled after: {requests:?}");
    assert_eq!(requests[0].media_ssrc, LAYERS[2], "the keyframe is asked of the layer they wait for");
    // Layer 2's keyframe: both switch, and get layer 2 only.
    for seq in 10..20u16 {
        for layer in 0..3 {
            f.forward(at(u64::from(seq) * 33), &track(), layer_packet(layer, seq, seq == 10 && layer == 2), &mut out);
        }
    }
    assert_eq!(out.len(), 20);
    let first: Vec<_> = out.iter().filter(|o| o.subscriber == sub(0)).map(|o| o.packet.header.sequence_number).collect();
    assert_eq!(first, (2010..2020).collect::<Vec<u16>>(), "the first layer keeps its numbers");
    assert!(out.iter().all(|o| o.patch.is_none()), "nothing to renumber before a switch");
    // Layer 2 stops; layers 0 and 1 go on, and layer 1's keyframe comes at frame 40.
    out.clear();
    for seq in 20..50u16 {
        for layer in 0..2 {
            f.forward(at(u64::from(seq) * 33), &track(), layer_packet(layer, seq, seq == 40 && layer == 1), &mut out);
        }
    }
    let requests: Vec<_> = std::iter::from_fn(|| f.take_request()).collect();
    assert!(requests.iter().all(|r| r.media_ssrc == LAYERS[1]) && !requests.is_empty(), "{requests:?}");
    let received: Vec<_> = out.iter().filter(|o| o.subscriber == sub(1)).collect();
    assert_eq!(received.len(), 10, "layer 1 from its keyframe on");
    let numbers: Vec<(u16, (u16, u8))> = received.iter().map(|o| (o.packet.header.sequence_number, pictures(o))).collect();
    let expected: Vec<(u16, (u16, u8))> = (0..10u16).map(|i| (2020 + i, (2020 + i, (2020 + i) as u8))).collect();
    assert_eq!(numbers, expected, "sequence numbers, picture IDs and TL0PICIDX continue from layer 2's");
    assert!(received
        .iter()
        .all(|o| o.packet.header.ssrc == 1001 && o.packet.payload[6] & 1 == u8::from(o.packet.header.sequence_number != 2020)));
    // Layer 2 resumes with a keyframe: straight back up, numbers still continuous.
    out.clear();
    f.forward(at(50 * 33), &track(), layer_packet(2, 50, true), &mut out);
    f.forward(at(50 * 33), &track(), layer_packet(1, 50, false), &mut out);
    let numbers: Vec<(u16, (u16, u8))> =
        out.iter().filter(|o| o.subscriber == sub(1)).map(|o| (o.packet.header.sequence_number, pictures(o))).collect();
    assert_eq!(numbers, [(2030, (2030, 2030u16 as u8))]);
}

#[test]
fn a_simulcast_retransmission_comes_from_the_layer_the_subscriber_had_renumbered() {
    let now = Instant::now();
    let mut f = simulcast_room(1, now);
    let mut out = Vec::new();
    for seq in 0..5u16 {
        f.forward(now, &track(), layer_packet(2, seq, seq == 0), &mut out);
    }
    for seq in 5..10u16 {
        f.forward(now + Duration::from_secs(1), &track(), layer_packet(1, seq, seq == 5), &mut out);
    }
    assert_eq!(out.len(), 10);
    let lost = &out[7];
    let mut resent = Vec::new();
    assert_eq!(f.on_nack(now + Duration::from_secs(1), &track(), &sub(0), [lost.packet.header.sequence_number], &mut resent), 1);
    assert_eq!(resent[0].packet.header.sequence_number, lost.packet.header.sequence_number);
    assert_eq!(resent[0].packet.payload, lost.packet.payload);
    assert_eq!(pictures(&resent[0]), pictures(lost));
    // Over RTX the renumbered payload is a copy, written before the original sequence number.
    let rtx = RtxStream { ssrc: 5000, payload_type: 97 };
    f.set_negotiated(now, &track(), &sub(0), negotiated(Some(rtx)));
    let mut resent = Vec::new();
    f.on_nack(now + Duration::from_secs(1), &track(), &sub(0), [lost.packet.header.sequence_number], &mut resent);
    assert!(resent[0].rtx && resent[0].patch.is_none());
    let mut expected = lost.packet.payload.to_vec();
    lost.patch.expect("renumbered").apply(&mut expected);
    assert_eq!(resent[0].packet.payload[2..], expected[..]);
}

#[test]
fn taps_get_the_top_layer_that_sends_once_the_track_settled_and_keep_it() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut f = simulcast_room(0, t0);
    let mut out = Vec::new();
    // Layers 0 and 1 send (a 640x480 camera's three encodings are two layers in Chromium);
    // keyframes at frames 0 and 20.
    let mut tapped = Vec::new();
    for seq in 0..30u16 {
        for layer in [0, 1] {
            let packet = layer_packet(layer, seq, seq % 20 == 0);
            let now = at(u64::from(seq) * 33);
            if f.is_tapped(now, &track(), packet.header.ssrc, &packet.payload) {
                tapped.push((layer, seq));
            }
            f.forward(now, &track(), packet, &mut out);
        }
    }
    let expected: Vec<(usize, u16)> = (20..30).map(|seq| (1, seq)).collect();
    assert_eq!(tapped, expected, "layer 1 from its first keyframe after 500 ms; never layer 0, nor the silent layer 2");
    f.set_muted(at(1000), &track(), true);
    let packet = layer_packet(1, 30, false);
    assert!(!f.is_tapped(at(1000), &track(), packet.header.ssrc, &packet.payload), "muted");
    let mut single = room(0, t0);
    assert!(single.is_tapped(t0, &track(), 1234, &[]), "a single-stream track, whatever its SSRC");
}

#[test]
fn packets_of_an_unbound_ssrc_of_a_simulcast_track_go_nowhere() {
    let now = Instant::now();
    let mut f = simulcast_room(1, now);
    let mut out = Vec::new();
    let mut stranger = layer_packet(2, 0, true);
    stranger.header.ssrc = 99;
    f.forward(now, &track(), stranger, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_waiting_subscriber_asks_once_per_interval_and_leaves_nothing_deferred_once_switched() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut f = simulcast_room(1, t0);
    let mut out = Vec::new();
    for seq in 0..20u16 {
        f.forward(at(u64::from(seq) * 33), &track(), layer_packet(2, seq, false), &mut out);
    }
    let requests: Vec<_> = std::iter::from_fn(|| f.take_request()).collect();
    assert_eq!(requests.len(), 2, "at 0 and 528 ms, 627 ms of delta frames: {requests:?}");
    f.forward(at(20 * 33), &track(), layer_packet(2, 20, true), &mut out);
    assert_eq!(out.len(), 1, "switched at the keyframe");
    assert_eq!(f.keyframe_deadline(), None, "no request left to go out later");
}

#[test]
fn a_late_retransmission_of_a_keyframe_start_does_not_switch_a_subscriber() {
    let now = Instant::now();
    let mut f = simulcast_room(1, now);
    let mut out = Vec::new();
    for seq in 5..10u16 {
        f.forward(now, &track(), layer_packet(2, seq, false), &mut out);
    }
    f.forward(now, &track(), layer_packet(2, 1, true), &mut out);
    assert!(out.is_empty(), "the keyframe it started is long gone");
    f.forward(now, &track(), layer_packet(2, 10, true), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn an_unmuted_simulcast_track_resumes_on_the_layer_that_sends_without_asking_the_others() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut f = simulcast_room(1, t0);
    let mut out = Vec::new();
    let frame = |f: &mut Forwarder, seq: u16, key: bool, out: &mut Vec<Outgoing>| {
        // The lowest first: after the mute, its packets must not take the others for stopped.
        for layer in [0, 1, 2] {
            f.forward(at(u64::from(seq) * 33), &track(), layer_packet(layer, seq, key), out);
        }
    };
    frame(&mut f, 0, true, &mut out);
    f.set_muted(at(10), &track(), true);
    for seq in 1..60 {
        frame(&mut f, seq, false, &mut out);
    }
    out.clear();
    while f.take_request().is_some() {}
    let request = f.set_muted(at(60 * 33), &track(), false).expect("unmute asks for a keyframe");
    assert_eq!(request.media_ssrc, LAYERS[2]);
    frame(&mut f, 60, false, &mut out);
    frame(&mut f, 61, false, &mut out);
    assert!(out.is_empty(), "waits for a keyframe after the mute");
    assert!(std::iter::from_fn(|| f.take_request()).all(|r| r.media_ssrc == LAYERS[2]), "only the top layer is asked");
    frame(&mut f, 62, true, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].packet.payload, layer_packet(2, 62, true).payload);
}

#[test]
fn a_subscriber_given_a_lower_layer_is_sent_nothing_until_its_keyframe_and_the_others_stay() {
    let now = Instant::now();
    let mut f = simulcast_room(2, now);
    let mut out = Vec::new();
    for layer in [2, 1, 0] {
        f.forward(now, &track(), layer_packet(layer, 0, true), &mut out);
    }
    assert_eq!(out.len(), 2, "both on the top layer");
    f.set_max_layer(&track(), &sub(1), 1);
    let subscriptions = f.simulcast_subscriptions_of(sub(1), now);
    assert_eq!(subscriptions.len(), 1);
    assert_eq!((subscriptions[0].publisher, subscriptions[0].current), (alice(), 1), "its publisher and the layer it is given");
    out.clear();
    for layer in [0, 1, 2] {
        f.forward(now, &track(), layer_packet(layer, 1, false), &mut out);
    }
    let requests: Vec<_> = std::iter::from_fn(|| f.take_request()).collect();
    assert_eq!(requests.iter().map(|r| r.media_ssrc).collect::<Vec<_>>(), [LAYERS[1]], "a keyframe of layer 1 is asked for");
    assert_eq!(out.iter().map(|o| o.subscriber).collect::<Vec<_>>(), [sub(0)], "until it comes, nothing: its link is short");
    out.clear();
    for layer in [0, 1, 2] {
        f.forward(now, &track(), layer_packet(layer, 2, layer == 1), &mut out);
    }
    let got: Vec<_> = out.iter().map(|o| (o.subscriber, o.packet.payload.clone())).collect();
    assert_eq!(got, [(sub(1), layer_packet(1, 2, true).payload), (sub(0), layer_packet(2, 2, false).payload)]);
}

#[test]
fn a_paused_subscriber_is_sent_nothing_and_resumes_numbered_on_with_a_keyframe_asked_for() {
    let t0 = Instant::now();
    let mut f = room(2, t0);
    let mut out = Vec::new();
    f.forward(t0, &track(), video_packet(77, 1, 0), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(f.set_view(t0, &track(), &sub(1), View { paused: true, size: None }), Ok(None));
    assert_eq!(f.set_view(t0, &track(), &sub(5), View::default()), Err(NotReceived), "not a subscriber");
    out.clear();
    for seq in 2..=5 {
        f.forward(t0, &track(), video_packet(77, seq, u32::from(seq) * 3000), &mut out);
    }
    assert!(out.iter().all(|o| o.subscriber == sub(0)) && out.len() == 4, "only the one that shows it");
    assert_eq!(f.single_stream_rate_of(sub(1)), 0.0, "a paused track takes none of its downlink");
    assert!(f.take_request().is_none());
    let t1 = t0 + Duration::from_secs(1);
    let resumed = f.set_view(t1, &track(), &sub(1), View::default()).expect("a subscriber");
    assert_eq!(resumed.map(|r| r.media_ssrc), Some(77), "its decoder starts again at a keyframe");
    out.clear();
    f.forward(t1, &track(), video_packet(77, 6, 18_000), &mut out);
    let resumed = out.iter().find(|o| o.subscriber == sub(1)).expect("sent again");
    assert_eq!(resumed.packet.header.sequence_number, 2, "right after the last packet it had");
    assert_eq!(resumed.packet.header.timestamp, 90_000, "a second of clock later");
}

/// An H.264 packet aggregating a sequence parameter set (STAP-A) for a picture of
/// `width`, as x264 writes them.
fn h264_parameter_set(ssrc: u32, seq: u16, width: u32) -> rtp::Packet {
    let hex = match width {
        320 => "6764000dacd941419f9f0110000003001000000303c0f142996000",
        640 => "6742c01ed900a02ff970110000030001000003003c0f162e4800",
        _ => "6764001facd9405005bb0110000003001000000303c0f183196000",
    };
    let sps = crate::h264::tests::sps(hex);
    let mut packet = video_packet(ssrc, seq, 0);
    let mut payload = vec![0x78, 0, sps.len() as u8];
    payload.extend_from_slice(&sps);
    packet.payload = Bytes::from(payload);
    packet
}

#[test]
fn a_view_needs_the_lowest_layer_that_fills_it_by_the_sizes_the_keyframes_give() {
    let now = Instant::now();
    let mut f = Forwarder::new(ForwarderSettings::default());
    f.add_simulcast_track(track(), alice(), 90_000, PayloadFormat::H264, 3);
    for (layer, ssrc) in LAYERS.into_iter().enumerate() {
        f.bind_layer(&track(), layer, ssrc);
    }
    f.subscribe(&track(), sub(0), 1000, ());
    f.set_negotiated(now, &track(), &sub(0), negotiated(None));
    let needed = |f: &Forwarder| f.simulcast_subscriptions_of(sub(0), now).first().map(|s| s.needed);
    assert_eq!(needed(&f), Some(2), "any size");
    assert!(f.set_view(now, &track(), &sub(0), View { paused: false, size: Some(FrameSize { width: 480, height: 270 }) }).is_ok());
    assert_eq!(needed(&f), Some(2), "no layer's size known yet: the top one");
    let mut out = Vec::new();
    for (layer, width) in [(2, 1280), (0, 320)] {
        f.forward(now, &track(), h264_parameter_set(LAYERS[layer], 1, width), &mut out);
    }
    assert_eq!(needed(&f), Some(2), "the lowest is too small, the middle one not known");
    f.forward(now, &track(), h264_parameter_set(LAYERS[1], 1, 640), &mut out);
    assert_eq!(needed(&f), Some(1));
    assert!(f.set_view(now, &track(), &sub(0), View { paused: true, size: None }).is_ok());
    assert!(f.simulcast_subscriptions_of(sub(0), now).is_empty(), "a paused track is not allocated any of the downlink");
}
