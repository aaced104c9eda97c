//! The per-track cache of recent packets that answers subscribers' NACKs.
//!
//! One cache per *published* track, not per subscriber: a retransmission is the cached
//! source packet run through the requesting subscriber's munger again. Slots are indexed by
//! sequence number modulo the capacity, so insert and lookup are O(1) and allocation-free
//! once the ring is full (payloads are shared `Bytes`).

use rtc::rtp;

/// A ring of the most recent packets of one source, by sequence number.
#[derive(Debug)]
pub struct PacketCache {
    slots: Box<[Option<rtp::Packet>]>,
}

impl PacketCache {
    /// A cache holding up to `capacity` packets (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self { slots: (0..capacity).map(|_| None).collect() }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// Remembers a packet, replacing whatever shared its slot.
    pub fn insert(&mut self, packet: &rtp::Packet) {
        let index = self.index(packet.header.sequence_number);
        self.slots[index] = Some(packet.clone());
    }

    /// The cached packet of source `ssrc` with sequence number `seq`, if still held.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&rtp::Packet> {
        self.slots[self.index(seq)].as_ref().filter(|p| p.header.sequence_number == seq && p.header.ssrc == ssrc)
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
    fn returns_recent_packets_and_forgets_overwritten_ones() {
        let mut cache = PacketCache::new(4);
        for seq in 65_534u16..=65_535 {
            cache.insert(&packet(7, seq));
        }
        for seq in 0u16..4 {
            cache.insert(&packet(7, seq));
        }
        assert!(cache.get(7, 65_534).is_none(), "overwritten by seq 2");
        assert_eq!(cache.get(7, 3).map(|p| p.payload[0]), Some(3));
        assert!(cache.get(8, 3).is_none(), "another source's packet is not returned");
    }
}
