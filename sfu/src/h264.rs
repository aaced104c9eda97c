//! H.264 payloads (RFC 6184) as a forwarder needs them: whether a packet starts a keyframe,
//! the point where a subscriber can be switched to another simulcast layer, and the picture
//! size its sequence parameter set gives.

use crate::simulcast::FrameSize;

/// NAL unit types (H.264 table 7-1, RFC 6184 §5.4).
const IDR: u8 = 5;
const SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
/// FU header: start of the fragmented NAL unit.
const FU_START: u8 = 0x80;

/// Whether an H.264 payload starts a keyframe: it holds a sequence parameter set or the
/// start of an IDR slice, alone, aggregated (STAP-A) or fragmented (FU-A).
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else { return false };
    match first & 0x1F {
        IDR | SPS => true,
        STAP_A => aggregated_units(&payload[1..]).any(|unit| matches!(unit[0] & 0x1F, IDR | SPS)),
        FU_A => payload.get(1).is_some_and(|fu| fu & FU_START != 0 && matches!(fu & 0x1F, IDR | SPS)),
        _ => false,
    }
}

/// Each unit of an aggregation's body, its NAL header first: 16-bit sizes, each followed by
/// its unit (H.264's STAP-A, H.265's AP). A unit cut short ends the walk.
pub(crate) fn aggregated_units(mut body: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    std::iter::from_fn(move || {
        let size = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let unit = body.get(2..2 + size).filter(|unit| !unit.is_empty())?;
        body = &body[2 + size..];
        Some(unit)
    })
}

/// The picture size of the sequence parameter set a payload carries, alone or aggregated
/// (STAP-A); `None` for any other payload, or one whose set is not read here (one with
/// scaling matrices, as no WebRTC encoder sends).
pub fn frame_size(payload: &[u8]) -> Option<FrameSize> {
    let first = *payload.first()?;
    let sps = match first & 0x1F {
        SPS => payload,
        STAP_A => aggregated_units(&payload[1..]).find(|unit| unit[0] & 0x1F == SPS)?,
        _ => return None,
    };
    sequence_parameter_set_size(&sps[1..])
}

/// Octets of a sequence parameter set read at most: its fields up to the frame cropping take
/// about twenty.
const SPS_READ: usize = 64;

/// Reads the picture size from a sequence parameter set's body (H.264 §7.3.2.1.1, the NAL
/// header taken off), its emulation prevention octets removed first.
fn sequence_parameter_set_size(body: &[u8]) -> Option<FrameSize> {
    let mut rbsp = [0u8; SPS_READ];
    let mut len = 0;
    let mut zeros = 0;
    for &octet in body {
        if len == SPS_READ {
            break;
        }
        if zeros >= 2 && octet == 3 {
            zeros = 0;
            continue;
        }
        zeros = if octet == 0 { zeros + 1 } else { 0 };
        rbsp[len] = octet;
        len += 1;
    }
    let mut bits = BitReader { data: &rbsp[..len], at: 0 };
    let profile = bits.read(8)?;
    bits.read(16)?; // constraint flags, level
    bits.exp_golomb()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(profile, 44 | 83 | 86 | 100 | 110 | 118 | 122 | 128 | 134 | 135 | 138 | 139 | 244) {
        chroma_format = bits.exp_golomb()?;
        if chroma_format == 3 {
            bits.read(1)?; // separate_colour_plane_flag
        }
        bits.exp_golomb()?; // bit_depth_luma_minus8
        bits.exp_golomb()?; // bit_depth_chroma_minus8
        bits.read(1)?; // qpprime_y_zero_transform_bypass_flag
        if bits.read(1)? == 1 {
            return None; // seq_scaling_matrix_present_flag
        }
    }
    bits.exp_golomb()?; // log2_max_frame_num_minus4
    match bits.exp_golomb()? {
        0 => {
            bits.exp_golomb()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            bits.read(1)?; // delta_pic_order_always_zero_flag
            bits.exp_golomb()?; // offset_for_non_ref_pic (signed: its size is what counts)
            bits.exp_golomb()?; // offset_for_top_to_bottom_field
            for _ in 0..bits.exp_golomb()?.min(255) {
                bits.exp_golomb()?; // offset_for_ref_frame
            }
        }
        _ => {}
    }
    bits.exp_golomb()?; // max_num_ref_frames
    bits.read(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_in_macroblocks = bits.exp_golomb()? + 1;
    let height_in_map_units = bits.exp_golomb()? + 1;
    let frame_macroblocks_only = bits.read(1)?;
    if frame_macroblocks_only == 0 {
        bits.read(1)?; // mb_adaptive_frame_field_flag
    }
    bits.read(1)?; // direct_8x8_inference_flag
    let (mut crop_x, mut crop_y) = (0, 0);
    if bits.read(1)? == 1 {
        crop_x = bits.exp_golomb()?.saturating_add(bits.exp_golomb()?);
        crop_y = bits.exp_golomb()?.saturating_add(bits.exp_golomb()?);
    }
    // Cropping counts in chroma samples: two luma ones across in 4:2:0 and 4:2:2, two down
    // in 4:2:0; field pictures double the height of everything.
    let fields = 2 - frame_macroblocks_only;
    let (unit_x, unit_y) = match chroma_format {
        1 => (2, 2 * fields),
        2 => (2, fields),
        _ => (1, fields),
    };
    let width = (width_in_macroblocks * 16).checked_sub(crop_x.saturating_mul(unit_x))?;
    let height = (height_in_map_units * 16 * fields).checked_sub(crop_y.saturating_mul(unit_y))?;
    Some(FrameSize { width, height })
}

/// Reads bits, most significant first, from a sequence parameter set.
struct BitReader<'a> {
    data: &'a [u8],
    /// The next bit's index.
    at: usize,
}

