//! Throttling of keyframe requests (PLI/FIR) towards a publisher.
//!
//! Every subscriber that joins, loses packets or switches source asks for a keyframe; a
//! publisher must not be flooded with them, since each keyframe costs it a burst of bitrate.
//! Requests inside the interval after one that was sent are merged into it.

use std::time::{Duration, Instant};

/// Decides when a keyframe request may go to the publisher of one track.
#[derive(Debug)]
pub struct KeyframeRequester {
    interval: Duration,
    last_sent: Option<Instant>,
}

impl KeyframeRequester {
    /// A requester that forwards at most one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last_sent: None }
    }

    /// Whether a request arriving at `now` should be sent to the publisher.
    pub fn should_request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(at) if now.saturating_duration_since(at) < self.interval => false,
            _ => {
                self.last_sent = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(Duration::from_millis(500));
        assert!(k.should_request(t0));
        assert!(!k.should_request(t0 + Duration::from_millis(10)));
        assert!(!k.should_request(t0 + Duration::from_millis(499)));
        assert!(k.should_request(t0 + Duration::from_millis(500)));
    }
}
