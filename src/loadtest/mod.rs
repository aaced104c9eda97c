//! The load generator (`switchboard loadtest`): many real WebRTC clients, each with its own
//! ICE, DTLS and SRTP on the sans-IO `rtc` engine, join rooms over `/ws` with tokens,
//! publish synthetic media at a realistic size and rate, and receive the room's. It reports
//! joins, packets, loss, forwarding delay and the server process's CPU and memory.
//!
//! Scenarios: `meeting` (every participant publishes video and audio and receives the
//! others'), `livestream` (one publisher, the rest receive), `audio` (a few speakers, many
//! listeners, audio only), `churn` (meeting participants who leave after `lifetime` and are
//! replaced at once: `participants / lifetime` joins and leaves per second per room).
//! The clients speak Switchboard's signaling, or Janus VideoRoom's (`--target janus`), so the
//! same load runs against both servers; their media goes over UDP, or over ICE-TCP only
//! (`--transport tcp`), to compare the two paths' cost per packet. Loopback only; it stops by itself after `seconds`.

mod client;
mod janus;
mod report;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use signaling::auth::{Grants, TokenAuthority};

pub use report::{ProcessUsage, Report};

use client::ClientPlan;
use report::{Counters, Percentiles};

/// Which load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Switchboard: `/ws` with tokens (the URL is the server's base URL).
    #[default]
    Switchboard,
    /// Janus 1.x VideoRoom over its WebSocket API (the URL is its WebSocket, e.g.
    /// `ws://127.0.0.1:8188`).
    Janus,
}

/// How the clients' media reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP, as almost every client.
    #[default]
    Udp,
    /// ICE-TCP only (RFC 6544): each connection is one TCP stream to the server's passive
    /// candidate, as for a client whose network blocks UDP.
    Tcp,
}

/// A load test as given on the command line or in a YAML file (the same names, in
/// snake_case); what neither gives takes the defaults of [`LoadSpec::settings`].
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// The server: switchboard (default) or janus.
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// The server's URL (default http://127.0.0.1:7880, or ws://127.0.0.1:8188 for Janus).
    #[arg(long)]
    pub url: Option<String>,
    /// meeting (N × N video, the default), livestream (1 → N), audio (few speakers, many
    /// listeners), churn (meeting participants replaced every `lifetime` seconds).
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Rooms (default 1).
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Participants per room (default 4).
    #[arg(long)]
    pub participants: Option<usize>,
    /// Speakers per room in the audio scenario (default 2).
    #[arg(long)]
    pub speakers: Option<usize>,
    /// Seconds measured once everyone joined (default 10).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Seconds a churn participant stays before it leaves and is replaced (default 5).
    #[arg(long)]
    pub lifetime: Option<u64>,
    /// Video bitrate per publisher, kbit/s (default 800).
    #[arg(long)]
    pub video_kbps: Option<u32>,
    /// Video frames per second (default 30; a keyframe every 2 s).
    #[arg(long)]
    pub fps: Option<u32>,
    /// The local address the clients' media sockets bind to (default 127.0.0.1; Janus
    /// offers no loopback candidates, so against it use the machine's own address).
    #[arg(long)]
    pub client_ip: Option<IpAddr>,
    /// How media reaches the server: udp (default) or tcp (ICE-TCP only).
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
}

impl LoadSpec {
    /// Reads a spec from a YAML file.
    pub fn from_yaml_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// This spec, with what it leaves out taken from `other`.
    pub fn or(self, other: Self) -> Self {
        Self {
            target: self.target.or(other.target),
            url: self.url.or(other.url),
            scenario: self.scenario.or(other.scenario),
            rooms: self.rooms.or(other.rooms),
            participants: self.participants.or(other.participants),
            speakers: self.speakers.or(other.speakers),
            seconds: self.seconds.or(other.seconds),
            lifetime: self.lifetime.or(other.lifetime),
            video_kbps: self.video_kbps.or(other.video_kbps),
            fps: self.fps.or(other.fps),
            client_ip: self.client_ip.or(other.client_ip),
            transport: self.transport.or(other.transport),
        }
    }

