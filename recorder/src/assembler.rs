//! Turns one stream's packets, in order (from the [`JitterBuffer`](crate::jitter)), into
//! whole encoded frames, with the `rtc` family's depacketizers (VP8's our own, [`crate::vp8`]).
//!
//! A video frame is written only when every one of its packets arrived, from a partition
//! head to the marker bit. After a loss the assembler asks for a keyframe once and drops
//! every frame until one arrives: a frame that references a broken one would decode to
//! garbage, so nothing broken is ever written, least of all as a keyframe. Audio frames are
//! one packet each; a lost one is simply missing.

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::{av1::Av1Depacketizer, h264::H264Packet, opus::OpusPacket, vp9::Vp9Packet};
use rtc::rtp::packetizer::Depacketizer;

use crate::jitter::{Released, RtpPacket};
use crate::vp8::Vp8Depacketizer;

/// The codecs the recorder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus audio.
    Opus,
    /// VP8 video.
    Vp8,
    /// VP9 video.
    Vp9,
    /// H.264 video (Annex B output).
    H264,
    /// AV1 video (OBU stream output).
    Av1,
}

impl Codec {
    /// The codec of a MIME type (`audio/opus`, `video/VP8`, ...), case-insensitive.
    pub fn from_mime_type(mime_type: &str) -> Option<Self> {
        match mime_type.to_ascii_lowercase().as_str() {
            "audio/opus" => Some(Self::Opus),
            "video/vp8" => Some(Self::Vp8),
            "video/vp9" => Some(Self::Vp9),
            "video/h264" => Some(Self::H264),
            "video/av1" => Some(Self::Av1),
            _ => None,
        }
    }

    /// Whether this is an audio codec.
    pub fn is_audio(self) -> bool {
        self == Self::Opus
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        if self.is_audio() {
            48_000
        } else {
            90_000
        }
    }

    fn depacketizer(self) -> Box<dyn Depacketizer> {
        match self {
            Self::Opus => Box::new(OpusPacket),
            Self::Vp8 => Box::new(Vp8Depacketizer),
            Self::Vp9 => Box::new(Vp9Packet::default()),
            Self::H264 => Box::new(H264Packet::default()),
            Self::Av1 => Box::new(Av1Depacketizer::new()),
        }
    }
}

/// Whether an encoded frame can be decoded on its own.
pub fn is_keyframe(codec: Codec, frame: &[u8]) -> bool {
    let Some(&first) = frame.first() else { return false };
    match codec {
        Codec::Opus => true,
        // The frame tag's lowest bit is 0 for a key frame.
        Codec::Vp8 => first & 0x01 == 0,
        // Uncompressed header: frame_marker(2) profile(2) [reserved(1) for profile 3]
        // show_existing_frame(1) frame_type(1), frame_type 0 = key frame.
        Codec::Vp9 => {
            // Profile 3 (both profile bits set) has a reserved bit before the flags.
            let shift = u8::from(first & 0x30 == 0x30);
            let show_existing = (first >> (3 - shift)) & 0x01;
            let frame_type = (first >> (2 - shift)) & 0x01;
            first >> 6 == 0b10 && show_existing == 0 && frame_type == 0
        }
        Codec::H264 => annex_b_nal_types(frame).any(|nal_type| nal_type == 5),
        // A coded video sequence starts with a sequence header OBU (type 1).
        Codec::Av1 => (first >> 3) & 0x0F == 1,
    }
}

/// The NAL unit types of an Annex B byte stream.
fn annex_b_nal_types(stream: &[u8]) -> impl Iterator<Item = u8> + '_ {
    stream.windows(4).filter(|w| w[..3] == [0, 0, 1]).map(|w| w[3] & 0x1F)
}

/// A whole encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp.
    pub timestamp: u32,
    /// The encoded frame (Annex B for H.264, OBUs for AV1).
    pub data: Bytes,
    /// Decodable on its own.
    pub keyframe: bool,
}

/// What the assembler hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// A whole frame.
    Frame(Frame),
    /// A loss broke the stream: ask the publisher for a keyframe.
    KeyframeNeeded,
}

/// Counters of one assembler.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Frames handed on.
    pub frames: u64,
    /// Frames dropped: incomplete, undecodable, or waiting for a keyframe.
    pub dropped_frames: u64,
    /// Keyframe requests made.
    pub keyframe_requests: u64,
}

/// The assembler of one stream.
pub struct FrameAssembler {
    codec: Codec,
    /// Packets of the frame being collected.
    parts: Vec<RtpPacket>,
    /// The frame being collected lost a packet or began mid-frame.
    broken: bool,
    /// No frame is handed on until a keyframe (at the start, and after a loss).
    waiting_for_keyframe: bool,
    stats: AssemblerStats,
}

