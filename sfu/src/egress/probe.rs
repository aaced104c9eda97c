//! Probing a subscriber's downlink for room its media leaves unused, in the shape of
//! libwebrtc's probe controller and probe bitrate estimator.
//!
//! The estimate grows only so far past what the media fills ([`super::rate_control`]), so a
//! subscriber moved down to a low layer would never show room for a higher one. When the
//! allocation wants more than the estimate, a cluster of padding packets is sent for
//! [`CLUSTER_DURATION`] at up to twice the estimate; every packet sent meanwhile belongs to
//! the cluster, and the subscriber's feedback on them gives the rate they were sent at and
//! the rate the later half of them arrived at (a shaper passes its first few kilobytes at
//! once, then only the link's rate). The link carried the lower of the two (a little under
//! what arrived, if that was clearly less: the link was full); a cluster a fifth of which was
//! lost says nothing. A cluster that arrived as fast as it left lets the next follow at once
//! (at twice the new estimate); one that filled the link or measured nothing makes the next
//! wait, from [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`], so that a full link is not
//! overfilled again and again.

use std::time::{Duration, Instant};

/// How long a cluster's padding is sent for, and the fewest and most packets it has: at
/// least [`MIN_CLUSTER_BYTES`], so that a shaper's burst allowance (a token bucket's depth,
/// a few kilobytes) does not pass most of it at once and show a link wider than it is.
const CLUSTER_DURATION: Duration = Duration::from_millis(50);
const MIN_CLUSTER_BYTES: usize = 8_000;
const MAX_CLUSTER_PACKETS: u32 = 100;
/// The padding of one probe packet: the most an RTP padding count octet can say.
pub const PADDING_LEN: usize = 255;
/// A probe packet on the wire: RTP header with the transport-wide number, padding, SRTP tag.
const PROBE_PACKET_BYTES: usize = 12 + 8 + PADDING_LEN + 16;
const PROBE_PACKET_BITS: f64 = (PROBE_PACKET_BYTES * 8) as f64;
const MIN_CLUSTER_PACKETS: u32 = MIN_CLUSTER_BYTES.div_ceil(PROBE_PACKET_BYTES) as u32;
/// A result needs this many of the cluster's packets received, and this share of them: a
/// cluster that lost more overflowed a queue, and what arrived of it says little.
const MIN_RECEIVED: u32 = 5;
const MIN_RECEIVED_SHARE: f64 = 0.8;
/// How long after its last packet a cluster's feedback is waited for.
const RESULT_TIMEOUT: Duration = Duration::from_secs(1);
/// A cluster whose packets arrived this many times faster than they left measured a queue
/// draining, not the link: no result.
const MAX_RECEIVE_RATIO: f64 = 2.0;
/// Packets that arrived at less than this share of the rate they left at filled the link;
/// the result is then [`SATURATED_SHARE`] of what arrived.
const SATURATED_RATIO: f64 = 0.9;
const SATURATED_SHARE: f64 = 0.95;
/// The wait after a cluster that found no room, doubling from the least to the most.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// The probing of one subscriber connection.
pub struct Prober {
    next_id: u16,
    cluster: Option<Cluster>,
    /// No cluster starts before this.
    next_allowed: Option<Instant>,
    backoff: Duration,
}

/// The cluster being sent or measured.
struct Cluster {
    id: u16,
    /// Bits per second its padding is sent at.
    rate: f64,
    start: Instant,
    /// Padding packets to send, and sent.
    padding: u32,
    padded: u32,
    /// Packets sent in it (padding and media), and reported on.
    tagged: u32,
    reported: u32,
    /// When its last padding packet left.
    ended: Option<Instant>,
    measure: Measure,
}

/// What the feedback said of a cluster's packets that arrived.
#[derive(Default)]
struct Measure {
    received: u32,
    bytes: usize,
    /// The earliest and latest departure, and the size of the latest.
    first_sent: Option<Instant>,
    last_sent: Option<(Instant, usize)>,
    /// Each arrival (the receiver's clock) with its size, the first [`MAX_ARRIVALS`].
    arrivals: Vec<(Duration, usize)>,
}

