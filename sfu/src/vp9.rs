//! The VP9 payload descriptor (RFC 9628 §4.2) as far as adaptive stream needs it: the picture
//! size a keyframe's scalability structure gives.

use crate::simulcast::FrameSize;

/// First octet: picture ID present, inter-picture predicted, layer indices present,
/// flexible mode, scalability structure present.
const I: u8 = 0x80;
const P: u8 = 0x40;
const L: u8 = 0x20;
const F: u8 = 0x10;
const V: u8 = 0x02;
/// A 15-bit picture ID (first picture ID octet).
const M: u8 = 0x80;
/// A reference index octet is followed by another (flexible mode).
const N: u8 = 0x01;
/// Scalability structure: its spatial layers' sizes are present.
const Y: u8 = 0x10;
/// At most three reference indices follow a picture ID in flexible mode.
const MAX_REFERENCES: usize = 3;

/// The size of the highest spatial layer in the scalability structure a payload's descriptor
/// carries (browsers send one with each keyframe); `None` for a payload without one, or one
/// cut short.
pub fn frame_size(payload: &[u8]) -> Option<FrameSize> {
    let first = *payload.first()?;
    if first & V == 0 {
        return None;
    }
    let mut at = 1;
    if first & I != 0 {
        at += if *payload.get(at)? & M != 0 { 2 } else { 1 };
    }
    if first & L != 0 {
        // Layer indices, and TL0PICIDX in non-flexible mode.
        at += if first & F == 0 { 2 } else { 1 };
    }
    if first & F != 0 && first & P != 0 {
        for _ in 0..MAX_REFERENCES {
            let more = *payload.get(at)? & N != 0;
            at += 1;
            if !more {
                break;
            }
        }
    }
    let structure = *payload.get(at)?;
    if structure & Y == 0 {
        return None;
    }
    let spatial_layers = usize::from(structure >> 5) + 1;
    let top = at + 1 + 4 * (spatial_layers - 1);
    let size = payload.get(top..top + 4)?;
    Some(FrameSize { width: u32::from(u16::from_be_bytes([size[0], size[1]])), height: u32::from(u16::from_be_bytes([size[2], size[3]])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyframe_s_scalability_structure_gives_its_top_spatial_layer_s_size() {
        let size = |width, height| Some(FrameSize { width, height });
        // Picture ID of 15 bits, layer indices and TL0PICIDX, then one spatial layer of
        // 640x360 (and a picture group, which follows the sizes).
        let one = [I | L | V | 0x08, 0x81, 0x23, 0x00, 0x07, Y | 0x08, 0x02, 0x80, 0x01, 0x68, 0x01, 0x04, 0xAA];
        assert_eq!(frame_size(&one), size(640, 360));
        // Three spatial layers, no picture ID nor layer indices: the last size is the top's.
        let three = [V | 0x08, (2 << 5) | Y, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xD0];
        assert_eq!(frame_size(&three), size(1280, 720));
        // Flexible mode, predicted, with two reference indices before the structure.
        let flexible = [I | P | F | V, 0x05, 0x03, 0x02, Y, 0x01, 0x40, 0x00, 0xB4];
        assert_eq!(frame_size(&flexible), size(320, 180));
        assert_eq!(frame_size(&[I | L | 0x08, 0x05, 0x00, 0x07, 0xAA]), None, "no structure");
        assert_eq!(frame_size(&[V, 0x00]), None, "a structure without sizes");
        for cut in 0..one.len() - 3 {
            assert_eq!(frame_size(&one[..cut]), None, "{cut} octets");
        }
    }
}
