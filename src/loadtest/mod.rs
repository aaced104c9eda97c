//! The load generator (`switchboard loadtest`): many real WebRTC clients, each with its own
//! ICE, DTLS and SRTP on the sans-IO `rtc` engine, join rooms over `/ws` with tokens,
//! publish synthetic media at a realistic size and rate, and receive the room's. It reports
//! joins, packets, loss, forwarding delay and the server process's CPU and memory.
//!
//! Scenarios: `meeting` (every participant publishes video and audio and receives the
//! others'), `livestream` (one publisher, the rest receive), `audio` (a few speakers, many
//! listeners, audio only), `churn` (meeting participants who leave after `lifetime` and are
//! replaced at once: `participants / lifetime` joins and leaves per second per room).
//! Loopback only; it stops by itself after `seconds`.

mod client;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use signaling::auth::{Grants, TokenAuthority};

pub use report::{ProcessUsage, Report};

use client::ClientPlan;
use report::{Counters, Percentiles};

/// Which load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Everyone publishes video and audio and receives everyone else (N × N).
    Meeting,
    /// One publisher of video and audio, everyone else receives.
    Livestream,
    /// A few speakers (audio only), many listeners.
    Audio,
    /// Meeting participants who leave after a lifetime and are replaced at once.
    Churn,
}

/// Synthetic video: VP8-framed payloads of a size that gives the bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Video {
    /// Target bitrate, kbit/s.
    pub kbps: u32,
    /// Frames per second.
    pub fps: u32,
    /// A keyframe (three times a frame's size) every this many frames.
    pub keyframe_every: u32,
}

impl Video {
    /// A frame of the size that gives the bitrate (keyframes three times larger).
    fn frame(&self, keyframe: bool) -> Bytes {
        let size = (self.kbps as usize * 1000 / 8 / self.fps.max(1) as usize).max(16) * if keyframe { 3 } else { 1 };
        synthetic_vp8_frame(keyframe, size)
    }
}

/// A VP8 frame of `len` bytes with a valid frame tag (keyframes carry the 640x480 start
/// code) and filler after it: what the SFU and the recorder read of real frames.
pub fn synthetic_vp8_frame(keyframe: bool, len: usize) -> Bytes {
    let tag = (64u32 << 5) | (1 << 4) | u32::from(!keyframe);
    let mut data = vec![tag as u8, (tag >> 8) as u8, (tag >> 16) as u8];
    if keyframe {
        data.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
    }
    data.resize(len.max(data.len()), 0x5a);
    Bytes::from(data)
}

/// What a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Media {
    /// Video, if any.
    pub video: Option<Video>,
    /// Opus-sized audio every 20 ms.
    pub audio: bool,
}

/// A load test.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The server's base URL (`http://127.0.0.1:7880`).
    pub url: String,
    /// The scenario.
    pub scenario: Scenario,
    /// Rooms, each with the same participants.
    pub rooms: usize,
    /// Participants per room.
    pub participants: usize,
    /// Speakers per room (audio scenario).
    pub speakers: usize,
    /// How long media flows once everyone joined.
    pub seconds: u64,
    /// How long a churn participant stays.
    pub lifetime: Duration,
    /// The video publishers send.
    pub video: Video,
    /// The server process, for its CPU and memory (`/proc/<pid>`).
    pub server_pid: Option<u32>,
}

/// Upper bounds that keep a run on one machine.
const MAX_CLIENTS: usize = 2000;
const MAX_SECONDS: u64 = 600;

