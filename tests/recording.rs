//! Recording on a whole server: a Rust client publishes real encoded media (ffmpeg's x264 or
//! libvpx video and libopus audio, 15 s) while the room is recorded through the HTTP API;
//! the MP4 and the HLS playlist are then fetched through the download links the API lists
//! and checked with ffprobe (codecs, streams, duration, frames) and decoded by ffmpeg.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::rtc_client::{self, local_track, Outbound};
use common::{decode_errors, ffprobe, services, Signal, TestServer, WAIT};
use rtc::rtp;
use rtc::rtp::codec::{av1::Av1Payloader, h264::H264Payloader, opus::OpusPayloader, vp8::Vp8Payloader};
use rtc::rtp::packetizer::Payloader;
use serde_json::{json, Value};
use webrtc::media_stream::track_local::TrackLocal;

const SECONDS: usize = 15;
const FPS: usize = 30;
const VIDEO_FRAMES: usize = SECONDS * FPS;
const AUDIO_FRAMES: usize = SECONDS * 50;

/// Runs ffmpeg with `args` writing `out` (in a fresh temp file); returns the file's bytes.
fn ffmpeg(args: &[&str], extension: &str) -> Vec<u8> {
    let dir = common::services::TempDir::new();
    let path = dir.path().join(format!("media.{extension}"));
    let status = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).arg(&path).status().expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?}");
    std::fs::read(&path).expect("ffmpeg output")
}

/// 15 s of a test pattern as H.264 access units (baseline, Annex B, a keyframe every 2 s).
fn h264_frames() -> Vec<Bytes> {
    let stream = ffmpeg(
        &["-f", "lavfi", "-i", &format!("testsrc=size=320x240:rate={FPS}"), "-frames:v", &VIDEO_FRAMES.to_string()]
            .into_iter()
            .chain(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.1", "-bf", "0", "-g", "60"])
            .chain(["-x264-params", "aud=1:repeat-headers=1", "-f", "h264"])
            .collect::<Vec<_>>(),
        "h264",
    );
    // Access units start at their delimiter (NAL type 9).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 4 < stream.len() {
        if stream[i..i + 3] == [0, 0, 1] && stream[i + 3] & 0x1f == 9 {
            starts.push(if i > 0 && stream[i - 1] == 0 { i - 1 } else { i });
            i += 4;
        } else {
            i += 1;
        }
    }
    starts.push(stream.len());
    starts.windows(2).map(|w| Bytes::copy_from_slice(&stream[w[0]..w[1]])).collect()
}

/// `frames` of a test pattern encoded by ffmpeg with `codec_args`, as IVF frames.
fn ivf_frames(frames: usize, codec_args: &[&str]) -> Vec<Bytes> {
    let ivf = ffmpeg(
        &["-f", "lavfi", "-i", &format!("testsrc=size=320x240:rate={FPS}"), "-frames:v", &frames.to_string(), "-pix_fmt", "yuv420p"]
            .into_iter()
            .chain(codec_args.iter().copied())
            .chain(["-f", "ivf"])
            .collect::<Vec<_>>(),
        "ivf",
    );
    let mut out = Vec::new();
    let mut at = usize::from(u16::from_le_bytes([ivf[6], ivf[7]]));
    while at + 12 <= ivf.len() {
        let size = u32::from_le_bytes([ivf[at], ivf[at + 1], ivf[at + 2], ivf[at + 3]]) as usize;
        out.push(Bytes::copy_from_slice(&ivf[at + 12..at + 12 + size]));
        at += 12 + size;
    }
    out
}

