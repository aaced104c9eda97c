//! The forwarding path: one publisher's RTP fanned out to 1, 10 and 100 subscribers —
//! header rewriting per subscriber, then SRTP protection (AEAD AES-128-GCM, the profile the
//! SFU prefers) of every copy — and a subscriber's NACK answered from the track's packet
//! cache. `simulcast_rewrite` is `rewrite` for a VP8 track of three simulcast layers: a
//! packet of each layer comes in, and every subscriber is sent the top one's (the layer
//! selection and VP8 descriptor reading are the difference). Throughput is reported in
//! packets sent per second; the bench runs on one thread, so that is per core.
//!
//! `cargo bench --bench forwarding`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc::rtp;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use sfu::forwarder::{Forwarder, ForwarderSettings, MediaKind, Negotiated, Outgoing};
use sfu::simulcast::PayloadFormat;
use sfu::{ParticipantKey, TrackId};

const FAN_OUT: [usize; 3] = [1, 10, 100];
const PAYLOAD_BYTES: usize = 1100;

/// A forwarding table with one track and `subscribers` negotiated subscribers, the first
/// of whom is returned.
fn table(subscribers: usize) -> (Forwarder, TrackId, ParticipantKey) {
    let now = Instant::now();
    let track = TrackId::next();
    let mut forwarder = Forwarder::new(ForwarderSettings::default());
    forwarder.add_track(track, ParticipantKey::next(), MediaKind::Video, 90_000);
    let keys: Vec<ParticipantKey> = (0..subscribers.max(1)).map(|_| ParticipantKey::next()).collect();
    for (i, subscriber) in keys.iter().enumerate().take(subscribers) {
        forwarder.subscribe(&track, *subscriber, 10_000 + i as u32, ());
        forwarder.set_negotiated(now, &track, subscriber, Negotiated { payload_type: 96, rtx: None });
    }
    (forwarder, track, keys[0])
}

/// A forwarding table with one three-layer VP8 simulcast track (layer SSRCs 1, 2 and 3) and
/// `subscribers` negotiated subscribers, all on the top layer from its keyframe.
fn simulcast_table(subscribers: usize) -> (Forwarder, TrackId) {
    let now = Instant::now();
    let track = TrackId::next();
    let mut forwarder = Forwarder::new(ForwarderSettings::default());
    forwarder.add_simulcast_track(track, ParticipantKey::next(), 90_000, PayloadFormat::Vp8, 3);
    for layer in 0..3 {
        forwarder.bind_layer(&track, layer, layer as u32 + 1);
    }
    for i in 0..subscribers {
        let subscriber = ParticipantKey::next();
        forwarder.subscribe(&track, subscriber, 10_000 + i as u32, ());
        forwarder.set_negotiated(now, &track, &subscriber, Negotiated { payload_type: 96, rtx: None });
    }
    let mut out = Vec::new();
    for layer in [2, 1, 0] {
        forwarder.forward(now, &track, simulcast_packet(layer, 0, true), &mut out);
    }
    (forwarder, track)
}

/// Packet `seq` of simulcast `layer`, one per frame: a VP8 descriptor with a 15-bit picture
/// ID and TL0PICIDX, then 300, 700 or 1,100 bytes of frame.
fn simulcast_packet(layer: usize, seq: u16, keyframe: bool) -> rtp::Packet {
    let [high, low] = seq.to_be_bytes();
    let mut payload = vec![0x90, 0xE0, 0x80 | (high & 0x7F), low, seq as u8, 0x20, if keyframe { 0x10 } else { 0x11 }];
    payload.resize([300, 700, PAYLOAD_BYTES][layer], 0xAB);
    let mut packet = packet(seq, &Bytes::from(payload));
    packet.header.ssrc = layer as u32 + 1;
    packet
}

fn packet(seq: u16, payload: &Bytes) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 100,
            ssrc: 42,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ..Default::default()
        },
        payload: payload.clone(),
    }
}

