//! Transport-wide feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1), read in
//! place: which of a run of the connection's packets arrived, and when.
//!
//! The status chunks are checked once, when the feedback is parsed: that they describe every
//! packet the status count names, with a receive delta present for each packet that arrived
//! and no reserved symbol. Reading the packets then walks the same octets again.

/// The status of one packet (two bits; the reserved fourth value refuses the feedback).
const NOT_RECEIVED: u8 = 0;
const SMALL_DELTA: u8 = 1;
const LARGE_DELTA: u8 = 2;
/// The fixed part after the media SSRC: base sequence number, status count, reference time
/// and feedback packet count.
const FIXED_LEN: usize = 8;
/// Units of the reference time and of receive deltas, in microseconds.
const REFERENCE_TIME_UNIT: i64 = 64_000;
const DELTA_UNIT: i64 = 250;

/// A transport-wide feedback packet whose chunks and deltas were checked.
#[derive(Debug, Clone, Copy)]
pub struct TransportFeedback<'a> {
    /// The stream the feedback was sent about (the connection's, whatever stream it names).
    pub media_ssrc: u32,
    base: u16,
    count: u16,
    /// When the first packet that arrived did, in the receiver's clock, in microseconds.
    reference_micros: i64,
    chunks: &'a [u8],
    deltas: &'a [u8],
}

impl<'a> TransportFeedback<'a> {
    /// Reads the feedback of `media_ssrc` from `fci`, what follows the media SSRC; `None` if
    /// it is truncated or holds a reserved status.
    pub fn parse(media_ssrc: u32, fci: &'a [u8]) -> Option<Self> {
        let fixed = fci.get(..FIXED_LEN)?;
        let base = u16::from_be_bytes([fixed[0], fixed[1]]);
        let count = u16::from_be_bytes([fixed[2], fixed[3]]);
        // A signed 24-bit count of 64 ms.
        let reference = i32::from_be_bytes([fixed[4], fixed[5], fixed[6], 0]) >> 8;
        let body = &fci[FIXED_LEN..];
        let (mut described, mut chunks_len, mut deltas_len) = (0usize, 0usize, 0usize);
        while described < usize::from(count) {
            let chunk = chunk_at(body, chunks_len)?;
            chunks_len += 2;
            let statuses = chunk_statuses(chunk).min(usize::from(count) - described);
            for at in 0..statuses {
                deltas_len += match chunk_symbol(chunk, at) {
                    NOT_RECEIVED => 0,
                    SMALL_DELTA => 1,
                    LARGE_DELTA => 2,
                    _ => return None,
                };
            }
            described += statuses;
        }
        let deltas = body.get(chunks_len..chunks_len + deltas_len)?;
        Some(Self {
            media_ssrc,
            base,
            count,
            reference_micros: i64::from(reference) * REFERENCE_TIME_UNIT,
            chunks: &body[..chunks_len],
            deltas,
        })
    }

    /// How many packets the feedback reports on.
    pub fn status_count(&self) -> u16 {
        self.count
    }

    /// Each packet reported on, in order: its transport-wide sequence number, and when it
    /// arrived in the receiver's clock in microseconds (`None`: not received).
    pub fn packets(&self) -> Packets<'a> {
        Packets { feedback: *self, chunk: 0, in_chunk: 0, reported: 0, delta: 0, arrival: self.reference_micros }
    }
}

/// The packets of a [`TransportFeedback`].
pub struct Packets<'a> {
    feedback: TransportFeedback<'a>,
    /// The offset of the chunk being read, and the next of its statuses.
    chunk: usize,
    in_chunk: usize,
    reported: u16,
    /// The offset of the next receive delta.
    delta: usize,
    arrival: i64,
}

impl Iterator for Packets<'_> {
    type Item = (u16, Option<i64>);

    fn next(&mut self) -> Option<(u16, Option<i64>)> {
        let feedback = &self.feedback;
        if self.reported == feedback.count {
            return None;
        }
        let mut chunk = chunk_at(feedback.chunks, self.chunk)?;
        while self.in_chunk >= chunk_statuses(chunk) {
            self.chunk += 2;
            self.in_chunk = 0;
            chunk = chunk_at(feedback.chunks, self.chunk)?;
        }
        let symbol = chunk_symbol(chunk, self.in_chunk);
        self.in_chunk += 1;
        let sequence = feedback.base.wrapping_add(self.reported);
        self.reported += 1;
        let delta = match symbol {
            SMALL_DELTA => i64::from(*feedback.deltas.get(self.delta)?),
            LARGE_DELTA => {
                let octets = feedback.deltas.get(self.delta..self.delta + 2)?;
                i64::from(i16::from_be_bytes([octets[0], octets[1]]))
            }
            _ => return Some((sequence, None)),
        };
        self.delta += if symbol == SMALL_DELTA { 1 } else { 2 };
        self.arrival += delta * DELTA_UNIT;
        Some((sequence, Some(self.arrival)))
    }
}

