//! A budget for the engine's warnings: at most [`PER_SECOND`] a second, then a count of those
//! left out. What a client does can make the engine warn (a codec it will not take, a
//! connection whose keys cannot be read); a client doing it on purpose must not fill the
//! log.

use std::time::{Duration, Instant};

use tracing::warn;

/// Warnings written per second at most.
pub(crate) const PER_SECOND: u32 = 20;

/// How many warnings the current second has written, and how many it left out.
#[derive(Debug, Default)]
pub(crate) struct WarningBudget {
    second: Option<Instant>,
    written: u32,
    left_out: u64,
}

impl WarningBudget {
    /// Whether a warning may be written at `now`. A new second first says how many the last
    /// one left out.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.second.is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1)) {
            if self.left_out > 0 {
                warn!(left_out = self.left_out, "media engine warnings left out of the log (more than {PER_SECOND} a second)");
            }
            *self = Self { second: Some(now), written: 0, left_out: 0 };
        }
        if self.written < PER_SECOND {
            self.written += 1;
            return true;
        }
        self.left_out += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_budget_a_second_is_written() {
        let start = Instant::now();
        let mut budget = WarningBudget::default();
        let written = (0..1000).filter(|_| budget.allow(start)).count();
        assert_eq!(written, PER_SECOND as usize);
        assert!(!budget.allow(start + Duration::from_millis(999)));
        assert!(budget.allow(start + Duration::from_secs(1)), "a new second, a new budget");
    }
}
