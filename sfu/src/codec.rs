//! Codec identity across connections: whether two negotiated codecs carry the same bitstream
//! format, so a publisher's packets can be forwarded under the subscriber's payload type.

use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

/// The fmtp parameters that change the bitstream format, per codec.
fn format_keys(mime_type: &str) -> &'static [&'static str] {
    if mime_type.eq_ignore_ascii_case("video/H264") {
        &["packetization-mode", "profile-level-id"]
    } else if mime_type.eq_ignore_ascii_case("video/VP9") {
        &["profile-id"]
    } else if mime_type.eq_ignore_ascii_case("video/AV1") {
        &["profile"]
    } else {
        &[]
    }
}

/// Whether the engine registers one format of this codec only (VP8, Opus, G.711, G.722), so
/// naming the codec names the format.
pub fn has_one_format(mime_type: &str) -> bool {
    format_keys(mime_type).is_empty()
}

fn fmtp_value<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim())
}

/// Whether `a` and `b` are the same codec with the same format parameters.
pub fn same_format(a: &RTCRtpCodec, b: &RTCRtpCodec) -> bool {
    if !a.mime_type.eq_ignore_ascii_case(&b.mime_type) || a.clock_rate != b.clock_rate {
        return false;
    }
    format_keys(&a.mime_type).iter().all(|key| {
        let (x, y) = (fmtp_value(&a.sdp_fmtp_line, key), fmtp_value(&b.sdp_fmtp_line, key));
        // H.264's packetization-mode defaults to 0 when absent (RFC 6184).
        let default = if *key == "packetization-mode" { Some("0") } else { None };
        match (x.or(default), y.or(default)) {
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            (x, y) => x == y,
        }
    })
}

/// Whether `codec` is the RTX (RFC 4588) format repairing payload type `payload_type`.
pub fn is_rtx_for(codec: &RTCRtpCodec, payload_type: u8) -> bool {
    codec.mime_type.eq_ignore_ascii_case("video/rtx")
        && fmtp_value(&codec.sdp_fmtp_line, "apt").and_then(|apt| apt.parse::<u8>().ok()) == Some(payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec { mime_type: mime.into(), clock_rate: 90_000, channels: 0, sdp_fmtp_line: fmtp.into(), rtcp_feedback: vec![] }
    }

    #[test]
    fn h264_matches_on_profile_and_packetization_only() {
        let a = codec("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f");
        let b = codec("video/h264", "profile-level-id=42001F;packetization-mode=1");
        let c = codec("video/H264", "profile-level-id=42001f");
        assert!(same_format(&a, &b));
        assert!(!same_format(&a, &c), "packetization-mode 0 by default");
        assert!(!same_format(&a, &codec("video/VP8", "")));
        assert!(same_format(&codec("video/VP8", ""), &codec("video/VP8", "x=1")));
    }

    #[test]
    fn rtx_is_matched_by_its_apt() {
        assert!(is_rtx_for(&codec("video/rtx", "apt=96"), 96));
        assert!(!is_rtx_for(&codec("video/rtx", "apt=98"), 96));
        assert!(!is_rtx_for(&codec("video/VP8", "apt=96"), 96));
    }
}
