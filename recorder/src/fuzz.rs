//! Entry points of the fuzz targets (`fuzz/`) and of the tests that replay their corpus: each
//! takes any bytes and must neither panic nor hang, nor grow without bound.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::assembler::Codec;
use crate::jitter::RtpPacket;
use crate::recording::{Recording, RecordingSettings};

/// Reads the fuzz input as a sequence of small fields.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let len = len.min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([self.byte()?, self.byte()?, self.byte()?, self.byte()?]))
    }
}

/// A recording of an Opus track and a video track (the first byte picks VP8, VP9, H.264 or
/// AV1) fed the packets the input describes: the jitter buffer, the depacketizers, the frame
/// assembler, the fMP4 writer and the segmenter, as a publisher's media drives them. Each
/// record is a flags byte (track, marker, a step of the clock), a sequence number, a
/// timestamp, a payload length byte and the payload.
pub fn recording(data: &[u8]) {
    let mut input = Input(data);
    let Some(pick) = input.byte() else { return };
    let video = [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1][usize::from(pick % 4)];
    let mut now = Instant::now();
    let Ok(mut recording) = Recording::new(&[Codec::Opus, video], RecordingSettings::default(), now) else { return };
    while let (Some(flags), Some(sequence), Some(timestamp), Some(len)) = (input.byte(), input.u16(), input.u32(), input.byte()) {
        let Some(payload) = input.bytes(usize::from(len)) else { break };
        now += Duration::from_millis(u64::from(flags >> 2));
        let packet = RtpPacket { sequence, timestamp, marker: flags & 2 != 0, payload: Bytes::copy_from_slice(payload) };
        if recording.on_rtp(now, usize::from(flags & 1), packet).is_err() || recording.poll(now).is_err() {
            return;
        }
        while recording.next_output().is_some() {}
    }
    let _ = recording.finish();
    while recording.next_output().is_some() {}
}
