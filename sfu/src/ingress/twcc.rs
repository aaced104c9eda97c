//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-
//! extensions-01): when each packet carrying the transport-wide sequence number arrived, so
//! that the sender (a browser) can estimate the bandwidth of its uplink.
//!
//! Arrivals are collected between feedbacks and reported in sequence order, each feedback
//! starting where the last ended so that a packet lost at the boundary is still reported as
//! lost. Statuses go in two-bit status vector chunks, receive deltas in 250 µs units counted
//! from the reference time, so that rounding does not drift.

use std::time::{Duration, Instant};

use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
};

use crate::munger::seq_is_older;

/// How often feedback is sent while packets arrive (libwebrtc sends it about as often).
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// The receive delta unit.
const DELTA_MICROS: i64 = 250;
/// The reference time unit.
const REFERENCE_MICROS: i64 = 64_000;
/// Statuses in one two-bit status vector chunk.
const SYMBOLS_PER_CHUNK: usize = 7;
/// A feedback covers at most this many sequence numbers; past it a gap starts afresh.
const MAX_STATUSES: i64 = 4_096;

/// The arrivals of one connection's transport-wide sequence numbers.
pub struct TwccFeedback {
    /// The header extension id of the transport-wide sequence number.
    extension_id: u8,
    epoch: Instant,
    /// Unwrapped sequence numbers and arrival times (µs since the epoch) since the last feedback.
    arrivals: Vec<(i64, i64)>,
    /// The highest unwrapped sequence number seen, for unwrapping the next.
    highest: Option<i64>,
    /// The first sequence number the next feedback covers.
    next_base: Option<i64>,
    feedback_count: u8,
}

impl TwccFeedback {
    /// Feedback for the sequence numbers in header extension `extension_id`.
    pub fn new(extension_id: u8, now: Instant) -> Self {
        Self { extension_id, epoch: now, arrivals: Vec::new(), highest: None, next_base: None, feedback_count: 0 }
    }

    /// The header extension id it reads.
    pub fn extension_id(&self) -> u8 {
        self.extension_id
    }

    /// Notes that the packet with transport-wide sequence number `sequence` arrived at `now`.
    pub fn received(&mut self, now: Instant, sequence: u16) {
        let unwrapped = match self.highest {
            None => i64::from(sequence),
            Some(highest) => {
                let last = highest as u16;
                let delta = if seq_is_older(last, sequence) {
                    i64::from(sequence.wrapping_sub(last))
                } else {
                    -i64::from(last.wrapping_sub(sequence))
                };
                highest + delta
            }
        };
        if self.highest.is_none_or(|h| unwrapped > h) {
            self.highest = Some(unwrapped);
        }
        let micros = now.saturating_duration_since(self.epoch).as_micros() as i64;
        self.arrivals.push((unwrapped, micros));
    }

    /// Whether packets arrived since the last feedback.
    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }

    /// The feedback on what arrived since the last one, if anything did.
    pub fn feedback(&mut self, sender_ssrc: u32, media_ssrc: u32) -> Option<TransportLayerCc> {
        self.arrivals.sort_unstable();
        self.arrivals.dedup_by_key(|(sequence, _)| *sequence);
        if let Some(next) = self.next_base {
            // Packets that arrive after the feedback that covered them are not reported again.
            self.arrivals.retain(|(sequence, _)| *sequence >= next);
        }
        let (first, first_arrival) = *self.arrivals.first()?;
        let base = self.next_base.filter(|next| first - next < MAX_STATUSES).unwrap_or(first);
        let reference = first_arrival.div_euclid(REFERENCE_MICROS);
        let mut previous_ticks = reference * REFERENCE_MICROS / DELTA_MICROS;
        let mut symbols = Vec::new();
        let mut recv_deltas = Vec::new();
        let mut next = base;
        let mut reported = 0;
        for &(sequence, arrival) in &self.arrivals {
            if sequence - base >= MAX_STATUSES {
                break;
            }
            let ticks = arrival.div_euclid(DELTA_MICROS);
            let delta = ticks - previous_ticks;
            let symbol = match delta {
                0..=255 => SymbolTypeTcc::PacketReceivedSmallDelta,
                _ if i16::try_from(delta).is_ok() => SymbolTypeTcc::PacketReceivedLargeDelta,
                _ => break, // too far from the previous packet for one feedback
            };
            symbols.extend((next..sequence).map(|_| SymbolTypeTcc::PacketNotReceived));
            symbols.push(symbol);
            recv_deltas.push(RecvDelta { type_tcc_packet: symbol, delta: delta * DELTA_MICROS });
            previous_ticks = ticks;
            next = sequence + 1;
            reported += 1;
        }
        self.arrivals.drain(..reported);
        self.next_base = Some(next);
        let packet_chunks = symbols
            .chunks(SYMBOLS_PER_CHUNK)
            .map(|chunk| {
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: chunk.to_vec(),
                })
            })
            .collect();
        let feedback = TransportLayerCc {
            sender_ssrc,
            media_ssrc,
            base_sequence_number: base as u16,
            packet_status_count: symbols.len() as u16,
            reference_time: (reference as u32) & 0xFF_FFFF,
            fb_pkt_count: self.feedback_count,
            packet_chunks,
            recv_deltas,
        };
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(feedback)
    }
}

