//! H.264 payloads (RFC 6184) as a forwarder needs them: whether a packet starts a keyframe,
//! the point where a subscriber can be switched to another simulcast layer.

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
        STAP_A => aggregated_units(&payload[1..]).any(|unit| matches!(unit & 0x1F, IDR | SPS)),
        FU_A => payload.get(1).is_some_and(|fu| fu & FU_START != 0 && matches!(fu & 0x1F, IDR | SPS)),
        _ => false,
    }
}

/// The first octet (the NAL header) of each unit of an aggregation's body: 16-bit sizes,
/// each followed by its unit (H.264's STAP-A, H.265's AP).
pub(crate) fn aggregated_units(mut body: &[u8]) -> impl Iterator<Item = u8> + '_ {
    std::iter::from_fn(move || {
        let size = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let header = *body.get(2).filter(|_| size > 0)?;
        body = body.get(2 + size..).unwrap_or_default();
        Some(header)
    })
}

#[cfg(test)]
mod tests {
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
}
