//! How much a subscriber may have retransmitted: NACK answers are bounded per feedback and
//! by a byte budget relative to the track's bitrate.
//!
//! A NACK names up to 17 packets in 4 bytes, and each packet named costs a sealed
//! retransmission of up to a full datagram: unbounded, a subscriber (or whoever holds its
//! keys) makes the server send a hundred times what it received, to itself or, with a
//! moved address, to someone else. So a NACK's list is deduplicated and cut at
//! [`MAX_PACKETS_PER_NACK`], and each subscription spends from a [`RetransmitBudget`] that
//! refills at [`BUDGET_SHARE`] of the track's measured bitrate ([`BitrateMeter`]).

use std::time::{Duration, Instant};

/// Most packets one NACK gets retransmitted; a real receiver asks for what one round trip
/// lost, and asks again.
pub const MAX_PACKETS_PER_NACK: usize = 64;
/// The budget refills at this share of the track's bitrate.
pub const BUDGET_SHARE: f64 = 0.5;
/// The budget's refill rate never falls below this (bytes per second), so a track that
/// just started, or a quiet one, can still repair a lost keyframe.
pub const MIN_BUDGET_RATE: f64 = 32_000.0;
/// The budget holds at most this long a refill: a burst of loss can be repaired at once.
const BUDGET_WINDOW: Duration = Duration::from_secs(1);
/// How long the bitrate meter measures before it updates.
const METER_WINDOW: Duration = Duration::from_millis(500);

/// A track's bitrate, measured over half-second windows.
#[derive(Debug, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    window_bytes: usize,
    /// Bytes per second over the last full window.
    rate: f64,
    /// The rate smoothed over windows (a keyframe's burst weighs a third).
    smoothed: Option<f64>,
}

impl BitrateMeter {
    /// Counts a packet of `bytes` arriving at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            self.rate = self.window_bytes as f64 / elapsed.as_secs_f64();
            self.smoothed = Some(self.smoothed.map_or(self.rate, |smoothed| 0.7 * smoothed + 0.3 * self.rate));
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    /// Bytes per second over the last full window (zero before one passed).
    pub fn bytes_per_second(&self) -> f64 {
        self.rate
    }

    /// Bytes per second smoothed over the windows so far, so that a keyframe's burst does
    /// not count as what the stream sends (zero before one window passed).
    pub fn smoothed_bytes_per_second(&self) -> f64 {
        self.smoothed.unwrap_or(0.0)
    }
}

/// A token bucket of bytes one subscription may retransmit.
#[derive(Debug, Default)]
pub struct RetransmitBudget {
    tokens: f64,
    refilled: Option<Instant>,
}

impl RetransmitBudget {
    /// Spends `bytes` at `now` if the budget holds them, refilling first at the rate allowed
    /// by a track of `track_rate` bytes per second. A new budget starts full.
    pub fn spend(&mut self, now: Instant, bytes: usize, track_rate: f64) -> bool {
        let rate = (track_rate * BUDGET_SHARE).max(MIN_BUDGET_RATE);
        let capacity = rate * BUDGET_WINDOW.as_secs_f64();
        self.tokens = match self.refilled {
            None => capacity,
            Some(at) => (self.tokens + rate * now.saturating_duration_since(at).as_secs_f64()).min(capacity),
        };
        self.refilled = Some(now);
        if self.tokens < bytes as f64 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_reports_the_last_windows_rate() {
        let start = Instant::now();
        let mut meter = BitrateMeter::default();
        for ms in (0..=1000).step_by(10) {
            meter.add(start + Duration::from_millis(ms), 1250); // 125 KB/s
        }
        assert!((meter.bytes_per_second() - 125_000.0).abs() < 2_000.0, "{}", meter.bytes_per_second());
    }

    #[test]
    fn the_budget_allows_its_share_of_the_track_rate_per_second() {
        let start = Instant::now();
        let mut budget = RetransmitBudget::default();
        let track_rate = 200_000.0; // 1.6 Mbit/s: 100 KB/s of retransmissions
        let mut spent = 0usize;
        for ms in 0..3000u64 {
            if budget.spend(start + Duration::from_millis(ms), 1200, track_rate) {
                spent += 1200;
            }
        }
        // A full bucket at the start (100 KB) and 100 KB/s for the 3 s after.
        assert!((390_000..=401_000).contains(&spent), "{spent}");
    }

    #[test]
    fn a_quiet_track_still_gets_the_floor() {
        let start = Instant::now();
        let mut budget = RetransmitBudget::default();
        let taken = (0..100).filter(|_| budget.spend(start, 1000, 0.0)).count();
        assert_eq!(taken, 32);
    }
}
