//! A real browser: two headless Chromium tabs open the demo page in one room and must decode
//! each other's video and audio, chat, survive a dropped signaling connection, and be
//! recorded through the HTTP API into HLS that ffprobe reads and ffmpeg decodes. Needs
//! Debian's `chromium` and `ffmpeg` and `npm ci` in tests/browser, which `./scripts/test`
//! installs.

mod common;

use std::process::Command;

use common::{decode_errors, ffprobe, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_tabs_see_and_hear_each_other() {
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__RESUME_GRACE_SECS", "10")]).await;
    let url = format!("http://{}", server.http);
    let output = tokio::task::spawn_blocking(move || Command::new("node").arg("tests/browser/two_tabs.mjs").arg(url).output())
        .await
        .expect("the browser run finishes")
        .expect("node runs (./scripts/test installs Node's packages and Chromium)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("chat delivered"));
    assert!(stdout.contains("session resumed"));
    let listed = stdout.lines().find_map(|line| line.strip_prefix("recordings: ")).expect("the recordings were listed");
    let recordings: serde_json::Value = serde_json::from_str(listed).expect("recordings JSON");
    for recording in recordings.as_array().expect("a list") {
        let url = recording["hls_url"].as_str().unwrap_or_else(|| panic!("HLS link: {recording}"));
        check_hls(url, recording["duration_secs"].as_f64().unwrap_or(0.0));
    }
}

/// A browser's recording as HLS: a video (VP8, VP9 or H.264, as Chromium chose) and an Opus
/// stream, the length the API lists, frames in both, and a decode without errors.
fn check_hls(url: &str, listed_secs: f64) {
    let probe = ffprobe(url);
    let streams = probe["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{probe}");
    let stream = |kind: &str| streams.iter().find(|s| s["codec_type"] == kind).unwrap_or_else(|| panic!("{kind} stream: {probe}"));
    assert!(["vp8", "vp9", "h264"].contains(&stream("video")["codec_name"].as_str().unwrap_or("")), "{probe}");
    assert_eq!(stream("audio")["codec_name"], "opus", "{probe}");
    for kind in ["video", "audio"] {
        let frames: u64 = stream(kind)["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(frames > 50, "{kind} frames recorded: {probe}");
    }
    let duration: f64 = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
    // The API lists whole seconds, to the nearest.
    assert!(duration > 4.0 && (listed_secs - duration) >= -0.5 && (listed_secs - duration) < 1.5, "{duration} s vs {listed_secs}: {probe}");
    assert_eq!(decode_errors(url), "", "{url} decodes without errors");
}
