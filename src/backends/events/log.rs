//! The embedded event sink: every event and task is one structured log line.

use signaling::events::{Event, EventSink};

/// Writes events to the log (target `switchboard::events`).
pub struct LogEvents;

impl EventSink for LogEvents {
    fn publish(&self, event: Event) {
        let json = serde_json::to_string(&event).unwrap_or_default();
        tracing::info!(target: "switchboard::events", kind = event.kind.name(), meeting = %event.meeting_id, "{json}");
    }

    fn submit_task(&self, meeting_id: &str, task: &serde_json::Value) {
        tracing::info!(target: "switchboard::tasks", meeting = %meeting_id, "{task}");
    }

    fn flush(&self, _timeout: std::time::Duration) {}
}
