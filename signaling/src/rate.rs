//! The per-connection token bucket that limits signaling messages.

use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(now: Instant, per_second: u32, burst: u32) -> Self {
        Self { burst: f64::from(burst), per_second: f64::from(per_second), tokens: f64::from(burst), last: now }
    }

    /// When a token was last asked for.
    pub fn last_used(&self) -> Instant {
        self.last
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(t0, 10, 5);
        assert_eq!((0..8).filter(|_| bucket.try_take(t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| bucket.try_take(t1)).count(), 3);
    }
}
