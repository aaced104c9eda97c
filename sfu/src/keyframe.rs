//! Throttling of keyframe requests (PLI/FIR) towards a publisher.
//!
//! Every subscriber that joins, loses packets or switches source asks for a keyframe; a
//! publisher must not be flooded with them, since each keyframe costs it a burst of bitrate.
//! A request inside the interval after one that was sent is not dropped but deferred: one
//! request goes out when the interval ends, for all that came meanwhile, since a keyframe
//! already on its way may have left before the later subscribers could decode it.

use std::time::{Duration, Instant};

/// Decides when a keyframe request may go to the publisher of one track.
#[derive(Debug)]
pub struct KeyframeRequester {
    interval: Duration,
    last_sent: Option<Instant>,
    /// A request came while throttled.
    deferred: bool,
}

impl KeyframeRequester {
    /// A requester that forwards at most one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last_sent: None, deferred: false }
    }

    /// Whether a request arriving at `now` should be sent to the publisher now; if not, it
    /// is deferred to [`KeyframeRequester::deferred_until`].
    pub fn should_request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(at) if now.saturating_duration_since(at) < self.interval => {
                self.deferred = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.deferred = false;
                true
            }
        }
    }

    /// Whether a request may go out at `now`, for a caller that asks again anyway (the
    /// packet path, while a subscriber waits for a keyframe): one that may not is dropped,
    /// not deferred.
    pub fn try_request(&mut self, now: Instant) -> bool {
        if self.last_sent.is_some_and(|at| now.saturating_duration_since(at) < self.interval) {
            return false;
        }
        self.last_sent = Some(now);
        self.deferred = false;
        true
    }

    /// When a deferred request may go out.
    pub fn deferred_until(&self) -> Option<Instant> {
        self.last_sent.filter(|_| self.deferred).map(|at| at + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval_and_the_throttled_ones_later() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(Duration::from_millis(500));
        assert!(k.should_request(t0));
        assert_eq!(k.deferred_until(), None);
        assert!(!k.should_request(t0 + Duration::from_millis(10)));
        assert!(!k.should_request(t0 + Duration::from_millis(499)));
        assert_eq!(k.deferred_until(), Some(t0 + Duration::from_millis(500)), "one request waits for the interval");
        assert!(k.should_request(t0 + Duration::from_millis(500)));
        assert_eq!(k.deferred_until(), None, "sending it clears the deferred one");
        assert!(!k.try_request(t0 + Duration::from_millis(600)), "within the interval");
        assert_eq!(k.deferred_until(), None, "and not deferred");
        assert!(k.try_request(t0 + Duration::from_millis(1000)));
    }
}
