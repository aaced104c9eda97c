//! Who is speaking: the audio level publishers put in each audio packet (RFC 6464's
//! `ssrc-audio-level` header extension), smoothed per track, and the room's speakers ranked
//! from it.

use std::time::{Duration, Instant};

use rtc::rtp::header::Header;

/// How much of each packet's level goes into the smoothed one: with a packet every 20 ms,
/// a time constant of about 200 ms, so a syllable counts and a click does not.
const SMOOTHING: f32 = 0.1;
/// A track whose packets stopped this long ago (muted, or gone silent with DTX) is silent.
const SILENT_AFTER: Duration = Duration::from_millis(500);
/// The smoothed loudness from which a track counts as speaking: louder than -50 dBov.
pub const SPEAKING: f32 = (127.0 - 50.0) / 127.0;
/// How often the engine ranks each room's speakers (and tells the room when they changed).
pub const ROUND: Duration = Duration::from_millis(300);

/// The smoothed loudness of one audio track, 0 (silence, -127 dBov) to 1 (0 dBov).
#[derive(Debug)]
pub struct AudioLevel {
    extension_id: u8,
    loudness: f32,
    last: Option<Instant>,
}

impl AudioLevel {
    /// A track whose packets carry the level in the header extension `extension_id`.
    pub fn new(extension_id: u8) -> Self {
        Self { extension_id, loudness: 0.0, last: None }
    }

    /// Takes the level of a packet sent at `now`; a packet without it changes nothing.
    pub fn on_packet(&mut self, now: Instant, header: &Header) {
        let extension = header.extensions.iter().find(|e| e.id == self.extension_id);
        let Some(&byte) = extension.and_then(|e| e.payload.first()) else { return };
        // The low seven bits are the level in -dBov (127: silence); the high bit is voice
        // activity, which not every sender sets.
        let loudness = f32::from(127 - (byte & 0x7f)) / 127.0;
        self.loudness += (loudness - self.loudness) * SMOOTHING;
        self.last = Some(now);
    }

    /// The smoothed loudness at `now`.
    pub fn loudness(&self, now: Instant) -> f32 {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < SILENT_AFTER => self.loudness,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn header(extension_id: u8, level: u8) -> Header {
        let mut header = Header { version: 2, ..Default::default() };
        header.set_extension(extension_id, Bytes::from(vec![0x80 | level])).expect("extension");
        header
    }

    #[test]
    fn loudness_follows_the_levels_smoothed_and_falls_silent_when_packets_stop() {
        let start = Instant::now();
        let mut level = AudioLevel::new(1);
        assert_eq!(level.loudness(start), 0.0);
        let mut now = start;
        for _ in 0..50 {
            now += Duration::from_millis(20);
            level.on_packet(now, &header(1, 30)); // -30 dBov: speech
        }
        assert!(level.loudness(now) > SPEAKING, "speaking after a second: {}", level.loudness(now));
        level.on_packet(now, &header(1, 127));
        assert!(level.loudness(now) > SPEAKING, "one silent packet is not the end of it");
        assert_eq!(level.loudness(now + SILENT_AFTER), 0.0, "no packets: silent");
        level.on_packet(now, &header(2, 0));
        let quiet = AudioLevel::new(1);
        assert_eq!(quiet.loudness(now), 0.0, "packets without the extension say nothing");
    }
}