fn chunk_at(octets: &[u8], at: usize) -> Option<u16> {
    let chunk = octets.get(at..at + 2)?;
    Some(u16::from_be_bytes([chunk[0], chunk[1]]))
}

/// How many statuses a chunk holds: a run length chunk its run, a status vector chunk 14
/// one-bit symbols or 7 two-bit ones.
fn chunk_statuses(chunk: u16) -> usize {
    match chunk >> 14 {
        0b00 | 0b01 => usize::from(chunk & 0x1FFF),
        0b10 => 14,
        _ => 7,
    }
}

/// The status of a chunk's packet `at`.
fn chunk_symbol(chunk: u16, at: usize) -> u8 {
    match chunk >> 14 {
        0b00 | 0b01 => ((chunk >> 13) & 0b11) as u8,
        0b10 => ((chunk >> (13 - at)) & 1) as u8,
        _ => ((chunk >> (12 - 2 * at)) & 0b11) as u8,
    }
}

#[cfg(test)]
mod tests {
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc, SymbolTypeTcc,
        TransportLayerCc,
    };
    use rtc::shared::marshal::Marshal;

    use super::*;

    fn delta(symbol: SymbolTypeTcc, micros: i64) -> RecvDelta {
        RecvDelta { type_tcc_packet: symbol, delta: micros }
    }

    /// `rtc`'s writing of a feedback packet, as a browser's: the FCI after the media SSRC.
    fn written(feedback: &TransportLayerCc) -> Vec<u8> {
        feedback.marshal().expect("marshalled")[12..].to_vec()
    }

    /// A run of received packets, a two-bit vector (lost, large negative delta, small), a
    /// one-bit vector cut short by the status count: every packet's number and arrival as
    /// the sender would compute them, across a sequence number wrap and from a negative
    /// reference time.
    #[test]
    fn reads_every_chunk_kind_and_both_delta_sizes() {
        use SymbolTypeTcc::{PacketNotReceived as Lost, PacketReceivedLargeDelta as Large, PacketReceivedSmallDelta as Small};
        let feedback = TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 9,
            base_sequence_number: 65_534,
            packet_status_count: 8,
            reference_time: 0xFF_FFFF, // -1: 64 ms before the receiver's epoch
            fb_pkt_count: 3,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: Small,
                    run_length: 2,
                }),
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: vec![Lost, Large, Small, Lost, Lost, Lost, Lost],
                }),
            ],
            recv_deltas: vec![delta(Small, 1_000), delta(Small, 250), delta(Large, -20_000), delta(Small, 63_750)],
        };
        let fci = written(&feedback);
        let parsed = TransportFeedback::parse(9, &fci).expect("parsed");
        assert_eq!(parsed.status_count(), 8);
        let start = -64_000;
        assert_eq!(
            parsed.packets().collect::<Vec<_>>(),
            [
                (65_534, Some(start + 1_000)),
                (65_535, Some(start + 1_250)),
                (0, None),
                (1, Some(start + 1_250 - 20_000)),
                (2, Some(start - 18_750 + 63_750)),
                (3, None),
                (4, None),
                (5, None),
            ]
        );
    }

    /// A feedback whose chunks describe fewer packets than it counts, that lacks a delta, or
    /// that holds the reserved status is refused; none of its prefixes panics.
    #[test]
    fn truncated_or_reserved_feedback_is_refused() {
        let run = |count: u16, chunk: u16, deltas: &[u8]| {
            let mut fci = vec![0, 10, (count >> 8) as u8, count as u8, 0, 0, 1, 0];
            fci.extend_from_slice(&chunk.to_be_bytes());
            fci.extend_from_slice(deltas);
            fci
        };
        // A run length chunk of 3 small deltas.
        let good = run(3, 0x2003, &[4, 4, 4]);
        assert_eq!(TransportFeedback::parse(1, &good).expect("good").packets().count(), 3);
        assert!(TransportFeedback::parse(1, &run(4, 0x2003, &[4, 4, 4, 4])).is_none(), "a fourth packet no chunk describes");
        assert!(TransportFeedback::parse(1, &run(3, 0x2003, &[4, 4])).is_none(), "a delta missing");
        assert!(TransportFeedback::parse(1, &run(3, 0x6003, &[4, 4, 4, 4, 4, 4])).is_none(), "the reserved status");
        // 8,191 lost packets in one chunk are named by their count only.
        assert_eq!(TransportFeedback::parse(1, &run(8_191, 0x1FFF, &[])).expect("lost run").packets().count(), 8_191);
        for end in 0..good.len() {
            if let Some(feedback) = TransportFeedback::parse(1, &good[..end]) {
                let _ = feedback.packets().count();
            }
        }
    }
}
