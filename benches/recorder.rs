//! What recording costs: one second of one participant's media (VP8 video at 30 frames/s
//! and about 1.2 Mbit/s, Opus audio at 50 packets/s) pushed through the recorder's pipeline
//! as the SFU's tap hands it over — jitter buffer, depacketizing, sender clock, segmenting
//! and fragmented MP4 writing — with the segments taken out as the uploader would. The
//! figure is CPU time per recorded stream-second, to set beside the forwarding benches
//! (`pipeline`: CPU per forwarded packet).
//!
//! `cargo bench --bench recorder`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use recorder::assembler::Codec;
use recorder::jitter::RtpPacket;
use recorder::recording::{Output, Recording, RecordingSettings};
use rtc::rtp::codec::{opus::OpusPayloader, vp8::Vp8Payloader};
use rtc::rtp::packetizer::Payloader;
use switchboard::loadtest::synthetic_vp8_frame;

const FPS: u32 = 30;
const VIDEO_FRAME_BYTES: usize = 5_000;
const KEYFRAME_BYTES: usize = 30_000;
const OPUS_PACKET_BYTES: usize = 120;

/// One track's packets for `seconds`: (arrival offset, packet).
fn packets(payloader: &mut dyn Payloader, frames: &[Bytes], frame_interval: Duration, clock_step: u32) -> Vec<(Duration, RtpPacket)> {
    let mut out = Vec::new();
    let mut sequence = 0u16;
    for (i, frame) in frames.iter().enumerate() {
        let payloads = payloader.payload(1200, frame).expect("packetized");
        let count = payloads.len();
        for (j, payload) in payloads.into_iter().enumerate() {
            let packet = RtpPacket { sequence, timestamp: i as u32 * clock_step, marker: j + 1 == count, payload };
            out.push((frame_interval * i as u32, packet));
            sequence = sequence.wrapping_add(1);
        }
    }
    out
}

/// `seconds` of one participant's media in arrival order: (arrival offset, track, packet).
fn media(seconds: u32) -> Vec<(Duration, usize, RtpPacket)> {
    let video: Vec<Bytes> = (0..seconds * FPS)
        .map(|i| synthetic_vp8_frame(i % 60 == 0, if i % 60 == 0 { KEYFRAME_BYTES } else { VIDEO_FRAME_BYTES }))
        .collect();
    let audio: Vec<Bytes> = (0..seconds * 50).map(|i| Bytes::from(vec![0xfc ^ (i as u8 & 1); OPUS_PACKET_BYTES])).collect();
    let mut all: Vec<(Duration, usize, RtpPacket)> =
        packets(&mut Vp8Payloader::default(), &video, Duration::from_secs(1) / FPS, 90_000 / FPS)
            .into_iter()
            .map(|(at, p)| (at, 0, p))
            .chain(packets(&mut OpusPayloader, &audio, Duration::from_millis(20), 960).into_iter().map(|(at, p)| (at, 1, p)))
            .collect();
    all.sort_by_key(|(at, _, _)| *at);
    all
}

/// Records `media` from start to finish; returns the bytes written.
fn record(media: &[(Duration, usize, RtpPacket)], epoch: Instant) -> usize {
    let mut recording = Recording::new(&[Codec::Vp8, Codec::Opus], RecordingSettings::default(), epoch).expect("recording");
    let mut written = 0;
    let mut drain = |recording: &mut Recording| {
        while let Some(output) = recording.next_output() {
            written += match output {
                Output::InitSegment(data) | Output::MediaSegment { data, .. } => data.len(),
                Output::KeyframeRequest { .. } | Output::Gap { .. } => 0,
            };
        }
    };
    let mut next_poll = Duration::ZERO;
    for (at, track, packet) in media {
        let now = epoch + *at;
        recording.on_rtp(now, *track, packet.clone()).expect("packet");
        // The room recorder polls every 20 ms.
        if *at >= next_poll {
            recording.poll(now).expect("poll");
            next_poll = *at + Duration::from_millis(20);
        }
        drain(&mut recording);
    }
    recording.finish().expect("finish");
    drain(&mut recording);
    written
}

fn recorder(c: &mut Criterion) {
    const SECONDS: u32 = 12;
    let media = media(SECONDS);
    let mut group = c.benchmark_group("recorder");
    group.sample_size(20);
    // Elements: recorded stream-seconds (one participant's audio + video for one second).
    group.throughput(Throughput::Elements(u64::from(SECONDS)));
    group.bench_function("vp8_opus_stream_seconds", |b| {
        b.iter_batched(Instant::now, |epoch| black_box(record(&media, epoch)), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, recorder);
criterion_main!(benches);
