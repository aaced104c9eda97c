//! Media-plane metrics. Each engine counts in plain integers on its own thread; its worker
//! publishes them into a slot of its own once per turn (a store per figure, not an atomic
//! add per packet shared by every worker), and the `/metrics` endpoint sums the slots.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What an engine counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    PacketsIn,
    BytesIn,
    PacketsOut,
    BytesOut,
    Nacks,
    Retransmits,
    RtxPackets,
    KeyframeRequests,
    PlisSent,
    Unroutable,
    ForgedChecks,
    SrtpRefused,
    PublisherNacks,
    TapPackets,
    TapPacketsDropped,
    ProbePackets,
    EngineRestarts,
    RoundTrips,
    RoundTripMicros,
}

const COUNTERS: usize = Counter::RoundTripMicros as usize + 1;

/// Name and help of each counter rendered as a Prometheus counter, in [`Counter`] order (the
/// round trips are rendered as a summary).
const COUNTER_TEXT: [(&str, &str); Counter::EngineRestarts as usize + 1] = [
    ("switchboard_rtp_packets_in_total", "RTP packets received from publishers."),
    ("switchboard_rtp_bytes_in_total", "RTP payload bytes received from publishers."),
    ("switchboard_rtp_packets_out_total", "RTP packets sent to subscribers."),
    ("switchboard_rtp_bytes_out_total", "RTP payload bytes sent to subscribers."),
    ("switchboard_nacks_total", "Packets NACKed by subscribers."),
    ("switchboard_retransmits_total", "Packets retransmitted from the NACK cache."),
    ("switchboard_rtx_packets_total", "Retransmissions sent on an RTX stream."),
    ("switchboard_keyframe_requests_total", "PLI/FIR received from subscribers."),
    ("switchboard_plis_sent_total", "PLIs sent to publishers after throttling."),
    ("switchboard_unroutable_datagrams_total", "Datagrams no connection claimed."),
    ("switchboard_forged_ice_checks_total", "Connectivity checks refused for failing MESSAGE-INTEGRITY."),
    ("switchboard_srtp_refused_total", "Publishers' SRTP and subscribers' SRTCP packets refused (authentication, replay, malformed)."),
    ("switchboard_publisher_nacks_total", "Missing packets NACKed to publishers."),
    ("switchboard_tap_packets_total", "Packets handed to taps (recorders)."),
    ("switchboard_tap_packets_dropped_total", "Packets taps lost to a full queue."),
    ("switchboard_probe_packets_total", "Padding packets sent to probe subscribers' downlinks."),
    ("switchboard_media_engine_restarts_total", "Media engines replaced after a panic."),
];

/// An engine's counts, kept without atomics by the thread that owns it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters([u64; COUNTERS]);

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(&mut self, counter: Counter, n: u64) {
        self.0[counter as usize] = self.0[counter as usize].wrapping_add(n);
    }

    /// The count of `counter`.
    #[cfg(test)]
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// How many rooms, participants and tracks an engine holds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Gauges {
    pub rooms: usize,
    pub participants: usize,
    pub tracks: usize,
}

/// One worker's published figures.
#[derive(Debug, Default)]
pub(crate) struct WorkerMetrics {
    counters: [AtomicU64; COUNTERS],
    gauges: [AtomicI64; 3],
    tcp_streams: AtomicI64,
    tcp_frames_dropped: AtomicU64,
}

impl WorkerMetrics {
    /// Publishes the engine's figures.
    pub fn publish(&self, counters: &Counters, gauges: Gauges) {
        for (slot, value) in self.counters.iter().zip(counters.0) {
            slot.store(value, Ordering::Relaxed);
        }
        let gauges = [gauges.rooms, gauges.participants, gauges.tracks];
        for (slot, value) in self.gauges.iter().zip(gauges) {
            slot.store(value as i64, Ordering::Relaxed);
        }
    }

    /// Publishes the worker's ICE-TCP figures: open streams, and frames dropped on full
    /// queues since it started.
    pub fn publish_tcp(&self, streams: usize, dropped: u64) {
        self.tcp_streams.store(streams as i64, Ordering::Relaxed);
        self.tcp_frames_dropped.store(dropped, Ordering::Relaxed);
    }
}

/// The media plane's metrics: every worker's slot, summed when read.
#[derive(Debug, Default)]
pub struct SfuMetrics {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
}

impl SfuMetrics {
    /// A new worker's slot, counted from now on.
    pub(crate) fn worker(&self) -> Arc<WorkerMetrics> {
        let slot = Arc::new(WorkerMetrics::default());
        self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(slot.clone());
        slot
    }

    /// Renders the metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let workers = self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let counter = |index: usize| workers.iter().map(|w| w.counters[index].load(Ordering::Relaxed)).sum::<u64>();
        let gauge = |index: usize| workers.iter().map(|w| w.gauges[index].load(Ordering::Relaxed)).sum::<i64>();
        let gauges = [
            ("switchboard_rooms", "Rooms with media on this node."),
            ("switchboard_participants", "Participants with media on this node."),
            ("switchboard_tracks", "Published tracks."),
        ];
        for (index, (name, help)) in gauges.into_iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", gauge(index));
        }
        for (index, (name, help)) in COUNTER_TEXT.into_iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", counter(index));
        }
        let streams: i64 = workers.iter().map(|w| w.tcp_streams.load(Ordering::Relaxed)).sum();
        let dropped: u64 = workers.iter().map(|w| w.tcp_frames_dropped.load(Ordering::Relaxed)).sum();
        let name = "switchboard_ice_tcp_streams";
        let _ = writeln!(out, "# HELP {name} Clients' ICE-TCP streams open.\n# TYPE {name} gauge\n{name} {streams}");
        let name = "switchboard_ice_tcp_frames_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Frames dropped because a client's ICE-TCP stream had a full queue.\n# TYPE {name} counter\n{name} {dropped}"
        );
        let name = "switchboard_subscriber_round_trip_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Round trips from subscribers' receiver reports (they size the NACK caches).\n# TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
            counter(Counter::RoundTripMicros as usize) as f64 / 1e6,
            counter(Counter::RoundTrips as usize)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_figures_are_summed_when_read() {
        let metrics = SfuMetrics::default();
        let (a, b) = (metrics.worker(), metrics.worker());
        let mut counters = Counters::default();
        counters.add(Counter::PacketsOut, 5);
        counters.add(Counter::RoundTrips, 2);
        counters.add(Counter::RoundTripMicros, 3_000);
        a.publish(&counters, Gauges { rooms: 1, participants: 3, tracks: 2 });
        counters.add(Counter::PacketsOut, 1);
        b.publish(&counters, Gauges { rooms: 2, participants: 1, tracks: 0 });
        a.publish_tcp(2, 7);
        b.publish_tcp(1, 0);
        let mut out = String::new();
        metrics.render(&mut out);
        for line in [
            "switchboard_rooms 3",
            "switchboard_participants 4",
            "switchboard_tracks 2",
            "switchboard_rtp_packets_out_total 11",
            "switchboard_rtp_packets_in_total 0",
            "switchboard_subscriber_round_trip_seconds_sum 0.006",
            "switchboard_subscriber_round_trip_seconds_count 4",
            "switchboard_ice_tcp_streams 3",
            "switchboard_ice_tcp_frames_dropped_total 7",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