    /// The settings, with the defaults where the spec is silent.
    pub fn settings(self, server_pid: Option<u32>) -> LoadSettings {
        let target = self.target.unwrap_or_default();
        let url = self.url.unwrap_or_else(|| {
            match target {
                Target::Switchboard => "http://127.0.0.1:7880",
                Target::Janus => "ws://127.0.0.1:8188",
            }
            .to_owned()
        });
        let fps = self.fps.unwrap_or(30).max(1);
        LoadSettings {
            target,
            url,
            scenario: self.scenario.unwrap_or(Scenario::Meeting),
            rooms: self.rooms.unwrap_or(1),
            participants: self.participants.unwrap_or(4),
            speakers: self.speakers.unwrap_or(2),
            seconds: self.seconds.unwrap_or(10),
            lifetime: Duration::from_secs(self.lifetime.unwrap_or(5).max(1)),
            video: Video { kbps: self.video_kbps.unwrap_or(800), fps, keyframe_every: fps * 2 },
            client_ip: self.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            transport: self.transport.unwrap_or_default(),
            server_pid,
        }
    }
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
    /// The server's kind.
    pub target: Target,
    /// The server's URL: Switchboard's base URL (`http://127.0.0.1:7880`) or Janus's
    /// WebSocket (`ws://127.0.0.1:8188`).
    pub url: String,
    /// The scenario.
    pub scenario: Scenario,
    /// Rooms, each with the same participants.
    pub rooms: usize,
    /// Participants per room.
    pub participants: usize,
    /// Speakers per room (audio scenario).
    pub speakers: usize,
    /// How long the measurement runs once everyone joined.
    pub seconds: u64,
    /// How long a churn participant stays.
    pub lifetime: Duration,
    /// The video publishers send.
    pub video: Video,
    /// The address the clients' media sockets bind to.
    pub client_ip: IpAddr,
    /// How the clients' media reaches the server.
    pub transport: Transport,
    /// The server process, for its CPU and memory (`/proc/<pid>`).
    pub server_pid: Option<u32>,
}

/// Upper bounds that keep a run on one machine.
const MAX_CLIENTS: usize = 2000;
const MAX_SECONDS: u64 = 600;
/// Time after the last join before the measurement starts, for the last negotiations.
const SETTLE: Duration = Duration::from_secs(2);

