//! A subscriber's RTCP, read where it lies: the feedback the server acts on (receiver
//! reports, NACKs, keyframe requests, transport-wide feedback) as views of the opened
//! compound packet's octets, with nothing allocated.
//!
//! Every browser that receives video sends transport-wide feedback every 50 to 100 ms; through
//! `rtc`'s RTCP read path (an SRTCP context, the interceptor chain, a boxed packet each, and a
//! conversion that allocates) that cost a quarter of a livestream's forwarding. The egress
//! opens a subscriber's SRTCP itself and the engine reads it here.

pub mod transport_cc;

pub use transport_cc::TransportFeedback;

/// RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1).
const RECEIVER_REPORT: u8 = 201;
const TRANSPORT_LAYER_FEEDBACK: u8 = 205;
const PAYLOAD_SPECIFIC_FEEDBACK: u8 = 206;
/// Feedback message types: of transport-layer feedback (RFC 4585 §6.2,
/// draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1), then of payload-specific
/// feedback (RFC 4585 §6.3, RFC 5104 §4.3.1).
const GENERIC_NACK: u8 = 1;
const TRANSPORT_CC: u8 = 15;
const PICTURE_LOSS: u8 = 1;
const FULL_INTRA_REQUEST: u8 = 4;
/// The common header and sender SSRC every packet read here starts with.
const HEADER_LEN: usize = 8;
/// A feedback packet's common part: the header, the sender and the media SSRC.
const FEEDBACK_HEADER_LEN: usize = 12;
const REPORT_BLOCK_LEN: usize = 24;
const NACK_ENTRY_LEN: usize = 4;
const FIR_ENTRY_LEN: usize = 8;

/// Whether `datagram` is RTCP rather than RTP (RFC 5761 §4: the packet types 192 to 223 are
/// RTCP's, payload types 64 to 95 with the marker bit set, which no one negotiates).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

/// One piece of a subscriber's feedback.
#[derive(Debug, Clone, Copy)]
pub enum Feedback<'a> {
    /// The reception report blocks of a receiver report.
    Reports(ReportBlocks<'a>),
    /// The packets of stream `media_ssrc` the subscriber lost.
    Nack { media_ssrc: u32, lost: LostPackets<'a> },
    /// A picture loss indication or full intra request: stream `media_ssrc` needs a keyframe.
    KeyframeRequest { media_ssrc: u32 },
    /// When each of the connection's packets arrived.
    TransportWide(TransportFeedback<'a>),
}

/// Reads the feedback in a compound RTCP packet, in order. Packets of other types (source
/// descriptions, sender reports, REMB) are passed over; reading stops at the first packet
/// whose header is malformed or whose length overruns the compound packet, and a packet
/// too short for what its type carries is passed over.
pub fn read(compound: &[u8]) -> Feedbacks<'_> {
    Feedbacks { rest: compound, intra_requests: &[] }
}

/// The feedback of a compound packet: see [`read`].
pub struct Feedbacks<'a> {
    rest: &'a [u8],
    /// The entries of a full intra request not yet read.
    intra_requests: &'a [u8],
}

impl<'a> Iterator for Feedbacks<'a> {
    type Item = Feedback<'a>;