/// The most arrivals of one cluster kept: its padding and the media sent beside it.
const MAX_ARRIVALS: usize = 512;

impl Default for Prober {
    fn default() -> Self {
        Self { next_id: 1, cluster: None, next_allowed: None, backoff: MIN_BACKOFF }
    }
}

impl Prober {
    /// Starts a cluster if the allocation wants `desired` bits per second, more than the
    /// `estimate`, and no cluster is on nor waited for; returns whether one started.
    pub fn want(&mut self, now: Instant, desired: f64, estimate: f64) -> bool {
        if self.cluster.as_ref().and_then(|c| c.ended).is_some_and(|ended| now >= ended + RESULT_TIMEOUT) {
            // Its feedback never came.
            self.cluster = None;
            self.back_off(now);
        }
        if desired <= estimate || self.cluster.is_some() || self.next_allowed.is_some_and(|at| now < at) {
            return false;
        }
        let rate = desired.min(2.0 * estimate);
        let padding = (rate * CLUSTER_DURATION.as_secs_f64() / PROBE_PACKET_BITS).ceil() as u32;
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.cluster = Some(Cluster {
            id,
            rate,
            start: now,
            padding: padding.clamp(MIN_CLUSTER_PACKETS, MAX_CLUSTER_PACKETS),
            padded: 0,
            tagged: 0,
            reported: 0,
            ended: None,
            measure: Measure::default(),
        });
        true
    }

    /// The cluster a packet leaving now belongs to (0: none), counted in it.
    pub fn tag(&mut self) -> u16 {
        match self.cluster.as_mut().filter(|c| c.ended.is_none()) {
            Some(cluster) => {
                cluster.tagged += 1;
                cluster.id
            }
            None => 0,
        }
    }

    /// Whether a padding packet is due at `now`; counts it as sent.
    pub fn padding_due(&mut self, now: Instant) -> bool {
        let Some(cluster) = self.cluster.as_mut().filter(|c| c.ended.is_none()) else { return false };
        if cluster.padding_at(cluster.padded) > now {
            return false;
        }
        cluster.padded += 1;
        if cluster.padded == cluster.padding {
            cluster.ended = Some(now);
        }
        true
    }

    /// Gives up the cluster being sent (no stream can carry its padding), as one that found
    /// no room.
    pub fn cancel(&mut self, now: Instant) {
        if self.cluster.take().is_some() {
            self.back_off(now);
        }
    }

    /// When the next padding packet is due.
    pub fn deadline(&self) -> Option<Instant> {
        let cluster = self.cluster.as_ref().filter(|c| c.ended.is_none())?;
        Some(cluster.padding_at(cluster.padded))
    }

    /// Takes the subscriber's report on a packet of cluster `id` that left at `departure`
    /// with `size` bytes and arrived at `arrival` (`None`: lost).
    pub fn on_report(&mut self, id: u16, departure: Instant, size: usize, arrival: Option<Duration>) {
        let Some(cluster) = self.cluster.as_mut().filter(|c| c.id == id) else { return };
        cluster.reported += 1;
        let Some(arrival) = arrival else { return };
        let measure = &mut cluster.measure;
        measure.received += 1;
        measure.bytes += size;
        measure.first_sent = Some(measure.first_sent.map_or(departure, |first| first.min(departure)));
        if measure.last_sent.is_none_or(|(last, _)| departure >= last) {
            measure.last_sent = Some((departure, size));
        }
        if measure.arrivals.len() < MAX_ARRIVALS {
            measure.arrivals.push((arrival, size));
        }
    }

    /// The rate the link carried in the cluster, once every packet of it was reported on (or
    /// its feedback was given up on, [`RESULT_TIMEOUT`] after its last padding): `None` until
    /// then, and for a cluster that measured nothing, whose failure makes the next wait.
    pub fn take_result(&mut self, now: Instant) -> Option<f64> {
        let cluster = self.cluster.as_ref()?;
        let ended = cluster.ended?;
        let timed_out = now >= ended + RESULT_TIMEOUT;
        if cluster.reported < cluster.tagged && !timed_out {
            return None;
        }
        let mut cluster = self.cluster.take()?;
        let result =
            cluster.measure.result().filter(|_| f64::from(cluster.measure.received) >= MIN_RECEIVED_SHARE * f64::from(cluster.tagged));
        match result {
            Some(Carried { saturated: false, .. }) => {
                self.backoff = MIN_BACKOFF;
                self.next_allowed = None;
            }
            _ => self.back_off(now),
        }
        result.map(|carried| carried.rate)
    }