impl FrameAssembler {
    /// An assembler for `codec`; video waits for its first keyframe.
    pub fn new(codec: Codec) -> Self {
        Self { codec, parts: Vec::new(), broken: false, waiting_for_keyframe: !codec.is_audio(), stats: AssemblerStats::default() }
    }

    /// The assembler's counters.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Takes the next packet (or loss) of the stream; returns what completes with it.
    pub fn push(&mut self, released: Released, out: &mut Vec<Assembled>) {
        match released {
            Released::Lost { .. } if self.codec.is_audio() => {}
            Released::Lost { .. } => {
                self.broken = true;
                self.need_keyframe(out);
            }
            // Padding only (a sender's bandwidth probe; the padding is already stripped): it
            // takes a sequence number but carries no media, so it neither breaks nor ends a frame.
            Released::Packet(packet) if packet.payload.is_empty() => {}
            Released::Packet(packet) if self.codec.is_audio() => {
                self.parts.push(packet);
                self.finish_frame(out);
            }
            Released::Packet(packet) => {
                if self.parts.first().is_some_and(|first| first.timestamp != packet.timestamp) {
                    // The previous frame never saw its marker: it cannot be trusted.
                    self.broken = true;
                    self.finish_frame(out);
                }
                if self.parts.is_empty() && !self.codec.depacketizer().is_partition_head(&packet.payload) {
                    self.broken = true;
                }
                let last = packet.marker;
                self.parts.push(packet);
                if last {
                    self.finish_frame(out);
                }
            }
        }
    }

    fn need_keyframe(&mut self, out: &mut Vec<Assembled>) {
        if !self.waiting_for_keyframe {
            self.waiting_for_keyframe = true;
            self.stats.keyframe_requests += 1;
            out.push(Assembled::KeyframeNeeded);
        }
    }

    fn finish_frame(&mut self, out: &mut Vec<Assembled>) {
        let parts = std::mem::take(&mut self.parts);
        let broken = std::mem::take(&mut self.broken);
        let Some(first) = parts.first() else { return };
        let timestamp = first.timestamp;
        let frame = if broken { None } else { self.depacketize(&parts) };
        match frame {
            Some(data) => {
                let keyframe = is_keyframe(self.codec, &data);
                if self.waiting_for_keyframe && !keyframe {
                    self.stats.dropped_frames += 1;
                    return;
                }
                self.waiting_for_keyframe = false;
                self.stats.frames += 1;
                out.push(Assembled::Frame(Frame { timestamp, data, keyframe }));
            }
            None => {
                self.stats.dropped_frames += 1;
                if !self.codec.is_audio() {
                    self.need_keyframe(out);
                }
            }
        }
    }