/// 15 s of a test pattern as VP8 frames (a keyframe every 2 s).
fn vp8_frames() -> Vec<Bytes> {
    ivf_frames(VIDEO_FRAMES, &["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "500k", "-g", "60"])
}

/// 15 s of a tone as 20 ms Opus packets (read out of an Ogg file).
fn opus_frames() -> Vec<Bytes> {
    let ogg = ffmpeg(
        &["-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={SECONDS}")]
            .into_iter()
            .chain(["-c:a", "libopus", "-b:a", "48k", "-frame_duration", "20", "-application", "lowdelay", "-f", "ogg"])
            .collect::<Vec<_>>(),
        "ogg",
    );
    let mut packets = Vec::new();
    let mut current = Vec::new();
    let mut at = 0;
    while at + 27 <= ogg.len() {
        assert_eq!(&ogg[at..at + 4], b"OggS", "Ogg page");
        let segments = usize::from(ogg[at + 26]);
        let lacing = &ogg[at + 27..at + 27 + segments];
        let mut data = at + 27 + segments;
        for &len in lacing {
            current.extend_from_slice(&ogg[data..data + usize::from(len)]);
            data += usize::from(len);
            if len < 255 {
                packets.push(Bytes::from(std::mem::take(&mut current)));
            }
        }
        at = data;
    }
    // The first two packets are the OpusHead and OpusTags headers; the encoder's delay
    // (pre-skip) adds a packet at the end.
    packets.into_iter().skip(2).take(AUDIO_FRAMES).collect()
}

/// Sends frames on a published track in real time, packetized as a WebRTC sender does.
struct Sender {
    out: Outbound,
    payloader: Box<dyn Payloader + Send>,
    sequence: u16,
    step: u32,
    /// Frames sent so far (the next frame's timestamp is this many steps on).
    frames: u32,
}

impl Sender {
    async fn send(&mut self, frame: &Bytes) {
        let index = self.frames;
        self.frames += 1;
        let payloads = self.payloader.payload(1200, frame).expect("packetized");
        let count = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let header = rtp::header::Header {
                version: 2,
                marker: i + 1 == count,
                ssrc: self.out.ssrc,
                payload_type: self.out.payload_type,
                sequence_number: self.sequence,
                timestamp: index.wrapping_mul(self.step),
                ..Default::default()
            };
            self.sequence = self.sequence.wrapping_add(1);
            self.out.track.write_rtp(rtp::Packet { header, payload }).await.expect("write rtp");
        }
    }
}

/// An API request with a bearer token: status and JSON body.
async fn api(http: std::net::SocketAddr, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    common::http_json(http, method, path, Some(token), &body).await
}

/// Waits for the room's `recording` message with `state`.
async fn recording_message(signal: &mut Signal, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no `recording` {state} message");
        let message = signal.expect("recording").await;
        if message["state"] == state {
            return message;
        }
    }
}

/// A publisher in a room being recorded: its signaling, its senders and its recording.
struct Session {
    http: std::net::SocketAddr,
    room: String,
    token: String,
    signal: Signal,
    video: Sender,
    audio: Sender,
    recording_id: String,
    _client: rtc_client::Client,
}

impl Session {
    /// Joins `room` on the server at `http` with `token` (publish + record) and publishes
    /// `mime_type` video and Opus.
    async fn publish(http: std::net::SocketAddr, token: String, room: &str, mime_type: &str, payloader: Box<dyn Payloader + Send>) -> Self {
        let mut signal = Signal::connect(http).await;
        signal.join(&token).await;
        let tracks = [local_track("alice-cam", "video", mime_type), local_track("alice-cam", "audio", "audio/opus")];
        let (client, outbound) = rtc_client::publish(&mut signal, &tracks).await;
        let video = Sender { out: outbound[0].clone(), payloader, sequence: 1000, step: 90_000 / FPS as u32, frames: 0 };
        let audio = Sender { out: outbound[1].clone(), payloader: Box::new(OpusPayloader), sequence: 5000, step: 960, frames: 0 };
        Self { http, room: room.to_owned(), token, signal, video, audio, recording_id: String::new(), _client: client }
    }

    /// [`Session::publish`] on a test server, then the room's recording started through the
    /// API and the tracks opened.
    async fn start(server: &TestServer, room: &str, mime_type: &str, payloader: Box<dyn Payloader + Send>, opener: &Bytes) -> Self {
        let token = server.token(room, "alice", &["publish", "subscribe", "record"]);
        let mut session = Self::publish(server.http, token, room, mime_type, payloader).await;
        session.record_via_api().await;
        session.open(opener).await;
        session
    }

