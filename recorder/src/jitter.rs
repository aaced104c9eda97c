//! A small jitter buffer for one RTP stream: it puts packets back in sequence order and
//! decides when a missing packet is lost. Sans-IO: the caller passes `now`.
//!
//! A packet is released once every packet before it has been released or declared lost. A
//! gap is declared lost when the packet after it has waited `max_delay`, or when the window
//! (`capacity` sequence numbers) would otherwise overflow. Duplicates and packets older than
//! what was already released are dropped and counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// An RTP packet as the recorder sees it: the header fields it needs and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (last packet of a video frame).
    pub marker: bool,
    /// Payload.
    pub payload: Bytes,
}

/// What the buffer hands on, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The next packet.
    Packet(RtpPacket),
    /// `count` packets before the next one never arrived.
    Lost {
        /// How many.
        count: u64,
    },
}

/// Counters of one buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets accepted.
    pub received: u64,
    /// Packets declared lost.
    pub lost: u64,
    /// Duplicates and packets that came after their place was given up.
    pub dropped: u64,
}

/// The buffer of one stream.
#[derive(Debug)]
pub struct JitterBuffer {
    capacity: u64,
    max_delay: Duration,
    /// Extended sequence number → arrival time and packet.
    waiting: BTreeMap<u64, (Instant, RtpPacket)>,
    /// The extended sequence number released next.
    next: Option<u64>,
    /// Highest extended sequence number seen, to unwrap the next one.
    highest: Option<u64>,
    /// Packets given up because the window overflowed, not yet reported by `pop`.
    pending_loss: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer holding up to `capacity` sequence numbers and waiting up to `max_delay` for
    /// a missing packet.
    pub fn new(capacity: usize, max_delay: Duration) -> Self {
        Self {
            capacity: capacity.max(1) as u64,
            max_delay,
            waiting: BTreeMap::new(),
            next: None,
            highest: None,
            pending_loss: 0,
            stats: JitterStats::default(),
        }
    }

    /// The buffer's counters.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The extended (wrap-free) sequence number of `sequence`, near the highest seen.
    fn extend(&self, sequence: u16) -> u64 {
        let Some(highest) = self.highest else { return u64::from(sequence) + (1 << 16) };
        let delta = sequence.wrapping_sub(highest as u16) as i16;
        highest.saturating_add_signed(i64::from(delta))
    }

    /// Takes a packet in.
    pub fn push(&mut self, now: Instant, packet: RtpPacket) {
        let extended = self.extend(packet.sequence);
        if self.next.is_some_and(|next| extended < next) || self.waiting.contains_key(&extended) {
            self.stats.dropped += 1;
            return;
        }
        self.stats.received += 1;
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
        if self.next.is_none() {
            self.next = Some(extended);
        }
        self.waiting.insert(extended, (now, packet));
        // A window overflow gives up on the oldest gap at once.
        while let (Some(next), Some(highest)) = (self.next, self.highest) {
            if highest - next < self.capacity {
                break;
            }
            self.skip_to_first_waiting();
            if self.next == Some(next) {
                break;
            }
        }
    }

    /// Declares the gap before the first waiting packet lost.
    fn skip_to_first_waiting(&mut self) {
        let (Some(next), Some((&first, _))) = (self.next, self.waiting.first_key_value()) else { return };
        if first > next {
            self.stats.lost += first - next;
            self.pending_loss += first - next;
            self.next = Some(first);
        }
    }