    /// Depacketizes a complete frame's packets, or `None` if the payloads are malformed.
    /// `rtc`'s depacketizers panic on some malformed payloads (the fuzzer found an H.264
    /// aggregate cut inside a size, and an AV1 element shorter than its OBU header): each
    /// frame gets a depacketizer of its own, run isolated, and one that panics drops the
    /// frame as malformed, as the media engine isolates `rtc`.
    fn depacketize(&self, parts: &[RtpPacket]) -> Option<Bytes> {
        let mut depacketizer = self.codec.depacketizer();
        let mut frame = BytesMut::new();
        for part in parts {
            let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| depacketizer.depacketize(&part.payload)));
            frame.extend_from_slice(&payload.ok()?.ok()?);
        }
        (!frame.is_empty()).then(|| frame.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::codec::{h264::H264Payloader, opus::OpusPayloader, vp8::Vp8Payloader, vp9::Vp9Payloader};
    use rtc::rtp::packetizer::Payloader;

    /// Packetizes frames like a sender: one timestamp per frame, the marker on its last packet.
    fn packetize(payloader: &mut dyn Payloader, frames: &[Bytes], step: u32) -> Vec<RtpPacket> {
        let mut packets = Vec::new();
        let mut sequence = 65_530u16;
        for (i, frame) in frames.iter().enumerate() {
            let payloads = payloader.payload(1200, frame).expect("payloads");
            let count = payloads.len();
            for (j, payload) in payloads.into_iter().enumerate() {
                packets.push(RtpPacket { sequence, timestamp: i as u32 * step, marker: j + 1 == count, payload });
                sequence = sequence.wrapping_add(1);
            }
        }
        packets
    }

    fn assemble(codec: Codec, packets: Vec<Released>) -> (Vec<Assembled>, AssemblerStats) {
        let mut assembler = FrameAssembler::new(codec);
        let mut out = Vec::new();
        for packet in packets {
            assembler.push(packet, &mut out);
        }
        (out, assembler.stats())
    }

    fn frames(out: &[Assembled]) -> Vec<&Frame> {
        out.iter().filter_map(|a| if let Assembled::Frame(f) = a { Some(f) } else { None }).collect()
    }

    fn vp8_frame(key: bool, len: usize, seed: u8) -> Bytes {
        let mut data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        data[0] = if key { 0x10 } else { 0x11 };
        Bytes::from(data)
    }

    #[test]
    fn payloads_that_panic_rtc_s_depacketizers_are_malformed_frames() {
        let packet = |sequence: u16, payload: &[u8]| {
            Released::Packet(RtpPacket { sequence, timestamp: u32::from(sequence), marker: true, payload: Bytes::copy_from_slice(payload) })
        };
        // Found by the recording fuzz target. H.264: a STAP-A (type 24) whose last byte is
        // half a size; then a whole one, kept.
        let whole = [0x18, 0, 3, 0x65, 0x88, 0x84];
        let cut_in_a_size = [&whole[..], &[0]].concat();
        let (out, stats) = assemble(Codec::H264, vec![packet(1, &cut_in_a_size), packet(2, &whole)]);
        assert_eq!((stats.dropped_frames, frames(&out).len()), (1, 1), "the cut one dropped, the whole one kept");
        // AV1: one OBU element of one byte whose header says an extension byte follows.
        let (_, stats) = assemble(Codec::Av1, vec![packet(1, &[0x10, 0x34])]);
        assert_eq!(stats.dropped_frames, 1);
    }

    #[test]
    fn opus_round_trips_one_packet_per_frame() {
        let sent: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i; 80 + usize::from(i)])).collect();
        let packets = packetize(&mut OpusPayloader, &sent, 960);
        let (out, stats) = assemble(Codec::Opus, packets.into_iter().map(Released::Packet).collect());
        let got: Vec<Bytes> = frames(&out).iter().map(|f| f.data.clone()).collect();
        assert_eq!(got, sent);
        assert_eq!(stats.frames, 50);
    }

    #[test]
    fn vp8_round_trips_and_tells_keyframes() {
        let sent = vec![vp8_frame(true, 5000, 1), vp8_frame(false, 1800, 2), vp8_frame(false, 300, 3)];
        let packets = packetize(&mut Vp8Payloader::default(), &sent, 3000);
        assert!(packets.len() > 3, "frames span packets");
        let (out, _) = assemble(Codec::Vp8, packets.into_iter().map(Released::Packet).collect());
        let got = frames(&out);
        assert_eq!(got.iter().map(|f| f.data.clone()).collect::<Vec<_>>(), sent);
        assert_eq!(got.iter().map(|f| f.keyframe).collect::<Vec<_>>(), [true, false, false]);
        assert_eq!(got.iter().map(|f| f.timestamp).collect::<Vec<_>>(), [0, 3000, 6000]);
    }

    #[test]
    fn padding_only_packets_between_and_inside_frames_are_skipped() {
        let sent = vec![vp8_frame(true, 3000, 1), vp8_frame(false, 1800, 2), vp8_frame(false, 300, 3)];
        let mut packets = packetize(&mut Vp8Payloader::default(), &sent, 3000);
        // Probes with the timestamp of the frame before, as senders pad: one between frames
        // and one inside the second frame (the assembler sees packets in order, not numbers).
        let probe = |at: &RtpPacket| RtpPacket { payload: Bytes::new(), marker: false, ..at.clone() };
        let second = packets.iter().position(|p| p.timestamp == 3000).expect("second frame");
        packets.insert(second, probe(&packets[second - 1]));
        packets.insert(second + 2, probe(&packets[second + 1]));
        let (out, stats) = assemble(Codec::Vp8, packets.into_iter().map(Released::Packet).collect());
        assert_eq!((stats.dropped_frames, stats.keyframe_requests), (0, 0));
        assert!(frames(&out).iter().map(|f| &f.data).eq(sent.iter()), "every frame intact");
    }

    #[test]
    fn a_vp8_frame_ending_in_a_two_byte_packet_is_kept() {
        // The packetizer's fragments are 1199 bytes at a 1200-byte MTU: 1200 and 1201 bytes
        // end in a packet of the descriptor and one or two bytes (libvpx wrote such a frame
        // 11 in CI, and the recording lost frames 11 to 59).
        let sent = vec![vp8_frame(true, 3000, 1), vp8_frame(false, 1200, 2), vp8_frame(false, 1201, 3), vp8_frame(false, 300, 4)];
        let packets = packetize(&mut Vp8Payloader::default(), &sent, 3000);
        assert!(packets.iter().any(|p| p.payload.len() == 2), "a two-byte packet is sent");
        let (out, stats) = assemble(Codec::Vp8, packets.into_iter().map(Released::Packet).collect());
        assert_eq!((stats.dropped_frames, stats.keyframe_requests), (0, 0));
        assert!(frames(&out).iter().map(|f| &f.data).eq(sent.iter()), "every frame intact");
    }

    #[test]
    fn vp9_round_trips_and_tells_keyframes() {
        // Uncompressed headers: frame_marker 2, profile 0, show_existing 0, frame_type 0/1.
        let mut key = vec![0x82u8; 4000];
        key[0] = 0b1000_0000;
        let mut inter = vec![0x55u8; 900];
        inter[0] = 0b1000_0100;
        let sent = vec![Bytes::from(key), Bytes::from(inter)];
        let packets = packetize(&mut Vp9Payloader::default(), &sent, 3000);
        let (out, _) = assemble(Codec::Vp9, packets.into_iter().map(Released::Packet).collect());
        let got = frames(&out);
        assert_eq!(got.iter().map(|f| f.data.clone()).collect::<Vec<_>>(), sent);
        assert_eq!(got.iter().map(|f| f.keyframe).collect::<Vec<_>>(), [true, false]);
    }

    /// NAL units of an Annex B stream, without start codes.
    fn nal_units(stream: &[u8]) -> Vec<Vec<u8>> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= stream.len() {
            if stream[i..i + 3] == [0, 0, 1] {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = starts.get(n + 1).map_or(stream.len(), |&next| next - 3);
                let mut nal = stream[start..end].to_vec();
                while nal.last() == Some(&0) {
                    nal.pop(); // the leading zero of a 4-byte start code
                }
                nal
            })
            .collect()
    }

    fn annex_b(nals: &[Vec<u8>]) -> Bytes {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        Bytes::from(out)
    }

    #[test]
    fn h264_round_trips_nal_units_through_stap_a_and_fu_a() {
        let sps = vec![0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
        let pps = vec![0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65).chain((0..6000u32).map(|i| (i % 253 + 1) as u8)).collect();
        let slice: Vec<u8> = std::iter::once(0x41).chain((0..700u32).map(|i| (i % 251 + 1) as u8)).collect();
        let sent = [vec![sps, pps, idr], vec![slice]];
        let packets = packetize(&mut H264Payloader::default(), &sent.iter().map(|f| annex_b(f)).collect::<Vec<_>>(), 3000);
        let (out, _) = assemble(Codec::H264, packets.into_iter().map(Released::Packet).collect());
        let got = frames(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(nal_units(&got[0].data), sent[0]);
        assert_eq!(nal_units(&got[1].data), sent[1]);
        assert_eq!((got[0].keyframe, got[1].keyframe), (true, false));
    }

    #[test]
    fn a_loss_drops_frames_until_the_next_keyframe_and_asks_for_one_once() {
        let sent = vec![
            vp8_frame(true, 3000, 1),
            vp8_frame(false, 3000, 2), // loses its second packet
            vp8_frame(false, 800, 3),
            vp8_frame(false, 800, 4),
            vp8_frame(true, 2500, 5),
            vp8_frame(false, 800, 6),
        ];
        let packets = packetize(&mut Vp8Payloader::default(), &sent, 3000);
        let second_frame: Vec<usize> = packets.iter().enumerate().filter(|(_, p)| p.timestamp == 3000).map(|(i, _)| i).collect();
        let lost = second_frame[1];
        let released: Vec<Released> = packets
            .into_iter()
            .enumerate()
            .map(|(i, p)| if i == lost { Released::Lost { count: 1 } } else { Released::Packet(p) })
            .collect();
        let (out, stats) = assemble(Codec::Vp8, released);
        let requests = out.iter().filter(|a| **a == Assembled::KeyframeNeeded).count();
        assert_eq!(requests, 1, "{out:?}");
        let got = frames(&out);
        assert_eq!(got.iter().map(|f| f.timestamp).collect::<Vec<_>>(), [0, 12000, 15000], "broken frame and its dependants dropped");
        assert_eq!(got[1].data, sent[4], "the next keyframe, intact");
        assert_eq!((stats.dropped_frames, stats.keyframe_requests), (3, 1));
    }

    #[test]
    fn video_waits_for_its_first_keyframe_and_starts_mid_frame_safely() {
        let sent = vec![vp8_frame(false, 3000, 1), vp8_frame(true, 3000, 2)];
        let packets = packetize(&mut Vp8Payloader::default(), &sent, 3000);
        // Joining mid-frame: the first packet is gone without a loss report.
        let released: Vec<Released> = packets.into_iter().skip(1).map(Released::Packet).collect();
        let (out, stats) = assemble(Codec::Vp8, released);
        let got = frames(&out);
        assert_eq!(got.len(), 1);
        assert!(got[0].keyframe);
        assert_eq!(stats.dropped_frames, 1);
    }
}
