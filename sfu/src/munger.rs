//! Per-subscriber RTP header rewriting.
//!
//! Every downtrack sends with its own SSRC and its own sequence-number and timestamp space, so
//! that the subscriber sees one continuous stream even when the source changes underneath (the
//! publisher restarts its encoder, re-publishes, or a later issue switches simulcast layers).
//! Within one source the rewrite is a constant offset, so reordered and retransmitted packets
//! map to the same numbers they would have had in order.

use std::time::Instant;

/// What the munger decided for one incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Munged {
    /// Outgoing sequence number.
    pub sequence_number: u16,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
}

/// The offsets of the source currently being forwarded.
#[derive(Debug, Clone, Copy)]
struct SourceEpoch {
    ssrc: u32,
    /// The first source sequence number of this epoch (older packets are dropped).
    first_seq: u16,
    seq_offset: u16,
    ts_offset: u32,
}

/// Rewrites sequence numbers and timestamps of one downtrack.
#[derive(Debug)]
pub struct RtpMunger {
    clock_rate: u32,
    epoch: Option<SourceEpoch>,
    /// The source replaced by the current one: its late packets are dropped rather than
    /// starting yet another epoch.
    retired_ssrc: Option<u32>,
    /// Highest outgoing sequence number and its timestamp and send time.
    last_out: Option<(u16, u32, Instant)>,
}

impl RtpMunger {
    /// A munger for a stream with the given RTP clock rate (48000 for Opus, 90000 for video).
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate: clock_rate.max(1), epoch: None, retired_ssrc: None, last_out: None }
    }

    /// The munger numbering on at another clock rate (the next source's codec): sequence
    /// numbers continue, timestamps advance at the new rate from the last one sent.
    pub fn with_clock_rate(mut self, clock_rate: u32) -> Self {
        self.clock_rate = clock_rate.max(1);
        self
    }

    /// Maps an incoming packet to its outgoing numbers, or `None` if it belongs to a source
    /// epoch that has been replaced (a late packet from before a restart) and must be dropped.
    pub fn munge(&mut self, now: Instant, ssrc: u32, seq: u16, ts: u32) -> Option<Munged> {
        let epoch = match self.epoch {
            Some(epoch) if epoch.ssrc == ssrc => epoch,
            _ if self.retired_ssrc == Some(ssrc) => return None,
            _ => self.start_epoch(now, ssrc, seq, ts),
        };
        // Packets from before the epoch's first packet cannot be placed (their outgoing
        // numbers could collide with the previous source's).
        if seq_is_older(seq, epoch.first_seq) {
            return None;
        }
        let out = Munged { sequence_number: seq.wrapping_add(epoch.seq_offset), timestamp: ts.wrapping_add(epoch.ts_offset) };
        match self.last_out {
            Some((last_seq, _, _)) if !seq_is_older(last_seq, out.sequence_number) => {}
            _ => self.last_out = Some((out.sequence_number, out.timestamp, now)),
        }
        Some(out)
    }

    /// Starts a new epoch with the next packet, whatever its SSRC: the forwarder switched
    /// the subscriber to another simulcast layer (perhaps one it had left before, whose late
    /// packets would otherwise be dropped).
    pub fn switch_source(&mut self) {
        self.epoch = None;
        self.retired_ssrc = None;
    }

    /// The incoming sequence number that was sent as `out_seq` in the current epoch, used to
    /// answer a subscriber's NACK from the publisher's packet cache.
    pub fn source_sequence(&self, out_seq: u16) -> Option<(u32, u16)> {
        let epoch = self.epoch?;
        let seq = out_seq.wrapping_sub(epoch.seq_offset);
        if seq_is_older(seq, epoch.first_seq) {
            return None;
        }
        Some((epoch.ssrc, seq))
    }

    fn start_epoch(&mut self, now: Instant, ssrc: u32, seq: u16, ts: u32) -> SourceEpoch {
        let epoch = match self.last_out {
            // Continue right after the last packet sent, with the timestamp advanced by the
            // wall-clock time that passed (at least one tick, so it strictly increases).
            Some((last_seq, last_ts, last_at)) => {
                let elapsed = now.saturating_duration_since(last_at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u32;
                let next_seq = last_seq.wrapping_add(1);
                let next_ts = last_ts.wrapping_add(ticks.max(1));
                SourceEpoch { ssrc, first_seq: seq, seq_offset: next_seq.wrapping_sub(seq), ts_offset: next_ts.wrapping_sub(ts) }
            }
            // The first source: keep its numbers, like LiveKit does, which keeps captures
            // easy to read.
            None => SourceEpoch { ssrc, first_seq: seq, seq_offset: 0, ts_offset: 0 },
        };
        self.retired_ssrc = self.epoch.map(|old| old.ssrc);
        self.epoch = Some(epoch);
        epoch
    }
}

/// Whether sequence number `a` comes before `b` in RTP's wrapping order.
pub fn seq_is_older(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_source_keeps_its_numbers() {
        let now = Instant::now();
        let mut m = RtpMunger::new(90_000);
        let out = m.munge(now, 1, 100, 5000).unwrap();
        assert_eq!(out, Munged { sequence_number: 100, timestamp: 5000 });
    }

    #[test]
    fn restart_continues_sequence_and_advances_timestamp() {
        let t0 = Instant::now();
        let mut m = RtpMunger::new(90_000);
        for i in 0..10u16 {
            m.munge(t0, 1, 65_530u16.wrapping_add(i), 1000 + u32::from(i) * 3000);
        }
        // Last out: seq 65530+9 = 3 (wrapped), ts 28000.
        let t1 = t0 + Duration::from_millis(100);
        let out = m.munge(t1, 2, 777, 123).unwrap();
        assert_eq!(out.sequence_number, 4);
        assert_eq!(out.timestamp, 28_000 + 9_000);
        let next = m.munge(t1, 2, 778, 123 + 3000).unwrap();
        assert_eq!(next.sequence_number, 5);
        assert_eq!(next.timestamp, 37_000 + 3000);
        // A late packet from the old source is not placed.
        assert!(m.munge(t1, 1, 65_535, 16_000).is_none());
        assert_eq!(m.munge(t1, 2, 779, 123 + 6000).unwrap().sequence_number, 6);
    }

    #[test]
    fn a_switch_back_to_an_earlier_source_continues_the_numbers() {
        let t0 = Instant::now();
        let mut m = RtpMunger::new(90_000);
        m.munge(t0, 1, 10, 1000);
        m.switch_source();
        assert_eq!(m.munge(t0, 2, 500, 7).unwrap().sequence_number, 11);
        m.switch_source();
        let back = m.munge(t0 + Duration::from_millis(10), 1, 20, 2000).unwrap();
        assert_eq!(back, Munged { sequence_number: 12, timestamp: 1000 + 1 + 900 });
    }

    #[test]
    fn reordered_packets_keep_their_place() {
        let now = Instant::now();
        let mut m = RtpMunger::new(48_000);
        m.munge(now, 9, 10, 0);
        m.munge(now, 9, 12, 1920);
        let late = m.munge(now, 9, 11, 960).unwrap();
        assert_eq!(late.sequence_number, 11);
        assert_eq!(m.source_sequence(12), Some((9, 12)));
    }

    #[test]
    fn packets_before_epoch_start_are_dropped() {
        let now = Instant::now();
        let mut m = RtpMunger::new(48_000);
        m.munge(now, 1, 500, 0);
        m.munge(now, 2, 40, 0);
        assert!(m.munge(now, 2, 39, 0).is_none());
        assert_eq!(m.source_sequence(500), None);
    }
}
