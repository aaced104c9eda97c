//! What a receiver reports of one incoming stream (RFC 3550 §6.4.2, appendix A.3 and A.8):
//! the extended highest sequence number, packets lost in total and since the last report,
//! the interarrival jitter, and the echo of the sender's last report.

use std::time::Instant;

use rtc::rtcp::reception_report::ReceptionReport;

use crate::munger::seq_is_older;

/// The largest cumulative loss a report can carry (a signed 24-bit field).
const MAX_LOST: i64 = 0x7F_FFFF;

/// Reception statistics of one SSRC.
pub struct Reception {
    ssrc: u32,
    clock_rate: f64,
    /// When arrival times start, for the jitter's RTP-clock arrival times.
    epoch: Instant,
    sequence: Option<Sequence>,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// The interarrival jitter in RTP timestamp units, as RFC 3550 A.8 keeps it.
    jitter: f64,
    last_transit: Option<u32>,
    /// The middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sender_report: Option<(u32, Instant)>,
}

/// Where the sequence numbers stand: the first, and the highest with its wraps.
#[derive(Clone, Copy)]
struct Sequence {
    base: u32,
    cycles: u32,
    highest: u16,
}

impl Sequence {
    fn extended_highest(self) -> u32 {
        self.cycles | u32::from(self.highest)
    }
}

impl Reception {
    /// Statistics of `ssrc`, whose timestamps run at `clock_rate`, starting at `now`.
    pub fn new(ssrc: u32, clock_rate: u32, now: Instant) -> Self {
        Self {
            ssrc,
            clock_rate: f64::from(clock_rate.max(1)),
            epoch: now,
            sequence: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            last_sender_report: None,
        }
    }

    /// Counts a packet that arrived at `now`.
    pub fn received(&mut self, now: Instant, sequence_number: u16, timestamp: u32) {
        self.received = self.received.wrapping_add(1);
        let Some(sequence) = &mut self.sequence else {
            let base = u32::from(sequence_number);
            self.sequence = Some(Sequence { base, cycles: 0, highest: sequence_number });
            self.last_transit = Some(self.transit(now, timestamp));
            return;
        };
        if !seq_is_older(sequence.highest, sequence_number) {
            return; // late or repeated: counted, but neither the highest nor the jitter move
        }
        if sequence_number < sequence.highest {
            sequence.cycles = sequence.cycles.wrapping_add(1 << 16);
        }
        sequence.highest = sequence_number;
        let transit = self.transit(now, timestamp);
        if let Some(last) = self.last_transit.replace(transit) {
            let difference = f64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter += (difference - self.jitter) / 16.0;
        }
    }

    /// The relative transit time of a packet (arrival less send time, in RTP units).
    fn transit(&self, now: Instant, timestamp: u32) -> u32 {
        let arrival = now.saturating_duration_since(self.epoch).as_secs_f64() * self.clock_rate;
        (arrival as u64 as u32).wrapping_sub(timestamp)
    }

    /// Notes the sender report whose NTP time's middle 32 bits are `ntp_middle`, arrived at `now`.
    pub fn sender_report(&mut self, now: Instant, ntp_middle: u32) {
        self.last_sender_report = Some((ntp_middle, now));
    }

    /// The report block at `now`, once a packet has arrived; starts the next interval.
    pub fn report(&mut self, now: Instant) -> Option<ReceptionReport> {
        let sequence = self.sequence?;
        let highest = sequence.extended_highest();
        let expected = highest.wrapping_sub(sequence.base).wrapping_add(1);
        let lost = (i64::from(expected) - i64::from(self.received)).clamp(-MAX_LOST - 1, MAX_LOST);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sender_report, delay) = match self.last_sender_report {
            Some((ntp_middle, at)) => (ntp_middle, (now.saturating_duration_since(at).as_secs_f64() * 65_536.0) as u32),
            None => (0, 0),
        };
        Some(ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost,
            total_lost: (lost as i32 as u32) & 0xFF_FFFF,
            last_sequence_number: highest,
            jitter: self.jitter as u32,
            last_sender_report,
            delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_losses_across_a_wrap_and_per_interval() {
        let start = Instant::now();
        let mut reception = Reception::new(7, 90_000, start);
        assert!(reception.report(start).is_none(), "nothing before the first packet");
        // 65_530 ..= 65_535, then 0 ..= 9 with 2 and 3 lost: 14 of 16 arrive.
        for (i, sequence) in (65_530u16..=65_535).chain((0..10).filter(|s| *s != 2 && *s != 3)).enumerate() {
            reception.received(start + Duration::from_millis(i as u64 * 33), sequence, i as u32 * 2_970);
        }
        let report = reception.report(start + Duration::from_secs(1)).expect("a report");
        assert_eq!(report.last_sequence_number, (1 << 16) | 9);
        assert_eq!(report.total_lost, 2);
        assert_eq!(report.fraction_lost, (2 * 256 / 16) as u8);
        // The late packet 2 arrives: one lost in total, and the next interval got more than
        // it expected, so no fraction lost.
        reception.received(start + Duration::from_millis(1_100), 2, 4 * 2_970);
        let report = reception.report(start + Duration::from_secs(2)).expect("a report");
        assert_eq!((report.total_lost, report.fraction_lost), (1, 0));
    }

    #[test]
    fn packets_sent_and_arriving_evenly_show_no_jitter_and_the_sender_report_is_echoed() {
        let start = Instant::now();
        let mut reception = Reception::new(7, 90_000, start);
        for i in 0..50u32 {
            reception.received(start + Duration::from_millis(u64::from(i) * 20), i as u16, 1_000 + i * 1_800);
        }
        reception.sender_report(start + Duration::from_millis(500), 0x1234_5678);
        let report = reception.report(start + Duration::from_millis(1_500)).expect("a report");
        assert!(report.jitter <= 1, "jitter {}", report.jitter);
        assert_eq!(report.last_sender_report, 0x1234_5678);
        assert_eq!(report.delay, 65_536, "held one second");
    }

    #[test]
    fn uneven_arrivals_show_as_jitter() {
        let start = Instant::now();
        let mut reception = Reception::new(7, 90_000, start);
        for i in 0..100u32 {
            let wobble = if i % 2 == 0 { 0 } else { 10 };
            reception.received(start + Duration::from_millis(u64::from(i) * 20 + wobble), i as u16, i * 1_800);
        }
        let report = reception.report(start + Duration::from_secs(3)).expect("a report");
        // 10 ms every packet at 90 kHz: the estimate converges on 900 units.
        assert!((800..=1_000).contains(&report.jitter), "jitter {}", report.jitter);
    }
}
