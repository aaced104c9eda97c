//! The sender's clock of one stream, from its RTCP sender reports: each report pairs an NTP
//! wall-clock time with an RTP timestamp, so any RTP timestamp of the stream maps to the
//! sender's wall clock. Audio and video of one participant share that wall clock, which is
//! how the recorder keeps them in sync, and following every new report keeps a sender whose
//! RTP clock drifts from its wall clock in sync for hours.

/// Microseconds on the sender's wall clock (NTP epoch).
pub type WallMicros = i64;

/// This machine's wall clock, Unix microseconds.
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// From the Unix epoch (1970) to the NTP epoch (1900), microseconds.
const UNIX_TO_NTP_MICROS: i64 = 2_208_988_800 * 1_000_000;

/// This machine's wall clock on the NTP timeline senders report on.
pub fn ntp_now_micros() -> WallMicros {
    unix_micros() + UNIX_TO_NTP_MICROS
}

/// An NTP 32.32 fixed-point timestamp in microseconds (rounded to the nearest).
pub fn ntp_to_micros(ntp: u64) -> WallMicros {
    let seconds = (ntp >> 32) as i64;
    let fraction = ((ntp & 0xFFFF_FFFF) * 1_000_000 + (1 << 31)) >> 32;
    seconds * 1_000_000 + fraction as i64
}

/// One stream's RTP-to-wall-clock mapping.
#[derive(Debug, Clone)]
pub struct SenderClock {
    clock_rate: u32,
    /// The latest report: wall time and RTP timestamp.
    reference: Option<(WallMicros, u32)>,
}

impl SenderClock {
    /// A clock for a stream with this RTP clock rate, without a report yet.
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate: clock_rate.max(1), reference: None }
    }

    /// Takes a sender report's NTP time and RTP timestamp.
    pub fn on_sender_report(&mut self, ntp_time: u64, rtp_time: u32) {
        self.anchor(ntp_to_micros(ntp_time), rtp_time);
    }

    /// Pairs an RTP timestamp with a wall time known some other way (its arrival).
    pub fn anchor(&mut self, wall: WallMicros, rtp_time: u32) {
        self.reference = Some((wall, rtp_time));
    }

    /// Whether the clock has a reference yet.
    pub fn is_synced(&self) -> bool {
        self.reference.is_some()
    }

    /// The sender's wall-clock time of an RTP timestamp near the latest report (within half
    /// the RTP timestamp range), or `None` before the first report.
    pub fn wall_time(&self, rtp_timestamp: u32) -> Option<WallMicros> {
        let (wall, rtp) = self.reference?;
        let ticks = i64::from(rtp_timestamp.wrapping_sub(rtp) as i32);
        Some(wall + ticks * 1_000_000 / i64::from(self.clock_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::ntp;

    #[test]
    fn ntp_fixed_point_converts_to_microseconds() {
        assert_eq!(ntp_to_micros(ntp(3_913_056_000_123_456)), 3_913_056_000_123_456);
        assert_eq!(ntp_to_micros(1 << 31), 500_000);
    }

    #[test]
    fn audio_and_video_map_to_one_timeline() {
        // One sender: audio at 48 kHz and video at 90 kHz with unrelated random RTP offsets;
        // the camera frame is captured 120 ms after the audio frame.
        let start = 3_913_056_000_000_000i64;
        let mut audio = SenderClock::new(48_000);
        let mut video = SenderClock::new(90_000);
        assert_eq!(audio.wall_time(0), None, "no report, no mapping");
        audio.on_sender_report(ntp(start), 1_000_000);
        video.on_sender_report(ntp(start), 4_294_000_000); // close to the wrap
        let audio_frame = 1_000_000u32.wrapping_add(48_000 * 2); // 2 s later
        let video_frame = 4_294_000_000u32.wrapping_add(90_000 * 2 + 10_800); // 2.12 s later, wrapped
        let a = audio.wall_time(audio_frame).expect("synced");
        let v = video.wall_time(video_frame).expect("synced");
        assert_eq!(v - a, 120_000);
        // Timestamps before the report map before it.
        assert_eq!(audio.wall_time(1_000_000 - 480).expect("synced"), start - 10_000);
    }

    #[test]
    fn following_reports_keeps_a_drifting_sender_within_a_millisecond_over_ten_minutes() {
        // The sender's RTP clock runs 100 ppm fast against its wall clock (60 ms in 10 min);
        // it reports every 5 s, as browsers do.
        let start = 3_913_056_000_000_000i64;
        let rtp_at = |wall_micros: i64| -> u32 { ((wall_micros - start) as f64 * 0.09 * 1.0001) as u64 as u32 };
        let mut clock = SenderClock::new(90_000);
        let mut worst = 0i64;
        let mut unfollowed = SenderClock::new(90_000);
        unfollowed.on_sender_report(ntp(start), rtp_at(start));
        for frame in 0..(10 * 60 * 30) {
            let wall = start + frame * 33_333;
            if frame % 150 == 0 {
                clock.on_sender_report(ntp(wall), rtp_at(wall));
            }
            let mapped = clock.wall_time(rtp_at(wall)).expect("synced");
            worst = worst.max((mapped - wall).abs());
        }
        assert!(worst < 1_000, "worst error {worst} µs");
        let end = start + 600_000_000;
        let drifted = (unfollowed.wall_time(rtp_at(end)).expect("synced") - end).abs();
        assert!(drifted > 40_000, "one report alone would drift {drifted} µs");
    }
}
