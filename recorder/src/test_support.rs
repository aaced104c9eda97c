//! Helpers shared by the recorder's unit tests.

use bytes::Bytes;

/// A VP8 frame with a valid frame header (640x480) and filler after it.
pub fn vp8(key: bool, len: usize) -> Bytes {
    let first_partition = 64u32;
    let tag = (first_partition << 5) | (1 << 4) | u32::from(!key);
    let mut data = vec![tag as u8, (tag >> 8) as u8, (tag >> 16) as u8];
    if key {
        data.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
    }
    data.resize(len, 0x5a);
    Bytes::from(data)
}

/// Microseconds as an NTP 32.32 timestamp.
pub fn ntp(micros: i64) -> u64 {
    let seconds = (micros / 1_000_000) as u64;
    let fraction = (((micros % 1_000_000) as u64) << 32) / 1_000_000;
    (seconds << 32) | fraction
}

/// What ffprobe reads of a file: streams (codec, packets counted) and format (duration).
pub fn ffprobe(path: &std::path::Path) -> serde_json::Value {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "stream=codec_name,nb_read_packets:format=duration,format_name",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg; scripts/test installs it)");
    assert!(output.status.success(), "ffprobe refused {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("ffprobe JSON")
}
