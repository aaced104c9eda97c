//! RTCP sender reports (RFC 3550 §6.4.1) of the streams a subscriber connection sends.
//!
//! A report maps the sender's wall clock to the stream's RTP clock, which the receiver uses
//! to line up audio and video, and counts what was sent. The mapping is taken from the last
//! packet sent in sequence order, extrapolated to the report's time at the stream's clock
//! rate, as the engine's report interceptor does.

use std::time::{Instant, SystemTime};

use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::packet::Packet;

use crate::munger::seq_is_older;
use crate::round_trip::ntp_time;

/// What has been sent on one SSRC.
pub struct SentStream {
    pub ssrc: u32,
    clock_rate: f64,
    /// The RTP timestamp and send time of the newest packet in sequence order.
    last: Option<(u16, u32, Instant)>,
    packets: u32,
    octets: u32,
}

impl SentStream {
    pub fn new(ssrc: u32, clock_rate: u32) -> Self {
        Self { ssrc, clock_rate: f64::from(clock_rate), last: None, packets: 0, octets: 0 }
    }

    /// Extrapolates reports at `clock_rate` from now on.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = f64::from(clock_rate);
    }

    /// Counts a packet sent at `now`.
    pub fn sent(&mut self, now: Instant, packet: &Packet) {
        let header = &packet.header;
        if self.last.is_none_or(|(sequence, _, _)| seq_is_older(sequence, header.sequence_number)) {
            // The time of a frame's first packet: its later packets share its timestamp.
            let since = match self.last {
                Some((_, timestamp, at)) if timestamp == header.timestamp => at,
                _ => now,
            };
            self.last = Some((header.sequence_number, header.timestamp, since));
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(packet.payload.len() as u32);
    }

    /// The report at `now` (`wall_clock` being the same moment), once a packet has been sent.
    pub fn report(&self, now: Instant, wall_clock: SystemTime) -> Option<SenderReport> {
        let (_, timestamp, at) = self.last?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64() * self.clock_rate;
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_time(wall_clock),
            rtp_time: timestamp.wrapping_add(elapsed as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rtc::rtp::header::Header;

    use super::*;

    fn packet(sequence_number: u16, timestamp: u32, payload: usize) -> Packet {
        Packet { header: Header { sequence_number, timestamp, ssrc: 7, ..Default::default() }, payload: vec![0; payload].into() }
    }

    #[test]
    fn nothing_is_reported_before_a_packet_is_sent() {
        assert!(SentStream::new(7, 90_000).report(Instant::now(), SystemTime::now()).is_none());
    }

    #[test]
    fn a_report_extrapolates_the_first_packet_of_the_newest_frame_and_counts_every_packet() {
        let start = Instant::now();
        let mut stream = SentStream::new(7, 90_000);
        stream.sent(start, &packet(10, 1_000, 100));
        stream.sent(start + Duration::from_millis(5), &packet(11, 1_000, 100));
        let frame = start + Duration::from_millis(33);
        stream.sent(frame, &packet(12, 4_000, 50));
        stream.sent(frame + Duration::from_millis(3), &packet(13, 4_000, 50));
        // A retransmission of an older packet moves neither the mapping nor the newest packet.
        stream.sent(frame + Duration::from_millis(8), &packet(11, 1_000, 100));
        let wall_clock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let report = stream.report(frame + Duration::from_millis(100), wall_clock).expect("a report");
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.rtp_time, 4_000 + 9_000, "100 ms after the frame's first packet at 90 kHz");
        assert_eq!(report.ntp_time, ntp_time(wall_clock));
        assert_eq!((report.packet_count, report.octet_count), (5, 400));
    }
}
