//! The packets of one incoming stream that have not arrived, and when to ask for them again
//! (generic NACK, RFC 4585 §6.2.1).
//!
//! A packet counts as missing once a later one arrives. It is asked for at the next
//! feedback, then again every [`RESEND_AFTER`] while it is still missing, at most
//! [`MAX_NACKS`] times and for no longer than [`GIVE_UP_AFTER`]: past that the receivers
//! have moved on, and a keyframe request is the remedy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::munger::seq_is_older;

/// How long after a NACK the same packet is asked for again.
pub const RESEND_AFTER: Duration = Duration::from_millis(100);
/// How many NACKs one packet gets.
pub const MAX_NACKS: u8 = 10;
/// How long a missing packet is asked for.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(1);
/// A jump larger than this is a new start of the stream, not a loss.
const MAX_GAP: u16 = 512;
/// Missing packets kept per stream.
const MAX_MISSING: usize = 512;

struct Missing {
    sequence: u16,
    since: Instant,
    nacks: u8,
    last_nack: Option<Instant>,
}

/// The missing packets of one stream.
#[derive(Default)]
pub struct MissingPackets {
    highest: Option<u16>,
    /// Oldest first.
    missing: VecDeque<Missing>,
}

impl MissingPackets {
    /// Notes the arrival of `sequence` at `now`.
    pub fn received(&mut self, now: Instant, sequence: u16) {
        let Some(highest) = self.highest else {
            self.highest = Some(sequence);
            return;
        };
        if seq_is_older(highest, sequence) {
            let gap = sequence.wrapping_sub(highest).wrapping_sub(1);
            if gap > MAX_GAP {
                self.missing.clear();
            } else {
                for lost in 1..=gap {
                    self.missing.push_back(Missing { sequence: highest.wrapping_add(lost), since: now, nacks: 0, last_nack: None });
                }
                let excess = self.missing.len().saturating_sub(MAX_MISSING);
                self.missing.drain(..excess);
            }
            self.highest = Some(sequence);
        } else if let Some(at) = self.missing.iter().position(|m| m.sequence == sequence) {
            self.missing.remove(at);
        }
    }

    /// Whether any packet is missing.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
    }

    /// The sequence numbers to NACK at `now`, in order; counts them as asked for.
    pub fn due(&mut self, now: Instant, out: &mut Vec<u16>) {
        self.missing.retain(|m| m.nacks < MAX_NACKS && now.saturating_duration_since(m.since) < GIVE_UP_AFTER);
        for missing in &mut self.missing {
            if missing.last_nack.is_none_or(|at| now.saturating_duration_since(at) >= RESEND_AFTER) {
                missing.nacks += 1;
                missing.last_nack = Some(now);
                out.push(missing.sequence);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(missing: &mut MissingPackets, now: Instant) -> Vec<u16> {
        let mut out = Vec::new();
        missing.due(now, &mut out);
        out
    }

    #[test]
    fn a_gap_is_asked_for_again_until_it_arrives() {
        let start = Instant::now();
        let mut missing = MissingPackets::default();
        for sequence in [65_533, 65_534, 1, 2] {
            missing.received(start, sequence);
        }
        assert_eq!(due(&mut missing, start), vec![65_535, 0], "the two across the wrap");
        assert_eq!(due(&mut missing, start + Duration::from_millis(50)), Vec::<u16>::new(), "not yet again");
        missing.received(start + Duration::from_millis(60), 0);
        assert_eq!(due(&mut missing, start + RESEND_AFTER), vec![65_535], "0 arrived");
        missing.received(start + Duration::from_millis(160), 65_535);
        assert!(missing.is_empty());
    }

    #[test]
    fn a_packet_is_given_up_after_its_nacks_or_its_time() {
        let start = Instant::now();
        let mut missing = MissingPackets::default();
        missing.received(start, 10);
        missing.received(start, 12);
        let mut asked = 0;
        for step in 0..20u32 {
            asked += due(&mut missing, start + RESEND_AFTER * step).len();
        }
        assert_eq!(asked, usize::from(MAX_NACKS));
        assert!(missing.is_empty());
        missing.received(start, 14);
        assert_eq!(due(&mut missing, start + GIVE_UP_AFTER).len(), 0, "too old to ask for");
    }

    #[test]
    fn a_jump_is_a_restart_not_a_loss() {
        let start = Instant::now();
        let mut missing = MissingPackets::default();
        missing.received(start, 100);
        missing.received(start, 102);
        missing.received(start, 30_000);
        assert!(missing.is_empty());
        missing.received(start, 30_001);
        assert!(due(&mut missing, start).is_empty());
    }
}
