//! Signaling counters for `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::protocol::CLIENT_TYPES;

/// Signaling counters. Relaxed atomics: each is independent.
#[derive(Debug, Default)]
pub struct SignalingMetrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Messages received, by index in [`CLIENT_TYPES`].
    pub messages: [AtomicU64; CLIENT_TYPES.len()],
    /// Frames refused (bad JSON, unknown type, invalid, too large, rate limited).
    pub rejected: AtomicU64,
    /// `error` messages sent.
    pub errors: AtomicU64,
}

impl SignalingMetrics {
    /// Counts one received message of type `kind`.
    pub fn count_message(&self, kind: &str) {
        if let Some(i) = CLIENT_TYPES.iter().position(|t| *t == kind) {
            self.messages[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Renders the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP switchboard_ws_connections Open signaling connections.\n# TYPE switchboard_ws_connections gauge\nswitchboard_ws_connections {}", self.connections.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP switchboard_signaling_messages_total Signaling messages received, by type.\n# TYPE switchboard_signaling_messages_total counter");
        for (kind, count) in CLIENT_TYPES.iter().zip(&self.messages) {
            let _ = writeln!(out, "switchboard_signaling_messages_total{{type=\"{kind}\"}} {}", count.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP switchboard_signaling_rejected_total Frames refused before dispatch.\n# TYPE switchboard_signaling_rejected_total counter\nswitchboard_signaling_rejected_total {}", self.rejected.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP switchboard_signaling_errors_total Error messages sent.\n# TYPE switchboard_signaling_errors_total counter\nswitchboard_signaling_errors_total {}", self.errors.load(Ordering::Relaxed));
    }
}