    /// Starts recording the room through the HTTP API (nothing is published yet).
    async fn record_via_api(&self) {
        let path = format!("/api/rooms/{}/recordings", self.room);
        let (status, started) = api(self.http, "POST", &path, &self.token, Some(json!({"format": "mp4+hls"}))).await;
        assert_eq!(status, 201, "{started}");
        assert_eq!(started["recordings"], json!([]), "nothing published yet: {started}");
        let (status, again) = api(self.http, "POST", &path, &self.token, None).await;
        assert_eq!((status, again["error"].as_str()), (409, Some("already_recording")), "{again}");
    }

    /// Opens the tracks with a frame each (the recorder starts with them; `opener`, the
    /// video one, is a delta frame, which a recording never starts on) and waits for the
    /// participant's recording to run. The stream proper follows, starting with a keyframe.
    async fn open(&mut self, opener: &Bytes) {
        self.video.send(opener).await;
        self.audio.send(&Bytes::from_static(&[0xf8, 0xff, 0xfe])).await;
        let message = recording_message(&mut self.signal, "started").await;
        self.recording_id = message["recording_id"].as_str().expect("recording id").to_owned();
    }

    /// Sends the frames in real time, interleaved as a camera and a microphone would.
    async fn send(&mut self, video: &[Bytes], audio: &[Bytes]) {
        let start = tokio::time::Instant::now();
        let (mut v, mut a) = (0, 0);
        while v < video.len() || a < audio.len() {
            let video_due = start + Duration::from_micros(v as u64 * 1_000_000 / FPS as u64);
            let audio_due = start + Duration::from_millis(a as u64 * 20);
            if v < video.len() && (a >= audio.len() || video_due <= audio_due) {
                tokio::time::sleep_until(video_due).await;
                self.video.send(&video[v]).await;
                v += 1;
            } else {
                tokio::time::sleep_until(audio_due).await;
                self.audio.send(&audio[a]).await;
                a += 1;
            }
        }
    }

    /// Stops the participant's recording through the API.
    async fn stop(&mut self) {
        let path = format!("/api/rooms/{}/recordings/{}/stop", self.room, self.recording_id);
        let (status, body) = api(self.http, "POST", &path, &self.token, None).await;
        assert_eq!(status, 202, "{body}");
        recording_message(&mut self.signal, "finished").await;
    }