fn srtp_context(profile: ProtectionProfile) -> Context {
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let salt_len = if matches!(profile, ProtectionProfile::AeadAes128Gcm) { 12 } else { 14 };
    Context::new(&[7; 16], &vec![9; salt_len], profile, None, None, provider.crypto()).expect("srtp context")
}

fn forwarding(c: &mut Criterion) {
    let payload = Bytes::from(vec![0xAB; PAYLOAD_BYTES]);
    let mut group = c.benchmark_group("fan_out");
    for subscribers in FAN_OUT {
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::new("rewrite", subscribers), &subscribers, |b, &n| {
            let (mut forwarder, track, _) = table(n);
            let mut out: Vec<Outgoing> = Vec::with_capacity(n);
            let mut seq = 0u16;
            b.iter(|| {
                seq = seq.wrapping_add(1);
                forwarder.forward(Instant::now(), &track, packet(seq, &payload), &mut out);
                black_box(out.drain(..).count())
            });
        });
        group.bench_with_input(BenchmarkId::new("simulcast_rewrite", subscribers), &subscribers, |b, &n| {
            let (mut forwarder, track) = simulcast_table(n);
            let packets: Vec<[rtp::Packet; 3]> =
                (1..=1024u16).map(|seq| [0, 1, 2].map(|layer| simulcast_packet(layer, seq, false))).collect();
            let mut out: Vec<Outgoing> = Vec::with_capacity(n);
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % packets.len();
                for packet in &packets[next] {
                    forwarder.forward(Instant::now(), &track, packet.clone(), &mut out);
                }
                black_box(out.drain(..).count())
            });
        });
        for (label, profile) in
            [("rewrite+srtp_gcm", ProtectionProfile::AeadAes128Gcm), ("rewrite+srtp_sha1_80", ProtectionProfile::Aes128CmHmacSha1_80)]
        {
            group.bench_with_input(BenchmarkId::new(label, subscribers), &subscribers, |b, &n| {
                let (mut forwarder, track, _) = table(n);
                let mut contexts: Vec<Context> = (0..n).map(|_| srtp_context(profile)).collect();
                let mut out: Vec<Outgoing> = Vec::with_capacity(n);
                let mut seq = 0u16;
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    forwarder.forward(Instant::now(), &track, packet(seq, &payload), &mut out);
                    for (context, outgoing) in contexts.iter_mut().zip(out.drain(..)) {
                        let plain = outgoing.packet.marshal().expect("marshal");
                        black_box(context.encrypt_rtp_with_header(&plain, &outgoing.packet.header).expect("encrypt"));
                    }
                });
            });
        }
    }
    group.finish();
}

/// A NACK for 10 of the last 500 packets, answered from the cache: lookup, and the cached
/// packet rewritten for the subscriber again.
fn nack(c: &mut Criterion) {
    let payload = Bytes::from(vec![0xAB; PAYLOAD_BYTES]);
    let (mut forwarder, track, subscriber) = table(1);
    let mut out: Vec<Outgoing> = Vec::new();
    let mut sent = Vec::new();
    for seq in 0..500u16 {
        forwarder.forward(Instant::now(), &track, packet(seq, &payload), &mut out);
        sent.extend(out.drain(..).map(|o| o.packet.header.sequence_number));
    }
    let lost: Vec<u16> = sent.iter().rev().step_by(37).take(10).copied().collect();
    let mut group = c.benchmark_group("nack");
    group.throughput(Throughput::Elements(lost.len() as u64));
    // A second apart each time: the subscriber's retransmission budget is full again.
    let mut now = Instant::now();
    group.bench_function("answer_10_from_cache", |b| {
        b.iter(|| {
            now += Duration::from_secs(1);
            let found = forwarder.on_nack(now, &track, &subscriber, lost.iter().copied(), &mut out);
            assert_eq!(found, lost.len());
            black_box(out.drain(..).count())
        });
    });
    group.finish();
}

criterion_group!(benches, forwarding, nack);
criterion_main!(benches);
