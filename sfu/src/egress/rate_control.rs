//! The bitrate a subscriber's downlink carries, from its transport-wide feedback: a
//! delay-based AIMD in the shape of libwebrtc's, whose increases are capped by what the link
//! was seen to deliver, cut by heavy loss, and raised by probes.
//!
//! The delay signal (arrival groups, the Kalman-filtered delay gradient, the overuse
//! detector with its adaptive threshold) is `rtc`'s. What is ours is what the target does
//! with it, because an estimate that only grows by a factor per second drifts past a link it
//! does not fill: a subscriber receiving one 150 kbit/s layer would, after a minute of quiet,
//! "carry" megabits it never sent. Here an increase goes at most to
//! [`CAP_FACTOR`] times the acknowledged rate (plus [`CAP_HEADROOM`]), as libwebrtc's does, so
//! only a probe ([`RateControl::on_probe`], [`super::probe`]) shows room beyond what the media
//! fills.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{OveruseDetector, PacketReport, SlopeEstimator, Usage};

/// The estimate's bounds, in bits per second.
pub const MIN_RATE: f64 = 30_000.0;
pub const MAX_RATE: f64 = 100_000_000.0;
/// What a decrease leaves of the acknowledged rate.
const DECREASE_FACTOR: f64 = 0.85;
/// Decreases are at least this far apart, so each is seen in the feedback before the next.
const DECREASE_INTERVAL: Duration = Duration::from_millis(200);
/// Growth per second while the link's capacity is unknown.
const INCREASE_PER_SECOND: f64 = 1.08;
/// Growth per second near the capacity the last decrease found: about one packet per round
/// trip.
const ADDITIVE_PER_SECOND: f64 = 50_000.0;
/// An increase goes no higher than this times the acknowledged rate, plus the headroom.
const CAP_FACTOR: f64 = 1.5;
const CAP_HEADROOM: f64 = 10_000.0;
/// Loss above this fraction cuts the estimate by half the fraction; below the low one the
/// estimate may grow; between the two it holds (a few per cent is normal on a wireless link).
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;
/// The longest step an increase is computed over (feedback may pause).
const MAX_INCREASE_STEP: Duration = Duration::from_secs(1);

/// A subscriber connection's downlink estimate.
pub struct RateControl {
    slope: SlopeEstimator,
    detector: OveruseDetector,
    acknowledged: Throughput,
    target: f64,
    /// The acknowledged rate at the last delay-based decrease: near it, the estimate grows
    /// additively. Forgotten once the estimate is well past it.
    capacity: Option<f64>,
    /// The share of its media packets the transport-wide feedback says were lost, smoothed.
    feedback_loss: f64,
    /// The share of its packets the subscriber lost, as its last receiver report said.
    reported_loss: Option<f64>,
    last_update: Option<Instant>,
    last_decrease: Option<Instant>,
}

impl RateControl {
    /// An estimate starting at `initial` bits per second.
    pub fn new(initial: f64) -> Self {
        Self {
            slope: SlopeEstimator::new(),
            detector: OveruseDetector::new(),
            acknowledged: Throughput::default(),
            target: initial.clamp(MIN_RATE, MAX_RATE),
            capacity: None,
            feedback_loss: 0.0,
            reported_loss: None,
            last_update: None,
            last_decrease: None,
        }
    }

    /// The estimate, in bits per second.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// Takes one feedback packet's reports (the packets it names that were sent, in order),
    /// of which `media` were media (not a probe's padding, which is lost when it overflows a
    /// queue on purpose), `media_lost` of them lost.
    pub fn on_reports(&mut self, now: Instant, reports: &[PacketReport], media: usize, media_lost: usize) {
        if reports.is_empty() {
            return;
        }
        let mut usage = self.detector.usage();
        for report in reports {
            if let Some(arrival) = report.arrival.filter(|_| report.arrived) {
                self.acknowledged.add(arrival, report.size);
            }
            if let Some(trend) = self.slope.accumulate(report) {
                usage = self.detector.update(trend.at, trend.estimate_ms);
            }
        }
        let acknowledged = self.acknowledged.rate();
        let step = self.last_update.map_or(Duration::ZERO, |last| now.saturating_duration_since(last).min(MAX_INCREASE_STEP));
        self.last_update = Some(now);
        if media > 0 {
            let sample = media_lost as f64 / media as f64;
            self.feedback_loss = 0.8 * self.feedback_loss + 0.2 * sample;
        }
        let loss = self.loss();
        if usage == Usage::Over {
            let delivered = acknowledged.unwrap_or(self.target);
            self.decrease(now, DECREASE_FACTOR * delivered, Some(delivered));
        } else if loss > HIGH_LOSS {
            self.cut_for_loss(now, loss);
        } else if usage == Usage::Normal && loss < LOW_LOSS {
            self.increase(step, acknowledged);
        }
    }

