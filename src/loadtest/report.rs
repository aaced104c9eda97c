//! What a load test measured: counters shared by the simulated clients, latency samples,
//! the server process's CPU and memory from `/proc`, and the report (table and JSON).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Counters every client adds to.
#[derive(Default)]
pub struct Counters {
    /// Clients started (joins; with churn, more than the participants).
    pub started: AtomicU64,
    /// Clients whose connections came up.
    pub connected: AtomicU64,
    /// Clients that failed to join or connect.
    pub failed: AtomicU64,
    /// RTP packets sent by publishers.
    pub packets_sent: AtomicU64,
    /// RTP payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// RTP packets received by subscribers.
    pub packets_received: AtomicU64,
    /// RTP payload bytes received.
    pub bytes_received: AtomicU64,
    /// RTP packets received in the measurement window.
    pub packets_measured: AtomicU64,
    /// Packets missing from the sequences received in the measurement window.
    pub packets_lost: AtomicU64,
    /// NACKs publishers got from the server.
    pub nacks: AtomicU64,
    /// Picture-loss requests (PLI, FIR) publishers got from the server.
    pub plis: AtomicU64,
    /// Remote tracks (SSRCs) subscribers received, summed over the clients.
    pub tracks_received: AtomicU64,
    /// Samples: forwarding delay (send to receive) in the measurement window, microseconds.
    pub delays: Mutex<Vec<u32>>,
    /// Samples: join request to first remote media, microseconds.
    pub joins: Mutex<Vec<u32>>,
    /// Whether the measurement window is open: loss and delays count only then, so the
    /// joins before it (DTLS handshakes, negotiation) do not blur the steady state.
    pub measuring: AtomicBool,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the measurement window is open.
    pub fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    /// Records a sample (microseconds).
    pub fn sample(samples: &Mutex<Vec<u32>>, value: Duration) {
        let micros = u32::try_from(value.as_micros()).unwrap_or(u32::MAX);
        samples.lock().unwrap_or_else(|p| p.into_inner()).push(micros);
    }
}

/// CPU time and resident memory of a process, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessUsage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// The anonymous part of the resident set (heap, stacks), bytes: what the process
    /// allocated, without the pages of its executable and libraries.
    pub anon_bytes: u64,
}

impl ProcessUsage {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is not
    /// there (or not on Linux).
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // /proc counts in USER_HZ, 100 on every Linux architecture this runs on.
        let hz = 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |field: &str| -> Option<u64> {
            status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()
        };
        Some(Self { cpu_seconds: ticks as f64 / hz, rss_bytes: kib("VmRSS:")? * 1024, anon_bytes: kib("RssAnon:")? * 1024 })
    }
}

/// Percentiles of samples, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: u32,
    /// 99th percentile.
    pub p99: u32,
    /// Largest.
    pub max: u32,
}

impl Percentiles {
    /// The percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self { count: samples.len(), p50: at(0.5), p99: at(0.99), max: samples[samples.len() - 1] }
    }
}

/// The result of a load test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The server's kind (switchboard, janus).
    pub target: String,
    /// How the clients' media reached the server.
    pub transport: super::Transport,
    /// Clients started (joins).
    pub clients: u64,
    /// Clients whose connections came up.
    pub connected: u64,
    /// Clients that failed.
    pub failed: u64,
    /// RTP packets sent by publishers.
    pub packets_sent: u64,
    /// RTP payload bytes sent.
    pub bytes_sent: u64,
    /// RTP packets received by subscribers.
    pub packets_received: u64,
    /// RTP payload bytes received.
    pub bytes_received: u64,
    /// Packets missing from the sequences received in the measurement window, as a share of
    /// those expected there.
    pub loss: f64,
    /// NACKs the server sent publishers.
    pub nacks: u64,
    /// Picture-loss requests (PLI, FIR) the server sent publishers.
    pub plis: u64,
    /// Join request to first remote media, microseconds.
    pub join_to_media_us: Percentiles,
    /// Forwarding delay (publisher send to subscriber receive) in the measurement window,
    /// microseconds.
    pub delay_us: Percentiles,
    /// Length of the measurement window (everyone joined), seconds.
    pub window_seconds: f64,
    /// RTP packets subscribers received in the window.
    pub window_packets_received: u64,
    /// Remote tracks subscribers received, summed over the clients.
    pub subscribed_tracks: u64,
    /// The server process in the window: CPU seconds, and RSS at its end (when its pid
    /// was given).
    pub server: Option<ProcessUsage>,
    /// Packets the server forwarded per CPU-second in the window.
    pub received_packets_per_server_cpu_second: Option<f64>,
    /// The server's CPU use in the window, in cores (1.0: one core busy).
    pub server_cpu_share: Option<f64>,
    /// The growth of the server's anonymous resident memory (heap, stacks; not the code
    /// pages it touched meanwhile) from idle to the window's end per subscribed track,
    /// bytes (not for churn).
    pub memory_per_subscribed_track_bytes: Option<f64>,
}

impl Report {
    /// The report as a table.
    pub fn table(&self) -> String {
        let mut rows = vec![
            ("scenario / server / transport", format!("{} / {} / {:?}", self.scenario, self.target, self.transport).to_lowercase()),
            ("clients (connected / failed)", format!("{} ({} / {})", self.clients, self.connected, self.failed)),
            ("packets sent / received", format!("{} / {}", self.packets_sent, self.packets_received)),
            ("bytes sent / received", format!("{} / {}", self.bytes_sent, self.bytes_received)),
            ("loss", format!("{:.3} %", self.loss * 100.0)),
            ("NACKs / PLIs to publishers", format!("{} / {}", self.nacks, self.plis)),
            ("join → first media p50 / p99", format!("{} / {} ms", self.join_to_media_us.p50 / 1000, self.join_to_media_us.p99 / 1000)),
            ("forwarding delay p50 / p99 / max", format!("{} / {} / {} µs", self.delay_us.p50, self.delay_us.p99, self.delay_us.max)),
            ("window: seconds / packets received", format!("{:.1} / {}", self.window_seconds, self.window_packets_received)),
        ];
        if let (Some(server), Some(share)) = (self.server, self.server_cpu_share) {
            rows.push((
                "server CPU seconds (cores) / RSS",
                format!("{:.2} s ({share:.2}) / {:.1} MiB", server.cpu_seconds, server.rss_bytes as f64 / 1048576.0),
            ));
        }
        if let Some(rate) = self.received_packets_per_server_cpu_second {
            rows.push(("egress packets per server CPU-second", format!("{rate:.0}")));
        }
        if let Some(bytes) = self.memory_per_subscribed_track_bytes {
            rows.push(("server memory per subscribed track", format!("{:.1} KB ({} tracks)", bytes / 1000.0, self.subscribed_tracks)));
        }
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}