/// Runs the test and reports; `authority` signs the clients' tokens (Switchboard).
/// `progress` is called about once a second with a one-line summary.
///
/// Clients join one every 20 ms; the measurement (packets, loss, forwarding delay, the
/// server's CPU and memory) covers `seconds` from [`SETTLE`] after the last join, when every
/// client is in.
pub async fn run(settings: &LoadSettings, authority: &TokenAuthority, progress: impl Fn(&str)) -> anyhow::Result<Report> {
    let clients = settings.rooms * settings.participants;
    anyhow::ensure!(clients > 0 && clients <= MAX_CLIENTS, "between 1 and {MAX_CLIENTS} clients, not {clients}");
    anyhow::ensure!(settings.seconds > 0 && settings.seconds <= MAX_SECONDS, "between 1 and {MAX_SECONDS} seconds");
    let ws_url = match settings.target {
        Target::Switchboard => format!("{}/ws", settings.url.trim_end_matches('/').replacen("http", "ws", 1)),
        Target::Janus => settings.url.clone(),
    };
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let ramp = Duration::from_millis(20) * clients as u32;
    let window_end = epoch + ramp + SETTLE + Duration::from_secs(settings.seconds);
    let until = window_end + Duration::from_secs(1);
    let idle = Snapshot::take(settings.server_pid);
    let context = Arc::new(SlotContext {
        target: settings.target,
        ws_url,
        client_ip: settings.client_ip,
        transport: settings.transport,
        room_base: rand::random::<u32>() as u64 % 1_000_000 * 1000,
        max_publishers: settings.participants,
        until,
        epoch,
        counters: counters.clone(),
        authority: authority.clone(),
    });
    let mut tasks = Vec::with_capacity(clients);
    for room in 0..settings.rooms {
        for index in 0..settings.participants {
            let slot = Slot { room, index, context: context.clone() };
            let (roles, lifetime) = (roles(settings, index), (settings.scenario == Scenario::Churn).then_some(settings.lifetime));
            tasks.push(tokio::spawn(slot.run(roles, lifetime)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait(epoch + ramp + SETTLE, epoch, &counters, &progress).await;
    let window_start = Snapshot::take(settings.server_pid);
    counters.measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    wait(window_end, epoch, &counters, &progress).await;
    counters.measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let window_end = Snapshot::take(settings.server_pid);
    for task in tasks {
        let _ = task.await;
    }
    Ok(report(settings, &counters, idle, window_start, window_end))
}

/// Waits until `deadline`, calling `progress` with a summary line every second.
async fn wait(deadline: Instant, epoch: Instant, c: &Counters, progress: &impl Fn(&str)) {
    while Instant::now() < deadline {
        tokio::time::sleep_until((Instant::now() + Duration::from_secs(1)).min(deadline).into()).await;
        progress(&progress_line(epoch, c));
    }
}

fn progress_line(epoch: Instant, c: &Counters) -> String {
    let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:>4.0} s  joined {}  connected {}  failed {}  sent {}  received {}",
        epoch.elapsed().as_secs_f64(),
        load(&c.started),
        load(&c.connected),
        load(&c.failed),
        load(&c.packets_sent),
        load(&c.packets_received)
    )
}

/// The server process and the packet counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    usage: Option<ProcessUsage>,
}

impl Snapshot {
    fn take(pid: Option<u32>) -> Self {
        Self { at: Instant::now(), usage: pid.and_then(ProcessUsage::read) }
    }
}

/// What every client of a run shares.
struct SlotContext {
    target: Target,
    ws_url: String,
    client_ip: IpAddr,
    transport: Transport,
    /// Room numbers are this plus the room's index: fresh rooms each run, on either server.
    room_base: u64,
    max_publishers: usize,
    until: Instant,
    epoch: Instant,
    counters: Arc<Counters>,
    authority: TokenAuthority,
}

/// One participant place of a room: a client, or (churn) one client after another.
struct Slot {
    room: usize,
    index: usize,
    context: Arc<SlotContext>,
}

impl Slot {
    async fn run(self, (publish, subscribe): (Option<Media>, bool), lifetime: Option<Duration>) {
        let context = &self.context;
        let mut generation = 0;
        while Instant::now() < context.until {
            let identity = format!("load-{}-{}-{generation}", self.room, self.index);
            generation += 1;
            let dialect: Box<dyn client::Dialect> = match context.target {
                Target::Switchboard => {
                    let grants = Grants { publish: publish.is_some(), subscribe, publish_data: false, record: false, admin: false };
                    // Rooms of this run only: two generators at once (the soak's meeting and
                    // churn) would otherwise share rooms, and measure each other's packets
                    // against their own clocks.
                    let room = format!("load-{}", context.room_base + self.room as u64);
                    match context.authority.issue(&room, &identity, None, grants, 3600) {
                        Ok(token) => Box::new(client::SwitchboardDialect { token }),
                        Err(err) => return tracing::warn!(%err, "no token for a load client"),
                    }
                }
                Target::Janus => {
                    Box::new(janus::JanusDialect::new(context.room_base + self.room as u64, identity.clone(), context.max_publishers))
                }
            };
            let until = lifetime.map_or(context.until, |l| (Instant::now() + l).min(context.until));
            let plan = ClientPlan {
                ws_url: context.ws_url.clone(),
                ip: context.client_ip,
                transport: context.transport,
                publish,
                subscribe,
                until,
            };
            Counters::add(&context.counters.started, 1);
            if let Err(err) = client::run(plan, dialect, context.epoch, context.counters.clone()).await {
                tracing::warn!(%identity, %err, "load client failed");
                Counters::add(&context.counters.failed, 1);
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

fn report(settings: &LoadSettings, counters: &Counters, idle: Snapshot, start: Snapshot, end: Snapshot) -> Report {
    let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
    let received = load(&counters.packets_received);
    let lost = load(&counters.packets_lost);
    let tracks = load(&counters.tracks_received);
    let server = match (start.usage, end.usage) {
        (Some(before), Some(after)) => Some(ProcessUsage { cpu_seconds: after.cpu_seconds - before.cpu_seconds, ..after }),
        _ => None,
    };
    let window_received = load(&counters.packets_measured);
    let window_seconds = end.at.duration_since(start.at).as_secs_f64();
    let mut delays = std::mem::take(&mut *counters.delays.lock().unwrap_or_else(|p| p.into_inner()));
    let mut joins = std::mem::take(&mut *counters.joins.lock().unwrap_or_else(|p| p.into_inner()));
    // Memory per track means something when the tracks are all there at once.
    let per_track = match (idle.usage, end.usage) {
        (Some(idle), Some(end)) if tracks > 0 && settings.scenario != Scenario::Churn => {
            Some(end.anon_bytes.saturating_sub(idle.anon_bytes) as f64 / tracks as f64)
        }
        _ => None,
    };
    Report {
        scenario: format!("{:?}", settings.scenario).to_lowercase(),
        target: format!("{:?}", settings.target).to_lowercase(),
        transport: settings.transport,
        clients: load(&counters.started),
        connected: load(&counters.connected),
        failed: load(&counters.failed),
        packets_sent: load(&counters.packets_sent),
        bytes_sent: load(&counters.bytes_sent),
        packets_received: received,
        bytes_received: load(&counters.bytes_received),
        loss: if window_received + lost == 0 { 0.0 } else { lost as f64 / (window_received + lost) as f64 },
        nacks: load(&counters.nacks),
        plis: load(&counters.plis),
        join_to_media_us: Percentiles::of(&mut joins),
        delay_us: Percentiles::of(&mut delays),
        window_seconds,
        window_packets_received: window_received,
        subscribed_tracks: tracks,
        server,
        received_packets_per_server_cpu_second: server.filter(|s| s.cpu_seconds > 0.0).map(|s| window_received as f64 / s.cpu_seconds),
        server_cpu_share: server.filter(|_| window_seconds > 0.0).map(|s| s.cpu_seconds / window_seconds),
        memory_per_subscribed_track_bytes: per_track,
    }
}
