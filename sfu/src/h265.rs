//! H.265 payloads (RFC 7798) as a forwarder needs them: whether a packet starts a keyframe,
//! the point where a subscriber can be switched to another simulcast layer.

use crate::h264::aggregated_units;

/// NAL unit types (H.265 table 7-1, RFC 7798 §4.4): the IRAP pictures (BLA, IDR, CRA), the
/// parameter sets that precede them, and the two packet types that carry other units.
const IRAP: std::ops::RangeInclusive<u8> = 16..=21;
const PARAMETER_SETS: std::ops::RangeInclusive<u8> = 32..=34;
const AGGREGATION: u8 = 48;
const FRAGMENTATION: u8 = 49;
/// FU header: start of the fragmented NAL unit.
const FU_START: u8 = 0x80;

/// The type of the NAL unit whose two-octet header starts with `first`.
fn unit_type(first: u8) -> u8 {
    (first >> 1) & 0x3F
}

fn starts_keyframe(unit: u8) -> bool {
    IRAP.contains(&unit) || PARAMETER_SETS.contains(&unit)
}

/// Whether an H.265 payload starts a keyframe: it holds a parameter set or the start of an
/// IRAP picture, alone, aggregated (AP) or fragmented (FU).
pub fn is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else { return false };
    match unit_type(first) {
        AGGREGATION => aggregated_units(payload.get(2..).unwrap_or_default()).map(|unit| unit_type(unit[0])).any(starts_keyframe),
        FRAGMENTATION => payload.get(2).is_some_and(|fu| fu & FU_START != 0 && starts_keyframe(fu & 0x3F)),
        unit => starts_keyframe(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keyframes_alone_aggregated_and_fragmented() {
        assert!(is_keyframe_start(&[19 << 1, 1, 0xAA]), "an IDR picture");
        assert!(is_keyframe_start(&[32 << 1, 1]), "a VPS");
        assert!(!is_keyframe_start(&[1 << 1, 1, 0xAA]), "a trailing picture");
        // AP of an SEI (39) then an SPS (33).
        assert!(is_keyframe_start(&[48 << 1, 1, 0, 2, 39 << 1, 1, 0, 2, 33 << 1, 1]));
        assert!(!is_keyframe_start(&[48 << 1, 1, 0, 2, 39 << 1, 1, 0, 2, 1 << 1, 1]));
        assert!(!is_keyframe_start(&[48 << 1, 1, 0, 9, 39 << 1]), "a size past the end");
        // FU: the start of a CRA picture (21), and a later fragment of one.
        assert!(is_keyframe_start(&[49 << 1, 1, 0x80 | 21, 0xAA]));
        assert!(!is_keyframe_start(&[49 << 1, 1, 21, 0xAA]));
        assert!(!is_keyframe_start(&[]));
    }
}
