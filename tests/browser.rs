//! A real browser: two headless Chromium tabs open the meeting page in one room and must
//! decode each other's video and audio, chat, survive a dropped signaling connection, and be
//! recorded through the HTTP API into HLS that ffprobe reads and ffmpeg decodes; three tabs
//! use the meeting page as people would, over HTTPS and WSS (tests/browser/meeting.mjs); a
//! page publishes over WHIP, the meeting page shows it and another page plays it over WHEP
//! (tests/browser/whip_whep.mjs), over UDP and again over ICE-TCP alone; a page publishes
//! simulcast and another follows its layers as the full one stops and resumes, and a third
//! behind a relay narrowed to 300 kbit/s is moved to the low layer and back, and the second
//! is sent the layer its video box needs and nothing while the box is hidden, and the publisher
//! pauses the layers no one needs (tests/browser/simulcast.mjs).
//! Needs Debian's `chromium` and `ffmpeg` and `npm ci` in tests/browser, which
//! `./scripts/test` installs.

mod common;

use std::process::Command;

use common::{decode_errors, ffprobe, TestServer};

/// One browser run at a time: each is several Chromium tabs encoding and decoding video.
static ONE_BROWSER_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a script of tests/browser with `args`; its standard output, once it succeeded.
async fn node(script: &str, args: Vec<String>) -> String {
    let _turn = ONE_BROWSER_RUN.lock().await;
    let script = format!("tests/browser/{script}");
    let output = tokio::task::spawn_blocking(move || Command::new("node").arg(script).args(args).output())
        .await
        .expect("the browser run finishes")
        .expect("node runs (./scripts/test installs Node's packages and Chromium)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_tabs_see_and_hear_each_other() {
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__RESUME_GRACE_SECS", "10")]).await;
    let stdout = node("two_tabs.mjs", vec![format!("http://{}", server.http)]).await;
    assert!(stdout.contains("chat delivered"));
    assert!(stdout.contains("session resumed"));
    let listed = stdout.lines().find_map(|line| line.strip_prefix("recordings: ")).expect("the recordings were listed");
    let recordings: serde_json::Value = serde_json::from_str(listed).expect("recordings JSON");
    for recording in recordings.as_array().expect("a list") {
        let url = recording["hls_url"].as_str().unwrap_or_else(|| panic!("HLS link: {recording}"));
        check_hls(url, recording["duration_secs"].as_f64().unwrap_or(0.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_subscribers_follow_the_simulcast_layers_sent_their_downlinks_and_their_views() {
    let server = TestServer::start(&[]).await;
    let stdout = node("simulcast.mjs", vec![format!("http://{}", server.http)]).await;
    for phase in [
        "full: ",
        "half: ",
        "back to full: ",
        "narrowed: ",
        "adapted: ",
        "widened: ",
        "thumbnail: ",
        "hidden: ",
        "large: ",
        "dynacast paused: ",
        "dynacast resumed: ",
    ] {
        assert!(stdout.lines().any(|line| line.starts_with(phase)), "the {phase} phase ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_people_use_the_meeting_page_over_https() {
    let dir = common::services::TempDir::new();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_owned();
    let (cert_path, key_path) = (path(&cert), path(&key));
    let server = TestServer::start(&[
        ("SWITCHBOARD__HTTP__TLS__SELF_SIGNED", "true"),
        ("SWITCHBOARD__HTTP__TLS__CERT", &cert_path),
        ("SWITCHBOARD__HTTP__TLS__KEY", &key_path),
    ])
    .await;
    let stdout = node("meeting.mjs", vec![format!("https://127.0.0.1:{}", server.http.port()), cert_path]).await;
    for step in
        ["mute and unmute seen", "camera off seen", "active speaker seen", "screen share seen and stopped", "chat delivered", "leave seen"]
    {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
    let listed = stdout.lines().find_map(|line| line.strip_prefix("recordings: ")).expect("the recordings were listed");
    let links: Vec<String> = serde_json::from_str(listed).expect("a JSON list of links");
    assert_eq!(links.len(), 3, "one MP4 per person: {links:?}");
    for link in &links {
        let probe = ffprobe(link);
        let kinds: Vec<&str> = probe["streams"].as_array().expect("streams").iter().filter_map(|s| s["codec_type"].as_str()).collect();
        assert!(kinds.contains(&"video") && kinds.contains(&"audio"), "{link}: {probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_page_publishes_over_whip_and_another_plays_it_over_whep() {
    let server = TestServer::start(&[]).await;
    let stdout = node("whip_whep.mjs", vec![format!("http://{}", server.http)]).await;
    for step in [
        "whip publisher seen",
        "whep player decodes",
        "whep session ended",
        "whip session ended",
        "whip transport: udp",
        "whep transport: udp",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_whose_network_blocks_udp_publish_and_play_over_ice_tcp() {
    let server = TestServer::start(&[]).await;
    let stdout = node("whip_whep.mjs", vec![format!("http://{}", server.http), "tcp".into()]).await;
    for step in [
        "whip publisher seen",
        "whep player decodes",
        "whep session ended",
        "whip session ended",
        "whip transport: tcp",
        "whep transport: tcp",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
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
