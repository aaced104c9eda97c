//! Round-trip time from a receiver report (RFC 3550 §6.4.1): a report echoes the middle 32
//! bits of the NTP time of the last sender report it got (LSR) and how long it held it
//! (DLSR), both in 1/65536 s; the round trip is the report's arrival less both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// Longest round trip taken as real; beyond it the report or a clock is off.
const MAX_ROUND_TRIP_UNITS: u32 = 10 << 16;

/// The 64-bit NTP timestamp of `time` (32.32 fixed-point seconds since 1900), as sender
/// reports carry it.
pub fn ntp_time(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET_SECS;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The middle 32 bits of the NTP timestamp of `time` (16.16 fixed-point seconds), the form
/// receiver reports echo sender reports in.
pub fn ntp_middle(time: SystemTime) -> u32 {
    (ntp_time(time) >> 16) as u32
}

/// The round trip shown by a report arriving at `arrival` (NTP middle bits) that echoes
/// `last_sender_report` after holding it `delay`; `None` before the receiver got a sender
/// report, or when the figure is over 10 s.
pub fn round_trip(arrival: u32, last_sender_report: u32, delay: u32) -> Option<Duration> {
    if last_sender_report == 0 {
        return None;
    }
    let units = arrival.wrapping_sub(last_sender_report).wrapping_sub(delay);
    (units <= MAX_ROUND_TRIP_UNITS).then(|| Duration::from_micros((u64::from(units) * 1_000_000) >> 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_is_the_arrival_less_the_echoed_time_and_the_hold() {
        let sent = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let lsr = ntp_middle(sent);
        // Held 100 ms by the receiver, back 130 ms after the report left: 30 ms on the wire.
        let arrival = ntp_middle(sent + Duration::from_millis(130));
        let rtt = round_trip(arrival, lsr, 100 * 65_536 / 1000).expect("a round trip");
        assert!(rtt.abs_diff(Duration::from_millis(30)) < Duration::from_micros(100), "{rtt:?}");
    }

    #[test]
    fn reports_without_a_sender_report_or_with_a_future_echo_give_nothing() {
        let now = ntp_middle(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        assert_eq!(round_trip(now, 0, 0), None, "no sender report received yet");
        assert_eq!(round_trip(now, now.wrapping_add(65_536), 0), None, "echoes a time one second ahead");
        assert_eq!(round_trip(now, now.wrapping_sub(65_536 * 11), 0), None, "11 s");
        assert_eq!(round_trip(now, now, 0), Some(Duration::ZERO));
    }
}