    /// The recording's row once the API lists it as done.
    async fn done(&self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, list) = api(self.http, "GET", &format!("/api/recordings?meeting={}", self.room), &self.token, None).await;
            assert_eq!(status, 200, "{list}");
            let rows = list["recordings"].as_array().cloned().unwrap_or_default();
            if let Some(row) = rows.into_iter().find(|r| r["recording_id"] == self.recording_id.as_str() && r["status"] != "recording") {
                assert_eq!(row["status"], "done", "{row}");
                return row;
            }
            assert!(Instant::now() < deadline, "recording not listed as done: {list}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The recording's own log from a local object store at `objects` (empty where the objects
/// are in S3, or the log is not written yet).
fn recording_log(objects: &std::path::Path, session: &Session) -> String {
    std::fs::read_to_string(objects.join(format!("recordings/{}/{}.log", session.room, session.recording_id))).unwrap_or_default()
}

/// Checks a recording at `url`: both streams with their codecs, the frames and the length
/// expected, and a decode without errors. `log`, the recording's own log (its gaps and
/// keyframe requests), is shown when a frame count is off.
fn check_recording(url: &str, codec_name: &str, video_frames: usize, audio_frames: usize, seconds: f64, log: &str) {
    let probe = ffprobe(url);
    let streams = probe["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{url}: {probe}");
    let stream = |kind: &str| streams.iter().find(|s| s["codec_type"] == kind).unwrap_or_else(|| panic!("{kind} stream: {probe}"));
    assert_eq!(stream("video")["codec_name"], codec_name, "{probe}");
    assert_eq!(stream("audio")["codec_name"], "opus", "{probe}");
    assert_eq!(stream("video")["nb_read_frames"], video_frames.to_string(), "every video frame sent: {probe}\nrecording log:\n{log}");
    assert_eq!(stream("audio")["nb_read_frames"], audio_frames.to_string(), "every audio frame sent: {probe}\nrecording log:\n{log}");
    let duration: f64 = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
    assert!((duration - seconds).abs() <= 0.5, "duration {duration} s, expected {seconds}: {probe}");
    assert_eq!(decode_errors(url), "", "{url} decodes without errors");
}

/// Publishes `video` + Opus for 15 s while the room is recorded; checks the MP4 and HLS.
async fn records_a_published_stream(mime_type: &str, video: Vec<Bytes>, payloader: Box<dyn Payloader + Send>, codec_name: &str) {
    let audio = opus_frames();
    assert_eq!((video.len(), audio.len()), (VIDEO_FRAMES, AUDIO_FRAMES), "encoded media");
    let server = TestServer::start(&[]).await;
    let mut session = Session::start(&server, &format!("rec-{codec_name}"), mime_type, payloader, &video[VIDEO_FRAMES - 1]).await;
    session.send(&video, &audio).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.stop().await;
    let listed = session.done().await;
    assert_eq!(listed["format"], "mp4+hls");
    assert!(listed["size"].as_i64().unwrap_or(0) > 100_000, "{listed}");
    assert!((14..=16).contains(&listed["duration_secs"].as_i64().unwrap_or(0)), "{listed}");
    let log = recording_log(&server.dir.path().join("objects"), &session);
    for url in [listed["mp4_url"].as_str().expect("mp4 url"), listed["hls_url"].as_str().expect("hls url")] {
        check_recording(url, codec_name, VIDEO_FRAMES, AUDIO_FRAMES, SECONDS as f64, &log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h264_and_opus_are_recorded_to_mp4_and_hls() {
    records_a_published_stream("video/H264", h264_frames(), Box::new(H264Payloader::default()), "h264").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vp8_and_opus_are_recorded_to_mp4_and_hls() {
    records_a_published_stream("video/VP8", vp8_frames(), Box::new(Vp8Payloader::default()), "vp8").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn av1_and_opus_are_recorded_to_mp4_and_hls() {
    // 3 s of libaom AV1 (a keyframe every second): temporal units, as a sender packetizes them.
    let video = ivf_frames(90, &["-c:v", "libaom-av1", "-cpu-used", "8", "-b:v", "300k", "-g", "30"]);
    let audio = opus_frames();
    let server = TestServer::start(&[]).await;
    let mut session = Session::start(&server, "rec-av1", "video/AV1", Box::new(Av1Payloader::default()), &video[89]).await;
    session.send(&video, &audio[..150]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.stop().await;
    let listed = session.done().await;
    let log = recording_log(&server.dir.path().join("objects"), &session);
    for url in [listed["mp4_url"].as_str().expect("mp4 url"), listed["hls_url"].as_str().expect("hls url")] {
        check_recording(url, "av1", 90, 150, 3.0, &log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_participant_leaving_ends_its_file_cleanly() {
    let (video, audio) = (vp8_frames(), opus_frames());
    let server = TestServer::start(&[]).await;
    let mut session = Session::start(&server, "rec-leave", "video/VP8", Box::new(Vp8Payloader::default()), &video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..120], &audio[..200]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The publisher leaves without stopping anything; an observer stays in the room.
    let (mut observer, _) = server.joined("rec-leave", "bob", &["subscribe"]).await;
    session.signal.request(json!({"type": "leave"})).await;
    let finished = recording_message(&mut observer, "finished").await;
    assert_eq!(finished["recording_id"], session.recording_id.as_str());
    let listed = session.done().await;
    let log = recording_log(&server.dir.path().join("objects"), &session);
    for url in [listed["mp4_url"].as_str().expect("mp4 url"), listed["hls_url"].as_str().expect("hls url")] {
        check_recording(url, "vp8", 120, 200, 4.0, &log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_ends_at_its_length_limit() {
    let (video, audio) = (vp8_frames(), opus_frames());
    let server = TestServer::start(&[("SWITCHBOARD__RECORDING__MAX_DURATION_SECS", "2")]).await;
    let mut session = Session::start(&server, "rec-limit", "video/VP8", Box::new(Vp8Payloader::default()), &video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..120], &audio[..200]).await;
    let listed = session.done().await;
    let probe = ffprobe(listed["mp4_url"].as_str().expect("mp4 url"));
    let duration: f64 = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
    // Cut at the limit (the last frame's own length may end just past it).
    assert!(duration > 1.0 && duration <= 2.1, "cut at the 2 s limit: {probe}");
    // Past its limit the participant is not recorded again.
    let (_, list) = api(session.http, "GET", &format!("/api/recordings?meeting={}", session.room), &session.token, None).await;
    assert_eq!(list["recordings"].as_array().map(Vec::len), Some(1), "{list}");
    if !common::services::real_backends_requested() {
        let log = recording_log(&server.dir.path().join("objects"), &session);
        assert!(log.contains("length limit of 2 s reached"), "the recording log says why it ended: {log}");
    }
}

/// A server process on the embedded backends, its database, objects and spool in `dir`.
struct Node {
    dir: services::TempDir,
    port: u16,
}

impl Node {
    fn new() -> Self {
        Self { dir: services::TempDir::new(), port: services::free_port() }
    }

    fn http(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("address")
    }

    fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("switchboard.db")
    }

    /// Starts the process (logging to `<name>.log`) with `extra` settings; returns once it
    /// listens.
    fn spawn(&self, name: &str, extra: &[(&str, &str)]) -> std::process::Child {
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, sb_config::DEFAULT_YAML).expect("config written");
        let env = [
            ("SWITCHBOARD__HTTP__LISTEN", format!("127.0.0.1:{}", self.port)),
            ("SWITCHBOARD__MEDIA__PORT_BASE", "0".to_owned()),
            ("SWITCHBOARD__MEDIA__TCP_PORT", "0".to_owned()),
            ("SWITCHBOARD__MEDIA__WORKERS", "1".to_owned()),
            ("SWITCHBOARD__MEDIA__ANNOUNCED_IPS", "[127.0.0.1]".to_owned()),
            ("SWITCHBOARD__DATABASE__URL", format!("sqlite://{}?mode=rwc", self.database().display())),
            ("SWITCHBOARD__OBJECTS__LOCAL_DIR", self.dir.path().join("objects").display().to_string()),
            ("SWITCHBOARD__RECORDING__SPOOL_DIR", self.dir.path().join("spool").display().to_string()),
        ];
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        let process = services::spawn_server(&config, &env, &self.dir.path().join(format!("{name}.log")));
        services::wait_listening(self.port, "switchboard");
        process
    }

    /// Alice, publishing VP8 + Opus in `room`, recorded through the API.
    async fn recorded_session(&self, room: &str, opener: &Bytes) -> Session {
        let authority = signaling::auth::TokenAuthority::new(
            [("dev".to_owned(), sb_config::DEVELOPMENT_SECRET.to_owned())].into_iter().collect(),
            "dev".to_owned(),
        );
        let grants = signaling::auth::Grants::from_names(["publish", "subscribe", "record"]).expect("grants");
        let token = authority.issue(room, "alice", None, grants, 600).expect("token");
        let mut session = Session::publish(self.http(), token, room, "video/VP8", Box::new(Vp8Payloader::default())).await;
        session.record_via_api().await;
        session.open(opener).await;
        session
    }

    /// The status of a recording's row, once it is `wanted` (waits up to 30 s).
    async fn row_status(&self, recording_id: &str, wanted: i64) -> i64 {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}", self.database().display());
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("the node's database");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sql = "SELECT CAST(status AS BIGINT) FROM meeting_recordings WHERE recording_id = $1";
            let status: Option<(i64,)> = sqlx::query_as(sql).bind(recording_id).fetch_optional(&pool).await.expect("query");
            let status = status.map_or(0, |(s,)| s);
            if status == wanted || Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn object(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join("objects").join(key)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_open_recordings_before_the_process_exits() {
    let node = Node::new();
    let mut process = node.spawn("server", &[]);
    let (video, audio) = (vp8_frames(), opus_frames());
    let mut session = node.recorded_session("rec-term", &video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..90], &audio[..150]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGTERM while the recording runs: the process finishes it, then exits cleanly.
    let pid = process.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let status = tokio::task::spawn_blocking(move || process.wait()).await.expect("wait").expect("exit status");
    let logged = std::fs::read_to_string(node.dir.path().join("server.log")).unwrap_or_default();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}\n{logged}");
    let mp4 = node.object(&format!("recordings/rec-term/{}.mp4", session.recording_id));
    check_recording(&mp4.display().to_string(), "vp8", 90, 150, 3.0, &recording_log(&node.object(""), &session));
    // The process is gone: the row it wrote before exiting is all there is.
    assert_eq!(node.row_status(&session.recording_id, 2).await, 2, "recorded as done before the exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_cut_by_a_crash_is_finished_when_the_node_restarts() {
    let node = Node::new();
    // Segments of 1 s are cut at each keyframe (every 2 s of this stream).
    let settings = [("SWITCHBOARD__RECORDING__SEGMENT_SECS", "1")];
    let mut process = node.spawn("first", &settings);
    let (video, audio) = (vp8_frames(), opus_frames());
    let mut session = node.recorded_session("rec-crash", &video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..150], &audio[..250]).await;
    // Wait until both segments (cut at frames 60 and 120) are stored: the playlist lists them.
    let playlist = node.object(&format!("recordings/rec-crash/{}/index.m3u8", session.recording_id));
    let segments = || std::fs::read_to_string(&playlist).map(|p| p.matches("#EXTINF").count()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while segments() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(segments(), 2, "two segments stored before the crash");
    // kill -9: no chance to finish anything.
    process.kill().expect("killed");
    let _ = process.wait();
    let mp4 = node.object(&format!("recordings/rec-crash/{}.mp4", session.recording_id));
    assert!(!mp4.exists(), "no MP4 before the restart");
    assert_eq!(node.row_status(&session.recording_id, 1).await, 1, "still recording in the database");

    // The restarted node completes the MP4 up to the last segment cut before the crash.
    let mut restarted = node.spawn("second", &settings);
    assert_eq!(node.row_status(&session.recording_id, 2).await, 2, "recorded as done after the recovery");
    let probe = ffprobe(&mp4.display().to_string());
    let frames = |kind: &str| -> usize {
        let stream = probe["streams"].as_array().and_then(|s| s.iter().find(|s| s["codec_type"] == kind)).cloned().unwrap_or_default();
        stream["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    assert_eq!(frames("video"), 120, "the two segments cut before the crash (4 s): {probe}");
    assert!((195..=205).contains(&frames("audio")), "their audio: {probe}");
    assert_eq!(decode_errors(&mp4.display().to_string()), "", "the recovered file decodes without errors");
    let playlist =
        std::fs::read_to_string(node.object(&format!("recordings/rec-crash/{}/index.m3u8", session.recording_id))).expect("playlist");
    assert!(playlist.ends_with("#EXT-X-ENDLIST\n"), "the playlist is closed: {playlist}");
    let _ = restarted.kill();
    let _ = restarted.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_outlives_the_object_store_going_away_and_loses_nothing() {
    let s3 = services::S3::shared();
    let proxy = services::Proxy::start(format!("127.0.0.1:{}", s3.port).parse().expect("address"), None).await;
    let spool = services::TempDir::new();
    let overrides = [
        ("OBJECTS__BACKEND", "s3".to_owned()),
        ("OBJECTS__ENDPOINT", format!("http://{}", proxy.addr)),
        ("OBJECTS__BUCKET", services::unique("b")),
        ("OBJECTS__ACCESS_KEY", services::S3_ACCESS_KEY.to_owned()),
        ("OBJECTS__SECRET_KEY", services::S3_SECRET_KEY.to_owned()),
        ("RECORDING__SEGMENT_SECS", "1".to_owned()),
        ("RECORDING__SPOOL_DIR", spool.path().display().to_string()),
    ];
    let overrides = overrides.into_iter().map(|(k, v)| (format!("SWITCHBOARD__{k}"), v)).collect();
    let server = TestServer::start_with(overrides, None).await;
    let (video, audio) = (vp8_frames(), opus_frames());
    let mut session = Session::start(&server, "rec-outage", "video/VP8", Box::new(Vp8Payloader::default()), &video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..60], &audio[..100]).await;
    // S3 goes away for 3 s: the segments cut meanwhile wait in the spool folder.
    proxy.cut();
    session.send(&video[60..150], &audio[100..250]).await;
    let spooled = || {
        let entries = std::fs::read_dir(spool.path()).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        entries.iter().filter(|e| e.path().extension().is_some_and(|x| x == "spool")).count()
    };
    assert!(spooled() > 0, "segments spooled to disk while S3 was away");
    proxy.restore();
    session.send(&video[150..210], &audio[250..350]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.stop().await;
    let listed = session.done().await;
    assert_eq!(spooled(), 0, "the spool is emptied once S3 took it");
    let log = recording_log(&server.dir.path().join("objects"), &session);
    for url in [listed["mp4_url"].as_str().expect("mp4 url"), listed["hls_url"].as_str().expect("hls url")] {
        check_recording(url, "vp8", 210, 350, 7.0, &log);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_started_by_a_task_leaves_its_rows_events_and_transcription_task() {
    let real = services::RealServices::start().await;
    let (postgres_url, prefix) = (real.postgres_url.clone(), real.topic_prefix.clone());
    let server = TestServer::start_with(real.overrides(), Some(real)).await;
    let room = "rec-task";
    let token = server.token(room, "alice", &["publish", "subscribe", "record"]);
    let (video, audio) = (vp8_frames(), opus_frames());
    let mut session = Session::publish(server.http, token, room, "video/VP8", Box::new(Vp8Payloader::default())).await;
    let tasks = format!("{prefix}.tasks");
    services::produce(&tasks, &json!({"task_id": "rec-start", "type": "start_recording", "meeting_id": room, "format": "mp4"}).to_string())
        .await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&postgres_url).await.expect("database");
    let task_done = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let sql = "SELECT COUNT(*) FROM operation_logs WHERE resource_type = 'task' AND resource_id = $1";
                let (count,): (i64,) = sqlx::query_as(sql).bind(id).fetch_one(&pool).await.expect("query");
                if count > 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "task {id} not done");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    task_done("rec-start").await;
    session.open(&video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..90], &audio[..150]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    services::produce(&tasks, &json!({"task_id": "rec-stop", "type": "stop_recording", "meeting_id": room}).to_string()).await;
    recording_message(&mut session.signal, "finished").await;
    let listed = session.done().await;
    assert_eq!((listed["format"].as_str(), listed["hls_url"].as_str()), (Some("mp4"), None), "{listed}");
    check_recording(
        listed["mp4_url"].as_str().expect("mp4 url"),
        "vp8",
        90,
        150,
        3.0,
        &recording_log(&server.dir.path().join("objects"), &session),
    );

    let id = session.recording_id.as_str();
    let sql = "SELECT meeting_id, filename, file_path, format, CAST(status AS TEXT), CAST(duration AS TEXT), CAST(file_size > 0 AS TEXT),
               CAST(room_id IS NOT NULL AS TEXT), CAST(ended_at IS NOT NULL AS TEXT) FROM meeting_recordings WHERE recording_id = $1";
    let row: (String, String, String, String, String, String, String, String, String) =
        sqlx::query_as(sql).bind(id).fetch_one(&pool).await.expect("meeting_recordings row");
    let key = format!("recordings/{room}/{id}.mp4");
    assert_eq!(
        row,
        (room.into(), format!("{id}.mp4"), key.clone(), "mp4".into(), "2".into(), "3".into(), "true".into(), "true".into(), "true".into())
    );
    let sql = "SELECT task_type, meeting_id, CAST(status AS TEXT) FROM ai_tasks WHERE recording_id = $1";
    let ai: (String, String, String) = sqlx::query_as(sql).bind(id).fetch_one(&pool).await.expect("ai_tasks row");
    assert_eq!(ai, ("transcription".into(), room.into(), "1".into()));

    let events = services::consume(&format!("{prefix}.system_events"), |e| e["type"] == "recording.finished").await;
    let started = events.iter().find(|e| e["type"] == "recording.started").expect("recording.started");
    assert_eq!((started["recording_id"].as_str(), started["format"].as_str()), (Some(id), Some("mp4")));
    let finished = events.last().expect("recording.finished");
    assert_eq!((finished["recording_id"].as_str(), finished["mp4_key"].as_str()), (Some(id), Some(key.as_str())), "{finished}");
    let tasks = services::consume(&tasks, |t| t["type"] == "transcription").await;
    let transcription = tasks.last().expect("transcription task");
    assert_eq!((transcription["recording_id"].as_str(), transcription["input"]["mp4_key"].as_str()), (Some(id), Some(key.as_str())));
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_record_and_signaling_control_with_the_record_grant() {
    let server = TestServer::start(&[("SWITCHBOARD__RECORDING__AUTO_RECORD", "[rec-auto]")]).await;
    // A room named by auto_record is recorded as soon as it opens.
    let token = server.token("rec-auto", "alice", &["publish", "subscribe", "record"]);
    let (video, audio) = (vp8_frames(), opus_frames());
    let mut session = Session::publish(server.http, token, "rec-auto", "video/VP8", Box::new(Vp8Payloader::default())).await;
    session.open(&video[VIDEO_FRAMES - 1]).await;
    session.send(&video[..60], &audio[..100]).await;

    // Over signaling: the record grant is needed; a second start is refused; stop by id.
    let (mut viewer, _) = server.joined("rec-auto", "bob", &["subscribe"]).await;
    let refused = viewer.request(json!({"type": "start_recording"})).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    let again = session.signal.request(json!({"type": "start_recording", "format": "hls"})).await;
    assert_eq!(again["code"], "already_recording", "{again}");
    let unknown = session.signal.request(json!({"type": "stop_recording", "recording_id": "RC_nope"})).await;
    assert_eq!(unknown["code"], "not_recording", "{unknown}");
    let bad = session.signal.request(json!({"type": "start_recording", "format": "avi"})).await;
    assert_eq!(bad["code"], "invalid_message", "{bad}");
    let stopped = session.signal.request(json!({"type": "stop_recording", "recording_id": session.recording_id})).await;
    assert_eq!(stopped["type"], "ack", "{stopped}");
    recording_message(&mut viewer, "finished").await;
    let listed = session.done().await;
    check_recording(
        listed["mp4_url"].as_str().expect("mp4 url"),
        "vp8",
        60,
        100,
        2.0,
        &recording_log(&server.dir.path().join("objects"), &session),
    );

    // Stopping the room's recording, then starting it again over signaling: the publisher's
    // tracks are there already, so its recording starts at once.
    assert_eq!(session.signal.request(json!({"type": "stop_recording"})).await["type"], "ack");
    let started = session.signal.request(json!({"type": "start_recording", "format": "mp4"})).await;
    assert_eq!(started["type"], "recording_started", "{started}");
    let recordings = started["recordings"].as_array().expect("recordings");
    assert_eq!(recordings.len(), 1, "{started}");
    assert_eq!((recordings[0]["identity"].as_str(), recordings[0]["format"].as_str()), (Some("alice"), Some("mp4")));
}