    /// Takes the share of its packets the subscriber lost since its previous receiver report
    /// (every second or so).
    pub fn on_loss(&mut self, now: Instant, fraction: f64) {
        self.reported_loss = Some(fraction);
        let loss = self.loss();
        if loss > HIGH_LOSS {
            self.cut_for_loss(now, loss);
        }
    }

    /// Cuts the estimate by half the `loss`, but not below [`DECREASE_FACTOR`] of what the
    /// subscriber acknowledged receiving: what arrives, the link carried.
    fn cut_for_loss(&mut self, now: Instant, loss: f64) {
        let floor = self.acknowledged.rate().map_or(0.0, |rate| DECREASE_FACTOR * rate);
        self.decrease(now, (self.target * (1.0 - 0.5 * loss)).max(floor), None);
    }

    /// The loss acted on: the more of what the transport-wide feedback shows (fresh every 50
    /// to 100 ms) and what the last receiver report said, once that report confirmed some
    /// loss; until then no more than the reports say. Chromium's feedback reports most of
    /// the packets it got as lost for the first seconds of a connection, while its receiver
    /// reports count none lost.
    fn loss(&self) -> f64 {
        match self.reported_loss {
            Some(reported) if reported >= LOW_LOSS => self.feedback_loss.max(reported),
            reported => self.feedback_loss.min(reported.unwrap_or(0.0)),
        }
    }

    /// Takes a probe's result: the link carried `rate` bits per second. Raises the estimate
    /// to it unless the link is congested now.
    pub fn on_probe(&mut self, rate: f64) {
        if self.detector.usage() != Usage::Over && rate > self.target {
            self.target = rate.min(MAX_RATE);
        }
    }

    /// Cuts the estimate to `to`, noting the link's `capacity` where the delay showed it.
    fn decrease(&mut self, now: Instant, to: f64, capacity: Option<f64>) {
        if self.last_decrease.is_some_and(|last| now.saturating_duration_since(last) < DECREASE_INTERVAL) {
            return;
        }
        self.last_decrease = Some(now);
        self.target = to.min(self.target).max(MIN_RATE);
        if capacity.is_some() {
            self.capacity = capacity;
        }
    }

    /// Grows the estimate over `step`, multiplicatively or, near the capacity found,
    /// additively; never past the cap of what was acknowledged, nor lowered by it.
    fn increase(&mut self, step: Duration, acknowledged: Option<f64>) {
        if self.capacity.is_some_and(|capacity| self.target > CAP_FACTOR * capacity) {
            self.capacity = None;
        }
        let grown = match self.capacity {
            Some(_) => self.target + ADDITIVE_PER_SECOND * step.as_secs_f64(),
            None => self.target * INCREASE_PER_SECOND.powf(step.as_secs_f64()),
        };
        let cap = acknowledged.map_or(f64::INFINITY, |rate| CAP_FACTOR * rate + CAP_HEADROOM);
        self.target = grown.min(cap.max(self.target)).min(MAX_RATE);
    }
}

/// The span of arrivals the acknowledged rate is measured over, and the least that gives one.
const THROUGHPUT_WINDOW: Duration = Duration::from_millis(300);
const THROUGHPUT_MIN_SPAN: Duration = Duration::from_millis(100);
/// The most packets the window keeps (a second's at 2,000 a second).
const THROUGHPUT_MAX_PACKETS: usize = 2048;

/// What the subscriber acknowledged receiving, by the arrival times it reported: the bytes
/// that arrived over the last [`THROUGHPUT_WINDOW`] of its clock.
#[derive(Default)]
struct Throughput {
    /// Arrival and size of each packet in the window, in the order reported.
    arrivals: VecDeque<(Duration, usize)>,
    bytes: usize,
    latest: Duration,
}

