//! The VP8 payload descriptor (RFC 7741 §4.2) as a forwarder needs it: whether a packet
//! starts a keyframe, and where its picture ID and TL0PICIDX are, so that a subscriber
//! switched from one simulcast layer to another keeps seeing them count on by one.
//!
//! Each simulcast layer numbers its pictures on its own. [`PictureNumbering`] keeps, per
//! subscriber, the offsets that continue the numbers of the layer it left; the forwarder
//! hands the resulting [`Vp8Patch`] to the egress, which writes the few bytes into the
//! datagram it seals anyway, so the shared payload is never copied.

use crate::simulcast::FrameSize;

/// Extended control bits present (first octet).
const X: u8 = 0x80;
/// Start of a VP8 partition (first octet).
const S: u8 = 0x10;
/// Partition index (first octet).
const PID: u8 = 0x07;
/// Picture ID present (extension octet).
const I: u8 = 0x80;
/// TL0PICIDX present (extension octet).
const L: u8 = 0x40;
/// TID present (extension octet).
const T: u8 = 0x20;
/// KEYIDX present (extension octet).
const K: u8 = 0x10;
/// A 15-bit picture ID (first picture ID octet).
const M: u8 = 0x80;
/// Inverse key frame flag (first octet of the VP8 payload header).
const P: u8 = 0x01;

/// A picture ID of 7 or 15 bits, and where it sits in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    /// Offset of its first octet in the payload (a descriptor is at most six octets).
    pub at: u8,
    /// Its value.
    pub value: u16,
    /// Whether it takes 15 bits (two octets) rather than 7.
    pub long: bool,
}

impl PictureId {
    fn modulus(self) -> u32 {
        if self.long {
            1 << 15
        } else {
            1 << 7
        }
    }
}

/// What a forwarder reads from one packet's VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The picture ID, when the descriptor carries one.
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX and its offset, when the descriptor carries it.
    pub tl0_pic_idx: Option<(u8, u8)>,
    /// Whether the packet starts a keyframe (the first packet of its first partition, whose
    /// payload header says key frame).
    pub keyframe_start: bool,
    /// Its length in octets: the frame's data follows it.
    pub len: u8,
}

impl Descriptor {
    /// Reads the descriptor at the start of `payload`; `None` if it is cut short.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        let mut len = 1;
        let (mut picture_id, mut tl0_pic_idx) = (None, None);
        if first & X != 0 {
            let extension = *payload.get(1)?;
            len = 2;
            if extension & I != 0 {
                let high = *payload.get(len)?;
                picture_id = Some(if high & M != 0 {
                    let low = *payload.get(len + 1)?;
                    let value = u16::from_be_bytes([high & !M, low]);
                    len += 2;
                    PictureId { at: len as u8 - 2, value, long: true }
                } else {
                    len += 1;
                    PictureId { at: len as u8 - 1, value: u16::from(high), long: false }
                });
            }
            if extension & L != 0 {
                tl0_pic_idx = Some((len as u8, *payload.get(len)?));
                len += 1;
            }
            if extension & (T | K) != 0 {
                len += 1;
            }
        }
        let starts_partition_zero = first & S != 0 && first & PID == 0;
        let keyframe_start = starts_partition_zero && payload.get(len).is_some_and(|header| header & P == 0);
        Some(Self { picture_id, tl0_pic_idx, keyframe_start, len: len as u8 })
    }
}

/// Whether a VP8 payload starts a keyframe.
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    Descriptor::parse(payload).is_some_and(|d| d.keyframe_start)
}

/// The picture size a keyframe's first packet gives in its frame header (RFC 6386 §9.1):
/// `frame` is what follows the payload descriptor; `None` if it does not start a keyframe.
pub fn frame_size(frame: &[u8]) -> Option<FrameSize> {
    // A three-octet frame tag (a keyframe when its lowest bit is clear), a start code, then
    // the 14-bit width and height, little-endian, each under two bits of upscaling.
    let header = frame.get(..10)?;
    if header[0] & P != 0 || header[3..6] != [0x9D, 0x01, 0x2A] {
        return None;
    }
    let dimension = |low: u8, high: u8| u32::from(u16::from_le_bytes([low, high]) & 0x3FFF);
    Some(FrameSize { width: dimension(header[6], header[7]), height: dimension(header[8], header[9]) })
}