/// Runs the test and reports; `authority` signs the clients' tokens. `progress` is called
/// about once a second with a one-line summary.
pub async fn run(settings: &LoadSettings, authority: &TokenAuthority, progress: impl Fn(&str)) -> anyhow::Result<Report> {
    let clients = settings.rooms * settings.participants;
    anyhow::ensure!(clients > 0 && clients <= MAX_CLIENTS, "between 1 and {MAX_CLIENTS} clients, not {clients}");
    anyhow::ensure!(settings.seconds > 0 && settings.seconds <= MAX_SECONDS, "between 1 and {MAX_SECONDS} seconds");
    let ws_url = format!("{}/ws", settings.url.trim_end_matches('/').replacen("http", "ws", 1));
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    // Joins are spread over a second per 50 clients; media then runs `seconds` for all.
    let ramp = Duration::from_millis(20) * clients as u32;
    let until = epoch + ramp + Duration::from_secs(settings.seconds) + Duration::from_secs(2);
    let before = settings.server_pid.and_then(ProcessUsage::read);
    let authority = Arc::new(authority.clone());
    let mut tasks = Vec::with_capacity(clients);
    for room in 0..settings.rooms {
        for index in 0..settings.participants {
            let slot = Slot { room, index, ws_url: ws_url.clone(), until, epoch, counters: counters.clone(), authority: authority.clone() };
            let (roles, lifetime) = (roles(settings, index), (settings.scenario == Scenario::Churn).then_some(settings.lifetime));
            tasks.push(tokio::spawn(slot.run(roles, lifetime)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let media_start = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = &counters;
        let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
        progress(&format!(
            "{:>4.0} s  joined {}  connected {}  failed {}  sent {}  received {}",
            epoch.elapsed().as_secs_f64(),
            load(&c.started),
            load(&c.connected),
            load(&c.failed),
            load(&c.packets_sent),
            load(&c.packets_received)
        ));
    }
    for task in tasks {
        let _ = task.await;
    }
    let after = settings.server_pid.and_then(ProcessUsage::read);
    Ok(report(settings, &counters, media_start.elapsed(), before, after))
}

/// One participant place of a room: a client, or (churn) one client after another.
struct Slot {
    room: usize,
    index: usize,
    ws_url: String,
    until: Instant,
    epoch: Instant,
    counters: Arc<Counters>,
    authority: Arc<TokenAuthority>,
}

impl Slot {
    async fn run(self, (publish, subscribe): (Option<Media>, bool), lifetime: Option<Duration>) {
        let mut generation = 0;
        while Instant::now() < self.until {
            let identity = format!("load-{}-{}-{generation}", self.room, self.index);
            generation += 1;
            let grants = Grants { publish: publish.is_some(), subscribe, publish_data: false, record: false, admin: false };
            let token = match self.authority.issue(&format!("load-{}", self.room), &identity, None, grants, 3600) {
                Ok(token) => token,
                Err(err) => return tracing::warn!(%err, "no token for a load client"),
            };
            let until = lifetime.map_or(self.until, |l| (Instant::now() + l).min(self.until));
            let plan = ClientPlan { ws_url: self.ws_url.clone(), token, publish, subscribe, until };
            Counters::add(&self.counters.started, 1);
            if let Err(err) = client::run(plan, self.epoch, self.counters.clone()).await {
                tracing::warn!(%identity, %err, "load client failed");
                Counters::add(&self.counters.failed, 1);
                return;
            }
        }
    }
}

/// What participant `index` of a room publishes, and whether it subscribes.
fn roles(settings: &LoadSettings, index: usize) -> (Option<Media>, bool) {
    let av = Media { video: Some(settings.video), audio: true };
    match settings.scenario {
        Scenario::Meeting | Scenario::Churn => (Some(av), true),
        Scenario::Livestream => (if index == 0 { Some(av) } else { None }, index != 0),
        Scenario::Audio => (if index < settings.speakers.max(1) { Some(Media { video: None, audio: true }) } else { None }, true),
    }
}

fn report(
    settings: &LoadSettings,
    counters: &Counters,
    media: Duration,
    before: Option<ProcessUsage>,
    after: Option<ProcessUsage>,
) -> Report {
    let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
    let received = load(&counters.packets_received);
    let lost = load(&counters.packets_lost);
    let server = match (before, after) {
        (Some(before), Some(after)) => {
            Some(ProcessUsage { cpu_seconds: after.cpu_seconds - before.cpu_seconds, rss_bytes: after.rss_bytes })
        }
        _ => None,
    };
    let mut delays = std::mem::take(&mut *counters.delays.lock().unwrap_or_else(|p| p.into_inner()));
    let mut joins = std::mem::take(&mut *counters.joins.lock().unwrap_or_else(|p| p.into_inner()));
    Report {
        scenario: format!("{:?}", settings.scenario).to_lowercase(),
        clients: load(&counters.started),
        connected: load(&counters.connected),
        failed: load(&counters.failed),
        seconds: media.as_secs_f64(),
        packets_sent: load(&counters.packets_sent),
        bytes_sent: load(&counters.bytes_sent),
        packets_received: received,
        bytes_received: load(&counters.bytes_received),
        loss: if received + lost == 0 { 0.0 } else { lost as f64 / (received + lost) as f64 },
        join_to_media_us: Percentiles::of(&mut joins),
        delay_us: Percentiles::of(&mut delays),
        server,
        received_packets_per_server_cpu_second: server.filter(|s| s.cpu_seconds > 0.0).map(|s| received as f64 / s.cpu_seconds),
    }
}
