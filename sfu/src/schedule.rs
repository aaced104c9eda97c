//! When the periodic reports of a connection go out (sender reports to subscribers,
//! receiver reports to publishers): every [`REPORT_INTERVAL`], starting at a random point
//! of the first interval.
//!
//! Connections set up together (a room that starts at once, a load test) would otherwise
//! report in the same millisecond for the rest of their lives: one burst of SRTCP work a
//! second per worker instead of a steady trickle, which a server on a CPU quota pays for in
//! delay. RFC 3550 §6.2 randomizes every interval for the same reason; a random phase keeps
//! the intervals even.

use std::time::{Duration, Instant};

use rand::Rng;

/// How often a connection's reports go out, as the `rtc` engine's interceptors send them.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// When a connection started at `now` sends its first reports.
pub fn first_report(now: Instant, rng: &mut impl Rng) -> Instant {
    now + REPORT_INTERVAL.mul_f64(rng.random_range(0.05..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reports_of_connections_started_together_are_spread_over_an_interval() {
        let now = Instant::now();
        let mut rng = rand::rng();
        let mut firsts: Vec<Duration> = (0..200).map(|_| first_report(now, &mut rng) - now).collect();
        firsts.sort();
        assert!(firsts[0] >= REPORT_INTERVAL.mul_f64(0.05) && firsts[199] < REPORT_INTERVAL);
        // 200 draws land in more than 100 distinct 5 ms slots of the second.
        firsts.dedup_by_key(|d| d.as_millis() / 5);
        assert!(firsts.len() > 100, "{} slots", firsts.len());
    }
}