impl BitReader<'_> {
    /// The next `count` (at most 32) bits as a number.
    fn read(&mut self, count: u32) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let octet = *self.data.get(self.at / 8)?;
            let bit = (octet >> (7 - self.at % 8)) & 1;
            value = (value << 1) | u32::from(bit);
            self.at += 1;
        }
        Some(value)
    }

    /// An unsigned Exp-Golomb number, `ue(v)`; `None` past 16 leading zeros (no field read
    /// here is that large).
    fn exp_golomb(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.read(1)? == 0 {
            zeros += 1;
            if zeros > 16 {
                return None;
            }
        }
        Some((1 << zeros) - 1 + self.read(zeros)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn finds_keyframes_alone_aggregated_and_fragmented() {
        assert!(is_keyframe_start(&[0x65, 1, 2]), "an IDR slice");
        assert!(is_keyframe_start(&[0x67, 1, 2]), "an SPS");
        assert!(!is_keyframe_start(&[0x41, 1, 2]), "a non-IDR slice");
        // STAP-A of an SEI (6) then an SPS.
        assert!(is_keyframe_start(&[0x78, 0, 2, 0x06, 0, 0, 3, 0x67, 1, 2]));
        assert!(!is_keyframe_start(&[0x78, 0, 2, 0x06, 0, 0, 3, 0x41, 1, 2]));
        assert!(!is_keyframe_start(&[0x78, 0, 9, 0x06]), "a size past the end");
        // FU-A: the start of an IDR slice, and a later fragment of one.
        assert!(is_keyframe_start(&[0x7C, 0x85, 1]));
        assert!(!is_keyframe_start(&[0x7C, 0x05, 1]));
        assert!(!is_keyframe_start(&[]));
        assert!(!is_keyframe_start(&[0x7C]));
    }

    /// A sequence parameter set as x264 writes it (NAL header included), from its hex.
    pub(crate) fn sps(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn a_sequence_parameter_set_gives_the_cropped_picture_size() {
        let size = |width, height| Some(FrameSize { width, height });
        let high_320 = sps("6764000dacd941419f9f0110000003001000000303c0f142996000");
        assert_eq!(frame_size(&high_320), size(320, 180), "high profile, cropped to 180 rows");
        assert_eq!(frame_size(&sps("6764001facd9405005bb0110000003001000000303c0f183196000")), size(1280, 720));
        assert_eq!(frame_size(&sps("6742c01ed900a02ff970110000030001000003003c0f162e4800")), size(640, 360), "baseline");
        assert_eq!(frame_size(&sps("674d4028eca03c0113d4d80880000003008000001e078c18cb00")), size(1918, 1078), "main, odd crop");
        // Aggregated behind an SEI, and cut short.
        let mut stap = vec![0x78, 0, 2, 0x06, 0xAA, 0, high_320.len() as u8];
        stap.extend_from_slice(&high_320);
        assert_eq!(frame_size(&stap), size(320, 180));
        for cut in 1..10 {
            assert_eq!(frame_size(&high_320[..cut]), None, "{cut} octets");
        }
        assert_eq!(frame_size(&[0x65, 0x88]), None, "an IDR slice");
        assert_eq!(frame_size(&[0x67, 0, 0, 0, 0, 0, 0, 0, 0]), None, "a run of zeros");
    }
}
