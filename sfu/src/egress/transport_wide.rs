//! Transport-wide congestion control on a subscriber connection (draft-holmer-rmcat-
//! transport-wide-cc-extensions-01): every packet the egress sends carries a sequence number
//! of the connection's own, the subscriber reports when each arrived, and a delay- and
//! loss-based estimator ([`RateControl`]) turns those reports into the bitrate the
//! subscriber's downlink carries.
//!
//! What was sent is kept in a ring of [`SENT_HISTORY`] packets, indexed by sequence number:
//! a report about a packet the ring no longer holds (too old, or never sent) is ignored, as
//! is a report that would name more packets than the ring holds.

use std::time::{Duration, Instant};

use rtc::interceptor::PacketReport;
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

use super::probe::Prober;
use super::rate_control::RateControl;
use crate::feedback::TransportFeedback;

/// Packets whose departure is remembered: at 2,000 packets a second (a subscriber of a
/// dozen video tracks), a second of them; feedback comes every 50 to 100 ms.
pub const SENT_HISTORY: usize = 2048;

/// The estimate before any feedback, in bits per second. It starts as wide as a desktop's
/// downlink usually is, so a subscriber starts on the layers it will keep, and comes down
/// within a second or two where the link is narrower.
const INITIAL_ESTIMATE: f64 = 2_500_000.0;

/// What is added to the receiver's arrival times, which may be negative (a signed 24-bit
/// reference time of 64 ms units), to make them durations: the least reference time.
const ARRIVAL_OFFSET_MICROS: i64 = (1 << 23) * 64_000;

/// One packet sent.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// Its sequence number, counted on past 16 bits (0: the slot is empty).
    number: u64,
    /// When it left, since the connection's first packet.
    departure: Duration,
    /// Its size on the wire, in bytes.
    size: u16,
    /// The probe cluster it was sent in (0: none).
    cluster: u16,
    /// Whether it was a probe's padding.
    padding: bool,
}

/// The transport-wide sequence numbers and bandwidth estimate of one subscriber connection.
pub struct TransportWide {
    extension_id: u8,
    /// The next sequence number, counted on past 16 bits, from 1.
    next: u64,
    epoch: Instant,
    sent: Box<[Sent]>,
    estimator: RateControl,
    prober: Prober,
    /// Reports built from one feedback packet, kept to save an allocation per feedback.
    reports: Vec<PacketReport>,
}

impl TransportWide {
    /// Numbers the packets in header extension `extension_id` from `now` on.
    pub fn new(extension_id: u8, now: Instant) -> Self {
        Self {
            extension_id,
            next: 1,
            epoch: now,
            sent: vec![Sent::default(); SENT_HISTORY].into_boxed_slice(),
            estimator: RateControl::new(INITIAL_ESTIMATE),
            prober: Prober::default(),
            reports: Vec::new(),
        }
    }

    /// The header extension the sequence numbers go in.
    pub fn extension_id(&self) -> u8 {
        self.extension_id
    }

    /// The sequence number of a packet of `size` bytes leaving at `now`, a probe's padding if
    /// `padding`.
    pub fn stamp(&mut self, now: Instant, size: usize, padding: bool) -> u16 {
        let number = self.next;
        self.next += 1;
        self.sent[number as usize % SENT_HISTORY] = Sent {
            number,
            departure: now.saturating_duration_since(self.epoch),
            size: size.min(usize::from(u16::MAX)) as u16,
            cluster: self.prober.tag(),
            padding,
        };
        number as u16
    }

    /// Takes the share of its packets the subscriber lost, as its receiver reports say.
    pub fn on_receiver_loss(&mut self, now: Instant, fraction: f64) {
        self.estimator.on_loss(now, fraction);
    }

    /// When the next padding packet of a probe is due.
    pub fn padding_deadline(&self) -> Option<Instant> {
        self.prober.deadline()
    }

    /// The probing of the subscriber's downlink.
    pub fn prober(&mut self) -> &mut Prober {
        &mut self.prober
    }