    /// The next thing to hand on, if any is due at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Released> {
        if self.pending_loss > 0 {
            let count = std::mem::take(&mut self.pending_loss);
            return Some(Released::Lost { count });
        }
        let next = self.next?;
        if let Some((_, packet)) = self.waiting.remove(&next) {
            self.next = Some(next + 1);
            return Some(Released::Packet(packet));
        }
        let (&first, (arrived, _)) = self.waiting.first_key_value()?;
        if now.saturating_duration_since(*arrived) < self.max_delay {
            return None;
        }
        let count = first - next;
        self.stats.lost += count;
        self.next = Some(first);
        Some(Released::Lost { count })
    }

    /// When `pop` may next have something to hand on, if nothing is due now.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|(_, (arrived, _))| *arrived + self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn packet(sequence: u16) -> RtpPacket {
        RtpPacket { sequence, timestamp: u32::from(sequence) * 3000, marker: true, payload: Bytes::from(sequence.to_be_bytes().to_vec()) }
    }

    /// Drains everything due at `now`.
    fn drain(buffer: &mut JitterBuffer, now: Instant, out: &mut Vec<Released>) {
        while let Some(released) = buffer.pop(now) {
            out.push(released);
        }
    }

    #[test]
    fn reorders_and_reports_losses_across_the_sequence_wrap() {
        let mut rng = StdRng::seed_from_u64(7);
        let start = Instant::now();
        let first: u16 = 65_000;
        let total = 3000u16;
        // Every packet but a seeded 3 % (never the last) arrives, displaced by up to 4 places.
        let mut arrivals: Vec<(f64, u16)> = Vec::new();
        let mut lost = std::collections::BTreeSet::new();
        for i in 0..total {
            let sequence = first.wrapping_add(i);
            if i + 1 < total && rng.random_bool(0.03) {
                lost.insert(sequence);
                continue;
            }
            arrivals.push((f64::from(i) + rng.random_range(0.0..4.0), sequence));
        }
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buffer = JitterBuffer::new(512, Duration::from_millis(50));
        let mut out = Vec::new();
        for (slot, sequence) in &arrivals {
            let now = start + Duration::from_secs_f64(slot / 1000.0 * 5.0);
            buffer.push(now, packet(*sequence));
            if rng.random_bool(0.01) {
                buffer.push(now, packet(*sequence)); // a duplicate
            }
            drain(&mut buffer, now, &mut out);
        }
        drain(&mut buffer, start + Duration::from_secs(3600), &mut out);

        let mut expected = first;
        let mut reported_lost = 0;
        for released in &out {
            match released {
                Released::Packet(p) => {
                    assert_eq!(p.sequence, expected, "released in order");
                    expected = expected.wrapping_add(1);
                }
                Released::Lost { count } => {
                    for _ in 0..*count {
                        assert!(lost.contains(&expected), "{expected} reported lost but it arrived");
                        expected = expected.wrapping_add(1);
                    }
                    reported_lost += count;
                }
            }
        }
        assert_eq!(expected, first.wrapping_add(total), "everything accounted for");
        assert_eq!(reported_lost, lost.len() as u64);
        let stats = buffer.stats();
        assert_eq!((stats.received, stats.lost), (arrivals.len() as u64, lost.len() as u64));
        assert!(stats.dropped > 0, "duplicates were dropped");
    }

    #[test]
    fn waits_for_a_late_packet_then_gives_up_on_it() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(64, Duration::from_millis(40));
        buffer.push(t0, packet(10));
        assert_eq!(buffer.pop(t0), Some(Released::Packet(packet(10))));
        buffer.push(t0, packet(12));
        assert_eq!(buffer.pop(t0 + Duration::from_millis(39)), None, "11 may still come");
        assert_eq!(buffer.next_deadline(), Some(t0 + Duration::from_millis(40)));
        buffer.push(t0 + Duration::from_millis(39), packet(11));
        assert_eq!(buffer.pop(t0 + Duration::from_millis(39)), Some(Released::Packet(packet(11))));
        assert_eq!(buffer.pop(t0 + Duration::from_millis(39)), Some(Released::Packet(packet(12))));
        buffer.push(t0, packet(14));
        assert_eq!(buffer.pop(t0 + Duration::from_millis(40)), Some(Released::Lost { count: 1 }));
        assert_eq!(buffer.pop(t0 + Duration::from_millis(40)), Some(Released::Packet(packet(14))));
        buffer.push(t0, packet(13));
        assert_eq!(buffer.pop(t0 + Duration::from_secs(1)), None, "too late: its place was given up");
        assert_eq!(buffer.stats().dropped, 1);
    }

    #[test]
    fn a_window_overflow_gives_up_the_oldest_gap_at_once() {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(8, Duration::from_secs(10));
        buffer.push(t0, packet(0));
        assert!(matches!(buffer.pop(t0), Some(Released::Packet(_))));
        for sequence in 2..=9 {
            buffer.push(t0, packet(sequence));
        }
        assert_eq!(buffer.pop(t0), Some(Released::Lost { count: 1 }));
        assert_eq!(buffer.pop(t0), Some(Released::Packet(packet(2))));
    }
}