    fn next(&mut self) -> Option<Feedback<'a>> {
        loop {
            if let Some((entry, rest)) = self.intra_requests.split_first_chunk::<FIR_ENTRY_LEN>() {
                self.intra_requests = rest;
                return Some(Feedback::KeyframeRequest { media_ssrc: be32(&entry[..4]) });
            }
            let packet = self.next_packet()?;
            let (count, packet_type) = (packet[0] & 0x1F, packet[1]);
            match (packet_type, count) {
                (RECEIVER_REPORT, _) => {
                    if let Some(blocks) = packet[HEADER_LEN..].get(..usize::from(count) * REPORT_BLOCK_LEN) {
                        return Some(Feedback::Reports(ReportBlocks { blocks }));
                    }
                }
                (TRANSPORT_LAYER_FEEDBACK, GENERIC_NACK) if packet.len() >= FEEDBACK_HEADER_LEN => {
                    let entries = &packet[FEEDBACK_HEADER_LEN..];
                    let entries = &entries[..entries.len() / NACK_ENTRY_LEN * NACK_ENTRY_LEN];
                    return Some(Feedback::Nack { media_ssrc: be32(&packet[8..12]), lost: LostPackets { entries, bit: 0 } });
                }
                (TRANSPORT_LAYER_FEEDBACK, TRANSPORT_CC) if packet.len() >= FEEDBACK_HEADER_LEN => {
                    if let Some(feedback) = TransportFeedback::parse(be32(&packet[8..12]), &packet[FEEDBACK_HEADER_LEN..]) {
                        return Some(Feedback::TransportWide(feedback));
                    }
                }
                (PAYLOAD_SPECIFIC_FEEDBACK, PICTURE_LOSS) if packet.len() >= FEEDBACK_HEADER_LEN => {
                    return Some(Feedback::KeyframeRequest { media_ssrc: be32(&packet[8..12]) });
                }
                (PAYLOAD_SPECIFIC_FEEDBACK, FULL_INTRA_REQUEST) if packet.len() >= FEEDBACK_HEADER_LEN => {
                    // The media SSRC is unused: each entry names a stream.
                    self.intra_requests = &packet[FEEDBACK_HEADER_LEN..];
                }
                _ => {}
            }
        }
    }
}

impl<'a> Feedbacks<'a> {
    /// The next packet of the compound packet, with its padding, if its header is sound.
    fn next_packet(&mut self) -> Option<&'a [u8]> {
        let header = self.rest.get(..4)?;
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        if header[0] >> 6 != 2 || len < HEADER_LEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let (packet, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(packet)
    }
}

/// The reception report blocks of a receiver report (RFC 3550 §6.4.2).
#[derive(Debug, Clone, Copy)]
pub struct ReportBlocks<'a> {
    blocks: &'a [u8],
}

/// One reception report block: what the round trip is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The stream reported on.
    pub ssrc: u32,
    /// The share of its packets lost since the previous report, in 256ths.
    pub fraction_lost: u8,
    /// The middle 32 bits of the NTP time of the last sender report received on it.
    pub last_sender_report: u32,
    /// Since that report was received, in 1/65536 seconds.
    pub delay: u32,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let (block, rest) = self.blocks.split_first_chunk::<REPORT_BLOCK_LEN>()?;
        self.blocks = rest;
        Some(ReportBlock {
            ssrc: be32(&block[..4]),
            fraction_lost: block[4],
            last_sender_report: be32(&block[16..20]),
            delay: be32(&block[20..24]),
        })
    }
}

/// The sequence numbers a generic NACK names (RFC 4585 §6.2.1): each entry's packet ID and
/// those its bitmask of the following 16 marks.
#[derive(Debug, Clone, Copy)]
pub struct LostPackets<'a> {
    entries: &'a [u8],
    /// The next of the first entry's 17 packets to look at (0: its packet ID).
    bit: u8,
}

impl Iterator for LostPackets<'_> {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        loop {
            let entry = self.entries.first_chunk::<NACK_ENTRY_LEN>()?;
            let (packet_id, mask) = (u16::from_be_bytes([entry[0], entry[1]]), u16::from_be_bytes([entry[2], entry[3]]));
            let bit = self.bit;
            if bit == 16 {
                self.entries = &self.entries[NACK_ENTRY_LEN..];
                self.bit = 0;
            } else {
                self.bit += 1;
            }
            if bit == 0 {
                return Some(packet_id);
            }
            if mask & (1 << (bit - 1)) != 0 {
                return Some(packet_id.wrapping_add(u16::from(bit)));
            }
        }
    }
}

fn be32(octets: &[u8]) -> u32 {
    u32::from_be_bytes([octets[0], octets[1], octets[2], octets[3]])
}

