//! The VP8 payload descriptor (RFC 7741 §4.2), read without state: each packet's descriptor
//! is stripped on its own and what follows is the frame's data.
//!
//! The `rtc` family's VP8 depacketizer refuses any payload shorter than four bytes, but a
//! frame one or two bytes longer than a multiple of the packetizer's fragment size ends in a
//! packet of a one-byte descriptor and one or two bytes of data. That packet is valid, and
//! refusing it lost the frame and every frame up to the next keyframe.

use bytes::Bytes;
use rtc::rtp::packetizer::Depacketizer;
use rtc::shared::error::{Error, Result};
use sfu::vp8::Descriptor;

/// Start of a VP8 partition (first octet).
const S: u8 = 0x10;

/// Strips VP8 payload descriptors.
#[derive(Debug, Default, Clone, Copy)]
pub struct Vp8Depacketizer;

impl Depacketizer for Vp8Depacketizer {
    /// The frame data after the descriptor: at least one byte.
    fn depacketize(&mut self, payload: &Bytes) -> Result<Bytes> {
        match Descriptor::parse(payload).map(|d| usize::from(d.len)) {
            Some(len) if len < payload.len() => Ok(payload.slice(len..)),
            _ => Err(Error::ErrShortPacket),
        }
    }

    fn is_partition_head(&self, payload: &Bytes) -> bool {
        payload.first().is_some_and(|first| first & S != 0)
    }

    fn is_partition_tail(&self, marker: bool, _payload: &Bytes) -> bool {
        marker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(payload: &'static [u8]) -> Option<Bytes> {
        Vp8Depacketizer.depacketize(&Bytes::from_static(payload)).ok()
    }

    #[test]
    fn descriptors_of_every_shape_are_stripped() {
        assert_eq!(data(&[0x10, 0xAA]).as_deref(), Some(&[0xAA][..]), "minimal descriptor, one byte of data");
        assert_eq!(data(&[0x90, 0x80, 0x05, 0xAA, 0xBB]).as_deref(), Some(&[0xAA, 0xBB][..]), "7-bit picture id");
        assert_eq!(data(&[0x90, 0x80, 0x85, 0x01, 0xAA]).as_deref(), Some(&[0xAA][..]), "15-bit picture id");
        assert_eq!(data(&[0x90, 0xF0, 0x85, 0x01, 0x07, 0x20, 0xAA]).as_deref(), Some(&[0xAA][..]), "picture id, TL0PICIDX, TID/KEYIDX");
        assert_eq!(data(&[0x80, 0x00, 0xAA]).as_deref(), Some(&[0xAA][..]), "extension octet without fields");
    }

    #[test]
    fn payloads_without_data_are_refused() {
        for payload in [&[][..], &[0x10], &[0x90], &[0x90, 0x80], &[0x90, 0x80, 0x85], &[0x90, 0x80, 0x85, 0x01]] {
            assert!(Vp8Depacketizer.depacketize(&Bytes::copy_from_slice(payload)).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn the_start_bit_marks_a_partition_head() {
        assert!(Vp8Depacketizer.is_partition_head(&Bytes::from_static(&[0x10, 0xAA])));
        assert!(!Vp8Depacketizer.is_partition_head(&Bytes::from_static(&[0x00, 0xAA])));
        assert!(!Vp8Depacketizer.is_partition_head(&Bytes::new()));
    }
}