    fn back_off(&mut self, now: Instant) {
        self.next_allowed = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

impl Cluster {
    /// When padding packet `index` is due: evenly over the cluster's duration.
    fn padding_at(&self, index: u32) -> Instant {
        self.start + Duration::from_secs_f64(PROBE_PACKET_BITS * f64::from(index) / self.rate)
    }
}

/// What a cluster found the link carried.
struct Carried {
    /// Bits per second.
    rate: f64,
    /// Whether it filled the link (arrived clearly slower than it left).
    saturated: bool,
}

impl Measure {
    /// The lower of the rates the cluster's packets left at and the later half of them
    /// arrived at, in bits per second.
    fn result(&mut self) -> Option<Carried> {
        if self.received < MIN_RECEIVED {
            return None;
        }
        let (first_sent, (last_sent, last_size)) = (self.first_sent?, self.last_sent?);
        self.arrivals.sort_unstable_by_key(|(arrival, _)| *arrival);
        let later = &self.arrivals[self.arrivals.len() / 2..];
        let ((first_arrival, first_size), (last_arrival, _)) = (*later.first()?, *later.last()?);
        let (sending, arriving) = (last_sent.saturating_duration_since(first_sent), last_arrival.saturating_sub(first_arrival));
        if sending.is_zero() || arriving.is_zero() {
            return None;
        }
        let sent = (self.bytes - last_size) as f64 * 8.0 / sending.as_secs_f64();
        let later_bytes: usize = later.iter().map(|(_, size)| size).sum();
        let arrived = (later_bytes - first_size) as f64 * 8.0 / arriving.as_secs_f64();
        if arrived > MAX_RECEIVE_RATIO * sent {
            return None;
        }
        let saturated = arrived < SATURATED_RATIO * sent;
        let rate = if saturated { SATURATED_SHARE * arrived } else { sent.min(arrived) };
        Some(Carried { rate, saturated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends a cluster wanted at `desired` over a link of `capacity` bits per second (each
    /// packet queues behind the ones before), every packet reported; returns the result.
    fn probe(prober: &mut Prober, start: Instant, desired: f64, estimate: f64, capacity: f64) -> Option<f64> {
        probe_losing(prober, start, desired, estimate, Shaper::new(capacity, PROBE_PACKET_BYTES), |_| false)
    }

    /// A link of `rate` bits per second behind a token bucket of `burst` bytes, full at the
    /// start: what the bucket holds passes at once, then the link's rate.
    struct Shaper {
        rate: f64,
        burst: f64,
        tokens: f64,
        /// When the last packet left it.
        last_out: Duration,
    }

    impl Shaper {
        fn new(rate: f64, burst: usize) -> Self {
            Self { rate, burst: burst as f64, tokens: burst as f64, last_out: Duration::ZERO }
        }

        /// When a packet of `size` bytes that reached it at `at` leaves it (in order).
        fn pass(&mut self, at: Duration, size: usize) -> Duration {
            let ready = at.max(self.last_out);
            self.tokens = (self.tokens + (ready - self.last_out).as_secs_f64() * self.rate / 8.0).min(self.burst);
            let wait = (size as f64 - self.tokens).max(0.0) * 8.0 / self.rate;
            self.tokens += wait * self.rate / 8.0 - size as f64;
            self.last_out = ready + Duration::from_secs_f64(wait);
            self.last_out
        }
    }

    /// [`probe`] through `link`, the packets `lost` picks (by their index) lost on the way.
    fn probe_losing(
        prober: &mut Prober,
        start: Instant,
        desired: f64,
        estimate: f64,
        mut link: Shaper,
        lost: impl Fn(usize) -> bool,
    ) -> Option<f64> {
        assert!(prober.want(start, desired, estimate), "a cluster starts");
        let size = PROBE_PACKET_BYTES;
        let mut sent = Vec::new();
        let mut now = start;
        while let Some(due) = prober.deadline() {
            now = due.max(now);
            while prober.padding_due(now) {
                let id = prober.tag();
                sent.push((id, now, link.pass(now - start, size)));
            }
        }
        assert!(prober.take_result(now).is_none(), "nothing before the feedback");
        for (index, (id, departure, arrival)) in sent.into_iter().enumerate() {
            prober.on_report(id, departure, size, (!lost(index)).then_some(arrival));
        }
        prober.take_result(now)
    }

    #[test]
    fn a_cluster_over_a_wide_link_measures_its_own_rate_and_the_next_may_follow() {
        let start = Instant::now();
        let mut prober = Prober::default();
        let result = probe(&mut prober, start, 3_000_000.0, 500_000.0, 10_000_000.0).expect("a result");
        // Twice the estimate, as sent (the last packet's bytes are not counted in the time).
        assert!((900_000.0..=1_100_000.0).contains(&result), "{result}");
        assert!(probe(&mut prober, start, 3_000_000.0, result, 10_000_000.0).is_some(), "the next at once");
    }

    #[test]
    fn a_cluster_over_a_narrow_link_measures_the_link_and_the_next_waits() {
        let start = Instant::now();
        let mut prober = Prober::default();
        let result = probe(&mut prober, start, 3_000_000.0, 500_000.0, 400_000.0).expect("a result");
        assert!((340_000.0..=400_000.0).contains(&result), "a little under the link: {result}");
        assert!(!prober.want(start + Duration::from_millis(900), 3_000_000.0, 500_000.0), "within the backoff");
        assert!(prober.want(start + Duration::from_millis(1_100), 3_000_000.0, 500_000.0), "after it");
    }

    #[test]
    fn a_cluster_through_a_token_bucket_measures_the_link_not_the_burst_it_passed() {
        let start = Instant::now();
        // 300 kbit/s behind a 2,400-byte bucket: its first eight packets pass at once.
        let shaped = Shaper::new(300_000.0, 2_400);
        let mut prober = Prober::default();
        let result = probe_losing(&mut prober, start, 1_000_000.0, 500_000.0, shaped, |_| false).expect("a result");
        assert!((270_000.0..=300_000.0).contains(&result), "a little under the link: {result}");
        assert!(!prober.want(start + Duration::from_millis(900), 1_000_000.0, result), "it filled the link: the next waits");
    }

    #[test]
    fn a_cluster_that_lost_a_fifth_of_its_packets_measures_nothing() {
        let start = Instant::now();
        let wide = || Shaper::new(10_000_000.0, PROBE_PACKET_BYTES);
        let lossy = probe_losing(&mut Prober::default(), start, 3_000_000.0, 500_000.0, wide(), |i| i % 4 == 0);
        assert_eq!(lossy, None, "a quarter lost");
        let mostly = probe_losing(&mut Prober::default(), start, 3_000_000.0, 500_000.0, wide(), |i| i == 3);
        assert!(mostly.is_some(), "one lost");
    }

    #[test]
    fn nothing_is_probed_below_the_estimate_and_a_cluster_without_feedback_is_given_up() {
        let start = Instant::now();
        let mut prober = Prober::default();
        assert!(!prober.want(start, 400_000.0, 500_000.0));
        assert!(prober.want(start, 600_000.0, 500_000.0));
        assert!(!prober.want(start, 600_000.0, 500_000.0), "one cluster at a time");
        let mut now = start;
        while let Some(due) = prober.deadline() {
            now = due;
            while prober.padding_due(now) {
                prober.tag();
            }
        }
        let given_up = now + RESULT_TIMEOUT;
        assert!(!prober.want(given_up - Duration::from_millis(1), 600_000.0, 500_000.0), "its feedback is waited for");
        assert!(!prober.want(given_up, 600_000.0, 500_000.0), "then given up, and the next waits");
        assert!(prober.want(given_up + MIN_BACKOFF, 600_000.0, 500_000.0));
    }
}
