//! The per-track cache of recent packets that answers subscribers' NACKs.
//!
//! One cache per *published* track, not per subscriber: a retransmission is the cached
//! source packet run through the requesting subscriber's munger again. It holds the packets
//! of the last `max_age` (a NACK for anything older comes too late to help; the forwarder
//! sets it from its subscribers' round-trip times) and at most `capacity` of them, in arrival
//! order, so its memory follows the track's bitrate rather than a fixed count. Payloads are
//! shared `Bytes`, not copies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::rtp;

/// The most recent packets of one source.
#[derive(Debug)]
pub struct PacketCache {
    packets: VecDeque<(Instant, rtp::Packet)>,
    capacity: usize,
    max_age: Duration,
}

impl PacketCache {
    /// A cache of the packets of the last `max_age`, at most `capacity` of them.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self { packets: VecDeque::new(), capacity: capacity.max(1), max_age }
    }

    /// Keeps packets for `max_age` from now on (the oldest go with the next insert).
    pub fn set_max_age(&mut self, max_age: Duration) {
        self.max_age = max_age;
    }

    /// Remembers a packet that arrived at `now`, forgetting those too old or too many.
    pub fn insert(&mut self, now: Instant, packet: &rtp::Packet) {
        while let Some((arrived, _)) = self.packets.front() {
            if self.packets.len() < self.capacity && now.saturating_duration_since(*arrived) <= self.max_age {
                break;
            }
            self.packets.pop_front();
        }
        self.packets.push_back((now, packet.clone()));
    }

    /// The cached packet of source `ssrc` with sequence number `seq`, if still held.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&rtp::Packet> {
        let matches = |p: &rtp::Packet| p.header.sequence_number == seq && p.header.ssrc == ssrc;
        // Packets arrive mostly in order: the distance from the oldest finds it directly.
        let oldest = self.packets.front()?.1.header.sequence_number;
        if let Some((_, packet)) = self.packets.get(usize::from(seq.wrapping_sub(oldest))) {
            if matches(packet) {
                return Some(packet);
            }
        }
        self.packets.iter().rev().map(|(_, p)| p).find(|p| matches(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(ssrc: u32, seq: u16) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header { ssrc, sequence_number: seq, ..Default::default() },
            payload: Bytes::from(vec![seq as u8; 4]),
        }
    }

    #[test]
    fn returns_recent_packets_and_forgets_the_oldest_beyond_its_capacity() {
        let mut cache = PacketCache::new(4, Duration::from_secs(1));
        let now = Instant::now();
        for seq in (65_534u16..=65_535).chain(0..4) {
            cache.insert(now, &packet(7, seq));
        }
        assert!(cache.get(7, 65_535).is_none(), "the fifth packet pushed out the first two");
        assert_eq!(cache.get(7, 0).map(|p| p.payload[0]), Some(0));
        assert_eq!(cache.get(7, 3).map(|p| p.payload[0]), Some(3));
        assert!(cache.get(8, 3).is_none(), "another source's packet is not returned");
    }

    #[test]
    fn forgets_packets_older_than_its_age_limit_and_finds_reordered_ones() {
        let mut cache = PacketCache::new(1024, Duration::from_millis(100));
        let start = Instant::now();
        for (i, seq) in [10u16, 12, 11, 13].into_iter().enumerate() {
            cache.insert(start + Duration::from_millis(30 * i as u64), &packet(7, seq));
        }
        assert_eq!(cache.get(7, 11).map(|p| p.payload[0]), Some(11), "out of order, found by search");
        assert_eq!(cache.get(7, 10).map(|p| p.payload[0]), Some(10));
        cache.insert(start + Duration::from_millis(150), &packet(7, 14));
        assert!(cache.get(7, 10).is_none(), "150 ms old");
        assert!(cache.get(7, 12).is_none(), "120 ms old");
        assert!(cache.get(7, 11).is_some(), "90 ms old");
        assert!(cache.get(7, 14).is_some());
    }
}