#[cfg(test)]
mod tests {
    use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::source_description::{SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::rtcp::Packet;

    use super::*;

    fn compound(packets: Vec<Box<dyn Packet>>) -> Vec<u8> {
        rtc::rtcp::packet::marshal(&packets).expect("marshalled").to_vec()
    }

    fn report(ssrc: u32, last_sender_report: u32, delay: u32) -> ReceptionReport {
        ReceptionReport { ssrc, last_sender_report, delay, fraction_lost: 3, total_lost: 7, ..Default::default() }
    }

    /// What browsers send, as `rtc` writes it: a receiver report of two blocks, a source
    /// description, a NACK, a PLI and a FIR of two entries, read in order.
    #[test]
    fn reads_reports_nacks_and_keyframe_requests_in_order_past_what_it_does_not_use() {
        let bytes = compound(vec![
            Box::new(ReceiverReport { ssrc: 1, reports: vec![report(10, 0xAABB_CCDD, 65_536), report(11, 5, 6)], ..Default::default() }),
            Box::new(SourceDescription {
                chunks: vec![SourceDescriptionChunk {
                    source: 1,
                    items: vec![SourceDescriptionItem { sdes_type: SdesType::SdesCname, text: "cname".into() }],
                }],
            }),
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: 10,
                nacks: vec![
                    NackPair { packet_id: 65_534, lost_packets: 0b1000_0000_0000_0101 },
                    NackPair { packet_id: 40, lost_packets: 0 },
                ],
            }),
            Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc: 11 }),
            Box::new(FullIntraRequest {
                sender_ssrc: 1,
                media_ssrc: 0,
                fir: vec![FirEntry { ssrc: 12, sequence_number: 1 }, FirEntry { ssrc: 13, sequence_number: 1 }],
            }),
        ]);
        let mut feedback = read(&bytes);
        let Some(Feedback::Reports(blocks)) = feedback.next() else { panic!("the receiver report first") };
        assert_eq!(
            blocks.collect::<Vec<_>>(),
            [
                ReportBlock { ssrc: 10, fraction_lost: 3, last_sender_report: 0xAABB_CCDD, delay: 65_536 },
                ReportBlock { ssrc: 11, fraction_lost: 3, last_sender_report: 5, delay: 6 }
            ]
        );
        let Some(Feedback::Nack { media_ssrc: 10, lost }) = feedback.next() else { panic!("then the NACK, past the SDES") };
        assert_eq!(lost.collect::<Vec<_>>(), [65_534, 65_535, 1, 14, 40], "bits 0, 2 and 15 past 65 534, wrapping");
        assert!(matches!(feedback.next(), Some(Feedback::KeyframeRequest { media_ssrc: 11 })));
        assert!(matches!(feedback.next(), Some(Feedback::KeyframeRequest { media_ssrc: 12 })));
        assert!(matches!(feedback.next(), Some(Feedback::KeyframeRequest { media_ssrc: 13 })));
        assert!(feedback.next().is_none());
    }

    /// A length past the end, a wrong version or a length under a header stops the reading
    /// (what came before stands); a receiver report whose count overruns it and feedback too
    /// short for its SSRCs are passed over; nothing panics on any prefix.
    #[test]
    fn malformed_packets_end_the_reading_and_short_ones_are_passed_over() {
        let pli = compound(vec![Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc: 11 })]);
        let rr = compound(vec![Box::new(ReceiverReport { ssrc: 1, reports: vec![report(10, 1, 2)], ..Default::default() })]);
        let count = |bytes: &[u8]| read(bytes).count();
        assert_eq!(count(&[pli.clone(), rr.clone()].concat()), 2);
        let mut overlong = pli.clone();
        overlong[3] += 1;
        assert_eq!(count(&[rr.clone(), overlong].concat()), 1, "the PLI's length runs past the end");
        let mut version_one = pli.clone();
        version_one[0] = 0x41;
        assert_eq!(count(&[version_one, rr.clone()].concat()), 0);
        let mut counted_over = rr.clone();
        counted_over[0] = 0x82;
        assert_eq!(count(&[counted_over, pli.clone()].concat()), 1, "two blocks counted, one there: only the PLI");
        let short_pli = [0x81, 206, 0, 1, 0, 0, 0, 1];
        assert_eq!(count(&[&short_pli[..], &pli].concat()), 1);
        let all = [rr, pli].concat();
        for end in 0..all.len() {
            let _ = read(&all[..end]).count();
        }
        assert!(is_rtcp(&all) && !is_rtcp(&all[..7]));
        assert!(!is_rtcp(&[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), "RTP");
    }
}