#[cfg(test)]
mod tests {
    use rtc::shared::marshal::{Marshal, Unmarshal};

    use super::*;

    /// Statuses and arrival times (µs from the reference) a feedback carries, read back
    /// from its wire form.
    fn read(feedback: &TransportLayerCc) -> (u16, Vec<Option<i64>>) {
        let wire = feedback.marshal().expect("marshal");
        let parsed = TransportLayerCc::unmarshal(&mut wire.as_ref()).expect("unmarshal");
        let symbols: Vec<SymbolTypeTcc> = parsed
            .packet_chunks
            .iter()
            .flat_map(|chunk| match chunk {
                PacketStatusChunk::StatusVectorChunk(c) => c.symbol_list.clone(),
                PacketStatusChunk::RunLengthChunk(c) => vec![c.packet_status_symbol; usize::from(c.run_length)],
            })
            .take(usize::from(parsed.packet_status_count))
            .collect();
        let mut deltas = parsed.recv_deltas.iter();
        let mut at = i64::from(parsed.reference_time) * REFERENCE_MICROS;
        let times = symbols
            .iter()
            .map(|symbol| match symbol {
                SymbolTypeTcc::PacketNotReceived => None,
                _ => {
                    at += deltas.next().expect("a delta per received packet").delta;
                    Some(at)
                }
            })
            .collect();
        (parsed.base_sequence_number, times)
    }

    #[test]
    fn reports_arrivals_and_losses_in_order_across_a_wrap_and_two_feedbacks() {
        let start = Instant::now();
        let mut twcc = TwccFeedback::new(3, start);
        let at = |ms: u64, us: u64| start + Duration::from_millis(ms) + Duration::from_micros(us);
        // 65_534 and 0 arrive out of order; 65_535 and 2 are lost.
        twcc.received(at(70, 0), 65_533);
        twcc.received(at(70, 500), 0);
        twcc.received(at(71, 0), 65_534);
        twcc.received(at(72, 0), 1);
        let feedback = twcc.feedback(1, 2).expect("feedback");
        let (base, times) = read(&feedback);
        assert_eq!(base, 65_533);
        assert_eq!(feedback.reference_time, 1, "70 ms is in the second 64 ms unit");
        assert_eq!(times, vec![Some(70_000), Some(71_000), None, Some(70_500), Some(72_000)]);
        assert!(twcc.feedback(1, 2).is_none(), "nothing new");
        // The next feedback starts at 2, so the lost 2 is reported.
        twcc.received(at(2_000, 0), 3);
        let feedback = twcc.feedback(1, 2).expect("feedback");
        assert_eq!(feedback.fb_pkt_count, 1);
        assert_eq!(read(&feedback), (2, vec![None, Some(1_984_000 + 16_000)]));
    }

    #[test]
    fn a_late_packet_already_reported_lost_is_not_reported_again() {
        let start = Instant::now();
        let mut twcc = TwccFeedback::new(3, start);
        twcc.received(start, 10);
        twcc.received(start, 12);
        assert!(twcc.feedback(0, 0).is_some());
        twcc.received(start + Duration::from_millis(5), 11);
        assert!(twcc.feedback(0, 0).is_none());
    }
}