impl Throughput {
    fn add(&mut self, arrival: Duration, size: usize) {
        self.latest = self.latest.max(arrival);
        if self.latest.saturating_sub(arrival) > THROUGHPUT_WINDOW {
            return;
        }
        if self.arrivals.len() == THROUGHPUT_MAX_PACKETS {
            self.pop();
        }
        self.arrivals.push_back((arrival, size));
        self.bytes += size;
        while self.arrivals.front().is_some_and(|(at, _)| self.latest.saturating_sub(*at) > THROUGHPUT_WINDOW) {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, size)) = self.arrivals.pop_front() {
            self.bytes -= size;
        }
    }

    /// Bits per second: the bytes after the first arrival over the span since it.
    fn rate(&self) -> Option<f64> {
        let (first, first_size) = *self.arrivals.front()?;
        let span = self.latest.saturating_sub(first);
        (span >= THROUGHPUT_MIN_SPAN).then(|| (self.bytes - first_size) as f64 * 8.0 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    use super::*;

    /// Sends `seconds` of 1,200-byte packets at `rate` into a link of `capacity` (each queues
    /// behind the ones before; a queue over `queue` is tail-dropped), reporting every 50 ms on
    /// what was sent 50 ms before; returns the estimate every 100 ms.
    fn run(control: &mut RateControl, start: Instant, seconds: u64, rate: f64, capacity: f64) -> Vec<f64> {
        const SIZE: usize = 1200;
        let queue = Duration::from_millis(200);
        let interval = Duration::from_secs_f64(SIZE as f64 * 8.0 / rate);
        let transfer = Duration::from_secs_f64(SIZE as f64 * 8.0 / capacity);
        let mut sent: Vec<PacketReport> = Vec::new();
        let (mut now, mut link_free, mut next_feedback) = (start, start, start + Duration::from_millis(50));
        let mut estimates = Vec::new();
        let mut id = 0;
        // What a receiver report each second would say was lost.
        let (mut sent_since_report, mut lost_since_report) = (0u32, 0u32);
        let mut next_report = start + Duration::from_secs(1);
        while now < start + Duration::from_secs(seconds) {
            let waited = link_free.saturating_duration_since(now);
            let arrived = waited <= queue;
            sent_since_report += 1;
            lost_since_report += u32::from(!arrived);
            if now >= next_report {
                control.on_loss(now, f64::from(lost_since_report) / f64::from(sent_since_report));
                (sent_since_report, lost_since_report) = (0, 0);
                next_report += Duration::from_secs(1);
            }
            if arrived {
                link_free = link_free.max(now) + transfer;
            }
            id += 1;
            sent.push(PacketReport {
                ssrc: 0,
                id,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: id as u16,
                size: SIZE,
                arrived,
                departure: now,
                arrival: arrived.then(|| link_free.duration_since(start)),
                ecn: Ecn::default(),
            });
            now += interval;
            while now >= next_feedback {
                let reported = next_feedback - Duration::from_millis(50);
                let (due, later): (Vec<_>, Vec<_>) = sent.into_iter().partition(|r| r.departure <= reported);
                sent = later;
                let lost = due.iter().filter(|r| !r.arrived).count();
                control.on_reports(next_feedback, &due, due.len(), lost);
                if (next_feedback - start).as_millis().is_multiple_of(100) {
                    estimates.push(control.target());
                }
                next_feedback += Duration::from_millis(50);
            }
        }
        estimates
    }

    #[test]
    fn holds_on_a_link_that_carries_what_is_sent_and_never_climbs_far_past_it() {
        let start = Instant::now();
        let mut control = RateControl::new(300_000.0);
        let estimates = run(&mut control, start, 30, 800_000.0, 5_000_000.0);
        let last = *estimates.last().expect("estimates");
        assert!(last >= 800_000.0, "it grows to what is sent: {last}");
        assert!(last <= 1.5 * 800_000.0 + 10_000.0, "and no further than the cap: {last}");
    }

    #[test]
    fn comes_down_to_a_narrow_link_within_two_seconds_and_stays_under_it() {
        let start = Instant::now();
        let mut control = RateControl::new(2_500_000.0);
        let estimates = run(&mut control, start, 10, 1_500_000.0, 300_000.0);
        let within_two_seconds = estimates[19];
        assert!(within_two_seconds < 400_000.0, "1.5 Mbit/s into 300 kbit/s: {within_two_seconds} after 2 s");
        let settled = &estimates[50..];
        assert!(settled.iter().all(|e| *e < 360_000.0), "it stays near the link: {settled:?}");
    }

    #[test]
    fn heavy_loss_cuts_the_estimate_and_a_probe_raises_it() {
        let start = Instant::now();
        let mut control = RateControl::new(1_000_000.0);
        // A third lost, report after report, a second apart.
        for second in 1..=5 {
            control.on_loss(start + Duration::from_secs(second), 1.0 / 3.0);
        }
        let cut = control.target();
        assert!(cut < 500_000.0, "a third lost halves it at least: {cut}");
        control.on_probe(2_000_000.0);
        assert_eq!(control.target(), 2_000_000.0);
        control.on_probe(1_000_000.0);
        assert_eq!(control.target(), 2_000_000.0, "a probe never lowers it");
    }
}