/// New values for a packet's picture ID and TL0PICIDX, written into its payload by the egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Patch {
    picture_id: Option<PictureId>,
    tl0_pic_idx: Option<(u8, u8)>,
}

impl Vp8Patch {
    /// Writes the new values into `payload` (the packet's payload as it is about to be
    /// sent); a payload too short for them is left as it is.
    pub fn apply(&self, payload: &mut [u8]) {
        if let Some(id) = self.picture_id {
            if id.long {
                let at = usize::from(id.at);
                if let Some(octets) = payload.get_mut(at..at + 2) {
                    let [high, low] = id.value.to_be_bytes();
                    octets[0] = M | high;
                    octets[1] = low;
                }
            } else if let Some(octet) = payload.get_mut(usize::from(id.at)) {
                *octet = id.value as u8 & !M;
            }
        }
        if let Some((at, value)) = self.tl0_pic_idx {
            if let Some(octet) = payload.get_mut(usize::from(at)) {
                *octet = value;
            }
        }
    }
}

/// The picture numbers one subscriber has been sent of one track, continued across the
/// switches from layer to layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct PictureNumbering {
    picture_offset: u16,
    tl0_offset: u8,
    /// The highest picture ID and TL0PICIDX sent (once one was).
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

impl PictureNumbering {
    /// Continues the numbering from the packet that starts a switch to another layer: its
    /// picture comes right after the last one sent, its TL0PICIDX too.
    pub fn switch(&mut self, descriptor: &Descriptor) {
        if let (Some(id), Some(last)) = (descriptor.picture_id, self.last_picture) {
            let next = (u32::from(last) + 1) % id.modulus();
            self.picture_offset = ((next + id.modulus() - u32::from(id.value)) % id.modulus()) as u16;
        }
        if let (Some((_, tl0)), Some(last)) = (descriptor.tl0_pic_idx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
        }
    }

    /// The patch that renumbers a packet with this `descriptor`, if its numbers change
    /// (they do not before the first switch); notes the numbers sent.
    pub fn renumber(&mut self, descriptor: &Descriptor) -> Option<Vp8Patch> {
        let picture_id = descriptor.picture_id.map(|id| {
            let value = ((u32::from(id.value) + u32::from(self.picture_offset)) % id.modulus()) as u16;
            if self.last_picture.is_none_or(|last| picture_is_newer(value, last, id.modulus())) {
                self.last_picture = Some(value);
            }
            PictureId { value, ..id }
        });
        let tl0_pic_idx = descriptor.tl0_pic_idx.map(|(at, tl0)| {
            let value = tl0.wrapping_add(self.tl0_offset);
            if self.last_tl0.is_none_or(|last| value.wrapping_sub(last) < 0x80) {
                self.last_tl0 = Some(value);
            }
            (at, value)
        });
        (self.picture_offset != 0 || self.tl0_offset != 0).then_some(Vp8Patch { picture_id, tl0_pic_idx })
    }
}

