//! Media-plane counters, shared by the workers and read by the `/metrics` endpoint.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters and gauges of the media plane. Relaxed atomics: each is independent.
#[derive(Debug, Default)]
pub struct SfuMetrics {
    /// Rooms with at least one participant.
    pub rooms: AtomicI64,
    /// Participants with media on this node.
    pub participants: AtomicI64,
    /// Published tracks.
    pub tracks: AtomicI64,
    /// RTP packets received from publishers.
    pub packets_in: AtomicU64,
    /// RTP payload bytes received from publishers.
    pub bytes_in: AtomicU64,
    /// RTP packets forwarded to subscribers (retransmissions included).
    pub packets_out: AtomicU64,
    /// RTP payload bytes forwarded to subscribers.
    pub bytes_out: AtomicU64,
    /// NACKed packets received from subscribers.
    pub nacks: AtomicU64,
    /// Of those, packets retransmitted from the cache.
    pub retransmits: AtomicU64,
    /// Of those, retransmissions sent on an RTX stream (RFC 4588).
    pub rtx_packets: AtomicU64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests: AtomicU64,
    /// PLIs sent to publishers after throttling.
    pub plis_sent: AtomicU64,
    /// Datagrams dropped because no connection claimed their source.
    pub unroutable_datagrams: AtomicU64,
    /// Connectivity checks that named a connection but failed MESSAGE-INTEGRITY.
    pub forged_checks: AtomicU64,
    /// Media engines replaced after a panic escaped their isolation.
    pub engine_restarts: AtomicU64,
    /// Publishers' SRTP packets refused: failed authentication, replays, malformed.
    pub srtp_refused: AtomicU64,
    /// Missing packets NACKed to publishers.
    pub publisher_nacks: AtomicU64,
    /// Packets handed to taps (recorders).
    pub tap_packets: AtomicU64,
    /// Packets a tap lost because its queue was full.
    pub tap_packets_dropped: AtomicU64,
    /// Round trips measured from subscribers' receiver reports.
    pub round_trips: AtomicU64,
    /// Their sum, microseconds.
    pub round_trip_micros: AtomicU64,
}

impl SfuMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves a gauge by `delta`.
    pub fn shift(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// Renders the metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let gauges = [
            ("switchboard_rooms", "Rooms with media on this node.", &self.rooms),
            ("switchboard_participants", "Participants with media on this node.", &self.participants),
            ("switchboard_tracks", "Published tracks.", &self.tracks),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.load(Ordering::Relaxed));
        }
        let counters = [
            ("switchboard_rtp_packets_in_total", "RTP packets received from publishers.", &self.packets_in),
            ("switchboard_rtp_bytes_in_total", "RTP payload bytes received from publishers.", &self.bytes_in),
            ("switchboard_rtp_packets_out_total", "RTP packets sent to subscribers.", &self.packets_out),
            ("switchboard_rtp_bytes_out_total", "RTP payload bytes sent to subscribers.", &self.bytes_out),
            ("switchboard_nacks_total", "Packets NACKed by subscribers.", &self.nacks),
            ("switchboard_retransmits_total", "Packets retransmitted from the NACK cache.", &self.retransmits),
            ("switchboard_rtx_packets_total", "Retransmissions sent on an RTX stream.", &self.rtx_packets),
            ("switchboard_keyframe_requests_total", "PLI/FIR received from subscribers.", &self.keyframe_requests),
            ("switchboard_plis_sent_total", "PLIs sent to publishers after throttling.", &self.plis_sent),
            ("switchboard_unroutable_datagrams_total", "Datagrams no connection claimed.", &self.unroutable_datagrams),
            ("switchboard_forged_ice_checks_total", "Connectivity checks refused for failing MESSAGE-INTEGRITY.", &self.forged_checks),
            ("switchboard_media_engine_restarts_total", "Media engines replaced after a panic.", &self.engine_restarts),
            ("switchboard_srtp_refused_total", "Publishers' SRTP packets refused (authentication, replay, malformed).", &self.srtp_refused),
            ("switchboard_publisher_nacks_total", "Missing packets NACKed to publishers.", &self.publisher_nacks),
            ("switchboard_tap_packets_total", "Packets handed to taps (recorders).", &self.tap_packets),
            ("switchboard_tap_packets_dropped_total", "Packets taps lost to a full queue.", &self.tap_packets_dropped),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "switchboard_subscriber_round_trip_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Round trips from subscribers' receiver reports (they size the NACK caches).\n# TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
            self.round_trip_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.round_trips.load(Ordering::Relaxed)
        );
    }
}