    /// Starts probing for `desired` bits per second if the estimate is under it (and no
    /// probe is on or held back); returns whether a cluster started.
    pub fn probe_toward(&mut self, now: Instant, desired: f64) -> bool {
        self.prober.want(now, desired, self.estimator.target())
    }

    /// Takes the subscriber's report of which packets arrived when, and moves the estimate.
    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportFeedback) {
        if usize::from(feedback.status_count()) > SENT_HISTORY {
            return;
        }
        self.reports.clear();
        let (mut media, mut media_lost) = (0, 0);
        for (sequence, arrival) in feedback.packets() {
            let Some(sent) = self.find(sequence) else { continue };
            if !sent.padding {
                media += 1;
                media_lost += usize::from(arrival.is_none());
            }
            let arrival = arrival.map(|micros| Duration::from_micros((micros + ARRIVAL_OFFSET_MICROS).max(0) as u64));
            if sent.cluster != 0 {
                self.prober.on_report(sent.cluster, self.epoch + sent.departure, usize::from(sent.size), arrival);
            }
            self.reports.push(PacketReport {
                ssrc: 0,
                id: sent.number,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: sequence,
                size: usize::from(sent.size),
                arrived: arrival.is_some(),
                departure: self.epoch + sent.departure,
                arrival,
                ecn: Ecn::default(),
            });
        }
        self.estimator.on_reports(now, &self.reports, media, media_lost);
        if let Some(rate) = self.prober.take_result(now) {
            tracing::debug!(rate, estimate = self.estimator.target(), "downlink probed");
            self.estimator.on_probe(rate);
        }
    }

    /// The bitrate the subscriber's link carries, as last estimated, in bits per second.
    pub fn estimate(&self) -> f64 {
        self.estimator.target()
    }

    /// The packet sent with the 16-bit sequence number `sequence`, if the ring still holds it.
    fn find(&self, sequence: u16) -> Option<Sent> {
        let last = self.next.checked_sub(1).filter(|&n| n > 0)?;
        // The number nearest the last sent whose low 16 bits are `sequence`.
        let behind = u64::from((last as u16).wrapping_sub(sequence));
        let number = last.checked_sub(behind).filter(|&n| n > 0)?;
        let sent = self.sent[number as usize % SENT_HISTORY];
        (sent.number == number).then_some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc, TransportLayerCc, TYPE_TCC_DELTA_SCALE_FACTOR,
    };
    use rtc::shared::marshal::Marshal;

    /// Gives `tw` the feedback as the subscriber would send it, read as the engine reads it.
    fn feed(tw: &mut TransportWide, now: Instant, feedback: &TransportLayerCc) {
        let written = feedback.marshal().expect("marshalled");
        tw.on_feedback(now, &TransportFeedback::parse(feedback.media_ssrc, &written[12..]).expect("parsed"));
    }

    /// Feedback on `count` packets from `base`, each arrived `spacing` after the one before
    /// (or all lost).
    fn feedback(base: u16, count: u16, spacing: Duration, arrived: bool) -> TransportLayerCc {
        let symbol = if arrived { SymbolTypeTcc::PacketReceivedSmallDelta } else { SymbolTypeTcc::PacketNotReceived };
        let delta = spacing.as_micros() as i64;
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: base,
            packet_status_count: count,
            reference_time: 0,
            fb_pkt_count: 0,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: symbol,
                run_length: count,
            })],
            recv_deltas: if arrived {
                (0..count)
                    .map(|_| RecvDelta {
                        type_tcc_packet: symbol,
                        delta: delta / TYPE_TCC_DELTA_SCALE_FACTOR * TYPE_TCC_DELTA_SCALE_FACTOR,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Sends `seconds` of 1,200-byte packets at `rate` bits per second into a link of
    /// `capacity` bits per second (each queues behind the ones before), with feedback every
    /// 50 ms on the packets that have arrived by then; returns the estimate at the end.
    fn run(tw: &mut TransportWide, start: Instant, seconds: u64, rate: f64, capacity: f64) -> f64 {
        let interval = Duration::from_secs_f64(1200.0 * 8.0 / rate);
        let transfer = Duration::from_secs_f64(1200.0 * 8.0 / capacity);
        let (mut now, end) = (start, start + Duration::from_secs(seconds));
        let mut link_free = start;
        let mut in_flight: std::collections::VecDeque<(u16, Instant)> = Default::default();
        let mut next_feedback = start + Duration::from_millis(50);
        while now < end {
            let sequence = tw.stamp(now, 1200, false);
            link_free = link_free.max(now) + transfer;
            in_flight.push_back((sequence, link_free));
            now += interval;
            if now < next_feedback {
                continue;
            }
            next_feedback += Duration::from_millis(50);
            let arrived: Vec<(u16, Instant)> = std::iter::from_fn(|| in_flight.pop_front_if(|(_, at)| *at <= now)).collect();
            let Some(&(base, first_arrival)) = arrived.first() else { continue };
            let mut fb = feedback(base, arrived.len() as u16, Duration::ZERO, true);
            // Arrivals count from a reference time in 64 ms ticks, then delta by delta.
            let ticks = first_arrival.duration_since(start).as_millis() / 64;
            fb.reference_time = ticks as u32;
            let mut previous = start + Duration::from_millis(ticks as u64 * 64);
            for (delta, (_, arrival)) in fb.recv_deltas.iter_mut().zip(&arrived) {
                let micros = arrival.saturating_duration_since(previous).as_micros() as i64;
                delta.delta = micros / TYPE_TCC_DELTA_SCALE_FACTOR * TYPE_TCC_DELTA_SCALE_FACTOR;
                previous = *arrival;
            }
            feed(tw, now, &fb);
        }
        tw.estimate()
    }

    #[test]
    fn sequence_numbers_wrap_and_reports_find_what_was_sent() {
        let start = Instant::now();
        let mut tw = TransportWide::new(3, start);
        for _ in 0..70_000u32 {
            tw.stamp(start, 100, false);
        }
        let last = (70_000u32 % 65_536) as u16;
        assert_eq!(tw.find(last).map(|s| s.number), Some(70_000));
        assert_eq!(tw.find(last.wrapping_sub(2047)).map(|s| s.number), Some(70_000 - 2047));
        assert!(tw.find(last.wrapping_sub(2048)).is_none(), "out of the ring");
        assert!(tw.find(last.wrapping_add(1)).is_none(), "never sent");
        assert!(TransportWide::new(3, start).find(0).is_none());
    }

    #[test]
    fn the_estimate_settles_below_a_link_sent_past_its_capacity_and_holds_on_one_that_carries_it() {
        let start = Instant::now();
        let mut steady = TransportWide::new(3, start);
        let carried = run(&mut steady, start, 10, 800_000.0, 5_000_000.0);
        assert!(carried >= 700_000.0, "a link that carries 800 kbit/s keeps the estimate: {carried}");
        let mut congested = TransportWide::new(3, start);
        let squeezed = run(&mut congested, start, 10, 1_500_000.0, 300_000.0);
        assert!(squeezed < 450_000.0, "1.5 Mbit/s into a 300 kbit/s link: {squeezed}");
    }

    #[test]
    fn a_report_on_more_packets_than_the_ring_holds_is_ignored_and_receiver_loss_lowers_the_estimate() {
        let start = Instant::now();
        let mut tw = TransportWide::new(3, start);
        for _ in 0..100 {
            tw.stamp(start, 1200, false);
        }
        let kept = tw.estimate();
        feed(&mut tw, start + Duration::from_millis(100), &feedback(1, 8191, Duration::ZERO, false));
        assert_eq!(tw.estimate(), kept);
        tw.on_receiver_loss(start + Duration::from_secs(1), 0.5);
        assert!(tw.estimate() < kept * 0.8, "half lost: {} from {kept}", tw.estimate());
    }
}