/// Whether picture ID `a` follows `b` in the wrapping order of `modulus` (`b` may have come
/// from a layer whose IDs are longer).
fn picture_is_newer(a: u16, b: u16, modulus: u32) -> bool {
    let (a, b) = (u32::from(a) % modulus, u32::from(b) % modulus);
    (a + modulus - b) % modulus < modulus / 2
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VP8 payload: 15-bit picture ID, TL0PICIDX and TID; `key` sets the payload
    /// header's key frame flag on a partition start.
    pub(crate) fn payload(picture_id: u16, tl0: u8, start: bool, key: bool) -> Vec<u8> {
        let first = X | if start { S } else { 0 };
        let [high, low] = picture_id.to_be_bytes();
        let header = if key { 0x10 } else { 0x11 };
        vec![first, I | L | T, M | high, low, tl0, 0x20, header, 0xAA, 0xBB]
    }

    #[test]
    fn a_keyframe_header_gives_the_picture_size() {
        let keyframe = [0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x00, 0x05, 0xD0, 0x02, 0xAA];
        assert_eq!(frame_size(&keyframe), Some(FrameSize { width: 1280, height: 720 }));
        let upscaled = [0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x41, 0xB4, 0xC0];
        assert_eq!(frame_size(&upscaled), Some(FrameSize { width: 320, height: 180 }), "scale bits ignored");
        let mut delta = keyframe;
        delta[0] |= P;
        assert_eq!(frame_size(&delta), None, "a delta frame");
        let mut no_start_code = keyframe;
        no_start_code[4] = 0;
        assert_eq!(frame_size(&no_start_code), None);
        assert_eq!(frame_size(&keyframe[..9]), None, "cut short");
    }

    #[test]
    fn reads_picture_id_tl0_and_keyframes() {
        let d = Descriptor::parse(&payload(0x1234, 9, true, true)).unwrap();
        assert_eq!(d.picture_id, Some(PictureId { at: 2, value: 0x1234, long: true }));
        assert_eq!(d.tl0_pic_idx, Some((4, 9)));
        assert!(d.keyframe_start);
        assert_eq!(d.len, 6);
        assert!(!is_keyframe_start(&payload(1, 1, true, false)), "a delta frame");
        assert!(!is_keyframe_start(&payload(1, 1, false, true)), "not the first packet");
        let short = Descriptor::parse(&[X | S, I, 0x05, 0x10]).unwrap();
        assert_eq!(short.picture_id, Some(PictureId { at: 2, value: 5, long: false }));
        assert!(short.keyframe_start);
        assert!(is_keyframe_start(&[S, 0x10]), "no extension");
        for cut in 0..5 {
            assert!(Descriptor::parse(&payload(1, 1, true, true)[..cut]).is_none(), "{cut} octets");
        }
    }

    #[test]
    fn a_switch_continues_picture_id_and_tl0_from_the_last_sent() {
        let mut numbering = PictureNumbering::default();
        for id in 100..110u16 {
            let d = Descriptor::parse(&payload(id, id as u8, true, false)).unwrap();
            assert_eq!(numbering.renumber(&d), None, "unchanged before any switch");
        }
        // The other layer is at picture 32767 (about to wrap) and TL0PICIDX 250.
        let first = Descriptor::parse(&payload(32_767, 250, true, true)).unwrap();
        numbering.switch(&first);
        let mut sent = Vec::new();
        for (id, tl0) in [(32_767u16, 250u8), (0, 251), (1, 252)] {
            let mut bytes = payload(id, tl0, true, false);
            let d = Descriptor::parse(&bytes).unwrap();
            numbering.renumber(&d).unwrap().apply(&mut bytes);
            let out = Descriptor::parse(&bytes).unwrap();
            sent.push((out.picture_id.unwrap().value, out.tl0_pic_idx.unwrap().1));
            assert_eq!(bytes[6..], payload(id, tl0, true, false)[6..], "the frame is untouched");
        }
        assert_eq!(sent, [(110, 110), (111, 111), (112, 112)]);
    }

    #[test]
    fn a_layer_of_seven_bit_ids_after_one_of_fifteen_bit_ids_is_renumbered_without_overflow() {
        let mut numbering = PictureNumbering::default();
        numbering.renumber(&Descriptor::parse(&payload(20_000, 1, true, false)).unwrap());
        let short = Descriptor::parse(&[X | S, I, 3, 0x10]).unwrap();
        numbering.switch(&short);
        let patch = numbering.renumber(&short).expect("renumbered");
        let mut bytes = [X | S, I, 3, 0x10];
        patch.apply(&mut bytes);
        assert_eq!(u32::from(bytes[2]), (20_000 + 1) % 128, "continues from the last ID, in 7 bits");
    }

    #[test]
    fn seven_bit_picture_ids_wrap_at_128() {
        let mut numbering = PictureNumbering::default();
        let d = Descriptor::parse(&[X | S, I, 127, 0x10]).unwrap();
        numbering.renumber(&d);
        let other = Descriptor::parse(&[X | S, I, 40, 0x10]).unwrap();
        numbering.switch(&other);
        let mut bytes = [X | S, I, 40, 0x10];
        numbering.renumber(&other).unwrap().apply(&mut bytes);
        assert_eq!(bytes[2], 0, "127 + 1 wraps to 0");
    }
}
