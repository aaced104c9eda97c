//! One participant's recording as a sans-IO pipeline: RTP packets and sender reports of its
//! tracks go in (with `now`); keyframe requests, the fMP4 initialization segment and media
//! segments come out. The caller stores the segments (one MP4 file: the initialization
//! segment and every media segment in order; HLS: the same segments apart, with the
//! [`Playlist`](crate::playlist::Playlist)).
//!
//! Per track: [`JitterBuffer`] → [`FrameAssembler`] → [`SenderClock`]. Frames are placed on
//! the sender's wall clock (RTCP SR; before a track's first report, by arrival), so audio and
//! video stay in sync. The recording starts at the first video keyframe (audio before it is
//! dropped) or, audio only, at the first audio frame; [`Segmenter`] cuts the media segments.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::assembler::{Assembled, Codec, FrameAssembler};
use crate::clock::{ntp_now_micros, SenderClock, WallMicros};
use crate::fmp4::{Fmp4Error, Fmp4Writer};
use crate::jitter::{JitterBuffer, Released, RtpPacket};
use crate::segmenter::{Cut, Segmenter};

/// Settings of a recording.
#[derive(Debug, Clone, Copy)]
pub struct RecordingSettings {
    /// Target length of a media segment.
    pub segment_target: Duration,
    /// How long before a segment boundary a keyframe is requested.
    pub keyframe_request_ahead: Duration,
    /// Packets each track's jitter buffer spans.
    pub jitter_packets: usize,
    /// How long a missing packet is waited for.
    pub jitter_delay: Duration,
}

impl Default for RecordingSettings {
    fn default() -> Self {
        Self {
            segment_target: Duration::from_secs(6),
            keyframe_request_ahead: Duration::from_millis(500),
            jitter_packets: 512,
            jitter_delay: Duration::from_millis(150),
        }
    }
}

/// What the recording asks of its caller, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Ask the publisher of track `track` for a keyframe.
    KeyframeRequest {
        /// Index of the track (as passed to [`Recording::new`]).
        track: usize,
    },
    /// Packets of track `track` never arrived (for the recording's log).
    Gap {
        /// Index of the track.
        track: usize,
        /// How many packets.
        packets: u64,
    },
    /// The initialization segment (`ftyp` + `moov`); comes before the first media segment.
    InitSegment(Bytes),
    /// A media segment (`moof` + `mdat`).
    MediaSegment {
        /// 0, 1, 2, ...
        index: u32,
        /// Its bytes.
        data: Bytes,
        /// Its length.
        duration_micros: i64,
    },
}

struct TrackInput {
    codec: Codec,
    jitter: JitterBuffer,
    assembler: FrameAssembler,
    clock: SenderClock,
    /// The clock by arrival, on the same NTP timeline, used until the first sender report.
    arrival: SenderClock,
    /// Media time and RTP timestamp of the track's last written frame (times kept increasing).
    last_written: Option<(i64, u32)>,
}

/// One participant's recording.
pub struct Recording {
    tracks: Vec<TrackInput>,
    writer: Fmp4Writer,
    segmenter: Segmenter,
    has_video: bool,
    /// Wall time at media time 0.
    start: Option<WallMicros>,
    /// Origin of arrival times, and this machine's NTP wall time then.
    epoch: (Instant, WallMicros),
    segment_index: u32,
    init_sent: bool,
    last_media_time: i64,
    outputs: VecDeque<Output>,
    assembled: Vec<Assembled>,
    /// When a keyframe was last asked for while the file waits for its first one.
    keyframe_asked: Instant,
}

/// How long a recording that waits for its first video keyframe waits before it asks again:
/// the keyframe a request brought can miss the recording (it left the publisher before the
/// recording began, or a packet of it was lost), and a browser may send no other for minutes.
const FIRST_KEYFRAME_RETRY: Duration = Duration::from_secs(1);

impl Recording {
    /// A recording of tracks with these codecs (at most one audio and one video).
    pub fn new(codecs: &[Codec], settings: RecordingSettings, now: Instant) -> Result<Self, Fmp4Error> {
        let has_video = codecs.iter().any(|c| !c.is_audio());
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Ok(Self {
            tracks: codecs
                .iter()
                .map(|&codec| TrackInput {
                    codec,
                    jitter: JitterBuffer::new(settings.jitter_packets, settings.jitter_delay),
                    assembler: FrameAssembler::new(codec),
                    clock: SenderClock::new(codec.clock_rate()),
                    arrival: SenderClock::new(codec.clock_rate()),
                    last_written: None,
                })
                .collect(),
            writer: Fmp4Writer::new(codecs)?,
            segmenter: Segmenter::new(micros(settings.segment_target), micros(settings.keyframe_request_ahead), has_video),
            has_video,
            start: None,
            epoch: (now, ntp_now_micros()),
            segment_index: 0,
            init_sent: false,
            last_media_time: 0,
            outputs: VecDeque::new(),
            assembled: Vec::new(),
            // Whoever starts a recording asks for its first keyframe (see `RoomRecorder`).
            keyframe_asked: now,
        })
    }

    /// A packet of track `track` arrived.
    pub fn on_rtp(&mut self, now: Instant, track: usize, packet: RtpPacket) -> Result<(), Fmp4Error> {
        let Some(input) = self.tracks.get_mut(track) else { return Ok(()) };
        if !input.arrival.is_synced() {
            let (epoch, epoch_wall) = self.epoch;
            let since = i64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(i64::MAX);
            input.arrival.anchor(epoch_wall.saturating_add(since), packet.timestamp);
        }
        input.jitter.push(now, packet);
        self.drain(now, track)
    }

    /// A sender report of track `track` arrived.
    pub fn on_sender_report(&mut self, track: usize, ntp_time: u64, rtp_time: u32) {
        if let Some(input) = self.tracks.get_mut(track) {
            input.clock.on_sender_report(ntp_time, rtp_time);
        }
    }

    /// Releases what the jitter buffers waited for long enough, and asks for a keyframe
    /// again each [`FIRST_KEYFRAME_RETRY`] while the file still waits for its first one.
    pub fn poll(&mut self, now: Instant) -> Result<(), Fmp4Error> {
        for track in 0..self.tracks.len() {
            self.drain(now, track)?;
        }
        if self.has_video && self.start.is_none() && now.saturating_duration_since(self.keyframe_asked) >= FIRST_KEYFRAME_RETRY {
            if let Some(video) = self.tracks.iter().position(|t| !t.codec.is_audio()) {
                self.outputs.push_back(Output::KeyframeRequest { track: video });
                self.keyframe_asked = now;
            }
        }
        Ok(())
    }

    /// The next thing for the caller to do.
    pub fn next_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn drain(&mut self, now: Instant, track: usize) -> Result<(), Fmp4Error> {
        loop {
            let input = &mut self.tracks[track];
            let Some(released) = input.jitter.pop(now) else { return Ok(()) };
            if let Released::Lost { count } = released {
                self.outputs.push_back(Output::Gap { track, packets: count });
            }
            input.assembler.push(released, &mut self.assembled);
            for assembled in std::mem::take(&mut self.assembled) {
                match assembled {
                    Assembled::KeyframeNeeded => self.outputs.push_back(Output::KeyframeRequest { track }),
                    Assembled::Frame(frame) => self.write_frame(track, frame)?,
                }
            }
        }
    }

    /// The sender's wall time of a frame of `track`.
    fn wall_time(&self, track: usize, timestamp: u32) -> Option<WallMicros> {
        let input = &self.tracks[track];
        input.clock.wall_time(timestamp).or_else(|| input.arrival.wall_time(timestamp))
    }

    fn write_frame(&mut self, track: usize, frame: crate::assembler::Frame) -> Result<(), Fmp4Error> {
        let Some(wall) = self.wall_time(track, frame.timestamp) else { return Ok(()) };
        let codec = self.tracks[track].codec;
        let is_video = !codec.is_audio();
        if self.start.is_none() {
            if self.has_video && !(is_video && frame.keyframe) {
                return Ok(()); // nothing before the first video keyframe
            }
            self.start = Some(wall);
        }
        let start = self.start.unwrap_or(wall);
        let input = &mut self.tracks[track];
        // Keep each track's times increasing by at least the RTP distance between its frames:
        // the first sender report may move the clock back from the arrival times the first
        // frames were placed by, and frames packed closer than their length overlap when
        // decoded (two 20 ms Opus frames 1 µs apart).
        let mut at = wall - start;
        if let Some((last, last_timestamp)) = input.last_written {
            let ticks = i64::from(frame.timestamp.wrapping_sub(last_timestamp) as i32).max(0);
            at = at.max(last + (ticks * 1_000_000 / i64::from(codec.clock_rate().max(1))).max(1));
        }
        if at < 0 {
            return Ok(()); // audio from before the start
        }
        input.last_written = Some((at, frame.timestamp));
        match self.segmenter.on_frame(at, is_video, is_video && frame.keyframe) {
            Cut::Continue => {}
            Cut::ContinueAndRequestKeyframe => {
                if let Some(video) = self.tracks.iter().position(|t| !t.codec.is_audio()) {
                    self.outputs.push_back(Output::KeyframeRequest { track: video });
                }
            }
            Cut::NewSegment { duration_micros } => {
                // The keyframe opens the next segment: the video frame before it ends here.
                self.writer.seal(codec, at);
                let fragment = self.writer.fragment()?;
                self.emit_segment(fragment, duration_micros);
            }
        }
        self.last_media_time = self.last_media_time.max(at);
        self.writer.push(codec, at, &frame)
    }

    /// Passes a media segment on, preceded (the first time) by the initialization segment.
    fn emit_segment(&mut self, data: Option<Bytes>, duration_micros: i64) {
        let Some(data) = data else { return };
        if !self.init_sent {
            if let Some(init) = self.writer.init_segment() {
                self.outputs.push_back(Output::InitSegment(init));
                self.init_sent = true;
            }
        }
        self.outputs.push_back(Output::MediaSegment { index: self.segment_index, data, duration_micros });
        self.segment_index += 1;
    }

    /// Ends the recording: what the jitter buffers hold is written and the last segment
    /// comes out.
    pub fn finish(&mut self) -> Result<(), Fmp4Error> {
        let far_future = Instant::now() + Duration::from_secs(3600);
        self.poll(far_future)?;
        let duration = self.segmenter.current_duration(self.last_media_time + 20_000);
        let last = self.writer.finish()?;
        self.emit_segment(last, duration);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playlist::Playlist;
    use crate::test_support::{ffprobe, ntp, vp8};
    use rtc::rtp::codec::{opus::OpusPayloader, vp8::Vp8Payloader};
    use rtc::rtp::packetizer::Payloader;

    #[test]
    fn a_recording_waiting_for_its_first_keyframe_asks_again_each_second_and_then_stops() {
        let t0 = Instant::now();
        let mut recording = Recording::new(&[Codec::Vp8, Codec::Opus], RecordingSettings::default(), t0).expect("recording");
        let asked = |recording: &mut Recording, at: Duration| {
            recording.poll(t0 + at).expect("poll");
            std::iter::from_fn(|| recording.next_output()).filter(|o| matches!(o, Output::KeyframeRequest { track: 0 })).count()
        };
        assert_eq!(asked(&mut recording, Duration::from_millis(500)), 0, "the starter asked already");
        assert_eq!(asked(&mut recording, Duration::from_millis(1000)), 1);
        assert_eq!(asked(&mut recording, Duration::from_millis(1500)), 0);
        assert_eq!(asked(&mut recording, Duration::from_millis(2000)), 1);
        // A keyframe arrives: the file starts, and no more asking.
        let mut payloader = Vp8Payloader::default();
        let payloads = payloader.payload(1200, &vp8(true, 3000)).expect("payloads");
        let count = payloads.len();
        recording.on_sender_report(0, ntp(crate::clock::ntp_now_micros()), 0);
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = RtpPacket { sequence: i as u16, timestamp: 0, marker: i + 1 == count, payload };
            recording.on_rtp(t0 + Duration::from_millis(2100), 0, packet).expect("rtp");
        }
        assert_eq!(asked(&mut recording, Duration::from_secs(5)), 0, "the first keyframe came");
        assert_eq!(asked(&mut recording, Duration::from_secs(9)), 0);
    }

    /// Frames placed by arrival until the first sender report, which maps the clock 30 ms
    /// earlier: the frames after it keep their 20 ms spacing instead of being packed 1 µs
    /// apart (overlapping when decoded) until the clock catches up.
    #[test]
    fn a_report_moving_the_clock_back_does_not_pack_frames_together() {
        let t0 = Instant::now();
        let mut recording = Recording::new(&[Codec::Opus], RecordingSettings::default(), t0).expect("recording");
        let mut mp4 = Vec::new();
        let rtp0 = 5_000u32;
        for f in 0..150u32 {
            let now = t0 + Duration::from_millis(u64::from(f) * 20);
            if f == 50 {
                recording.on_sender_report(0, ntp(crate::clock::ntp_now_micros() - 30_000), rtp0 + 50 * 960);
            }
            let payload = OpusPayloader.payload(1200, &Bytes::from_static(&[0xfc, 0xff, 0xfe])).expect("payload").remove(0);
            recording.on_rtp(now, 0, RtpPacket { sequence: f as u16, timestamp: rtp0 + f * 960, marker: false, payload }).expect("rtp");
        }
        recording.finish().expect("finish");
        while let Some(output) = recording.next_output() {
            if let Output::InitSegment(data) | Output::MediaSegment { data, .. } = output {
                mp4.extend_from_slice(&data);
            }
        }
        let path = std::env::temp_dir().join(format!("switchboard-clock-back-{}.mp4", std::process::id()));
        std::fs::write(&path, &mp4).expect("mp4");
        let probe = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "packet=pts_time", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .expect("ffprobe runs");
        let times: Vec<f64> = String::from_utf8_lossy(&probe.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert!(times.len() > 100, "{} frames", times.len());
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] > 0.0195, "frames {:.6} and {:.6} s overlap", pair[0], pair[1]);
        }
    }

    #[test]
    fn rtp_in_mp4_and_hls_out_with_segments_on_keyframes() {
        let t0 = Instant::now();
        let settings = RecordingSettings { segment_target: Duration::from_secs(2), ..RecordingSettings::default() };
        let mut recording = Recording::new(&[Codec::Vp8, Codec::Opus], settings, t0).expect("recording");
        let wall0 = 3_913_056_000_000_000i64;
        // Unrelated RTP origins, as real senders have; reports map both to one wall clock.
        let (video_rtp0, audio_rtp0) = (4_000_000_000u32, 123_456u32);
        recording.on_sender_report(0, ntp(wall0), video_rtp0);
        recording.on_sender_report(1, ntp(wall0), audio_rtp0);
        let mut vp8_payloader = Vp8Payloader::default();
        let mut events: Vec<(i64, bool, u32)> = (0..150u32).map(|f| (i64::from(f) * 1_000_000 / 30, true, f)).collect();
        events.extend((0..250u32).map(|f| (i64::from(f) * 20_000, false, f)));
        events.sort();
        let (mut video_seq, mut audio_seq) = (0u16, 0u16);
        let mut requests = 0;
        let mut outputs = Vec::new();
        for (at, is_video, f) in events {
            let now = t0 + Duration::from_micros(at as u64);
            if is_video {
                let key = f % 30 == 0;
                let payloads = vp8_payloader.payload(1200, &vp8(key, if key { 3000 } else { 700 })).expect("payloads");
                let count = payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    let timestamp = video_rtp0.wrapping_add(f * 3000);
                    recording.on_rtp(now, 0, RtpPacket { sequence: video_seq, timestamp, marker: i + 1 == count, payload }).expect("rtp");
                    video_seq = video_seq.wrapping_add(1);
                }
            } else {
                let payload = OpusPayloader.payload(1200, &Bytes::from_static(&[0xfc, 0xff, 0xfe])).expect("payload").remove(0);
                let timestamp = audio_rtp0.wrapping_add(f * 960);
                recording.on_rtp(now, 1, RtpPacket { sequence: audio_seq, timestamp, marker: false, payload }).expect("rtp");
                audio_seq = audio_seq.wrapping_add(1);
            }
            while let Some(output) = recording.next_output() {
                match output {
                    Output::KeyframeRequest { track } => {
                        assert_eq!(track, 0);
                        requests += 1;
                    }
                    Output::Gap { .. } => {}
                    other => outputs.push(other),
                }
            }
        }
        recording.finish().expect("finish");
        while let Some(output) = recording.next_output() {
            outputs.push(output);
        }

        let Some(Output::InitSegment(init)) = outputs.first().cloned() else { panic!("init segment first: {outputs:?}") };
        let segments: Vec<(u32, Bytes, i64)> = outputs
            .iter()
            .filter_map(|o| {
                if let Output::MediaSegment { index, data, duration_micros } = o {
                    Some((*index, data.clone(), *duration_micros))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(segments.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(segments.iter().map(|s| s.2).collect::<Vec<_>>(), [2_000_000, 2_000_000, 1_000_000]);
        assert!(requests >= 2, "a keyframe asked for before each boundary");

        let dir = std::env::temp_dir().join(format!("switchboard-recording-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut mp4 = init.to_vec();
        let mut playlist = Playlist::new("init.mp4", 2);
        std::fs::write(dir.join("init.mp4"), &init).expect("init");
        for (index, data, duration) in &segments {
            mp4.extend_from_slice(data);
            let name = format!("segment-{index:05}.m4s");
            std::fs::write(dir.join(&name), data).expect("segment");
            playlist.push(name, *duration);
        }
        playlist.end();
        std::fs::write(dir.join("index.m3u8"), playlist.render()).expect("playlist");
        std::fs::write(dir.join("recording.mp4"), &mp4).expect("mp4");

        let file = ffprobe(&dir.join("recording.mp4"));
        let hls = ffprobe(&dir.join("index.m3u8"));
        let _ = std::fs::remove_dir_all(&dir);
        for probe in [&file, &hls] {
            let streams = probe["streams"].as_array().expect("streams");
            let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
            assert_eq!(codecs, ["vp8", "opus"], "{probe}");
            let duration: f64 = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
            assert!((duration - 5.0).abs() < 0.1, "duration {duration}: {probe}");
        }
        let packets: Vec<&str> =
            file["streams"].as_array().expect("streams").iter().filter_map(|s| s["nb_read_packets"].as_str()).collect();
        // Every frame, but the audio frame at 0 s: it arrived before the first video keyframe.
        assert_eq!(packets, ["150", "249"]);
    }

    #[test]
    fn a_track_without_sender_reports_is_placed_by_arrival_on_the_reporting_track_timeline() {
        // Video reports its clock (this machine's wall time); audio never does.
        let t0 = Instant::now();
        let mut recording = Recording::new(&[Codec::Vp8, Codec::Opus], RecordingSettings::default(), t0).expect("recording");
        let (video_rtp0, audio_rtp0) = (777_000u32, 3_000_000_000u32);
        recording.on_sender_report(0, ntp(crate::clock::ntp_now_micros()), video_rtp0);
        let mut vp8_payloader = Vp8Payloader::default();
        let mut events: Vec<(i64, bool, u32)> = (0..30u32).map(|f| (i64::from(f) * 1_000_000 / 30, true, f)).collect();
        events.extend((0..50u32).map(|f| (i64::from(f) * 20_000 + 1, false, f)));
        events.sort();
        let mut seq = [0u16; 2];
        for (at, is_video, f) in events {
            let now = t0 + Duration::from_micros(at as u64);
            if is_video {
                let payloads = vp8_payloader.payload(1200, &vp8(f == 0, 600)).expect("payloads");
                let count = payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    let packet = RtpPacket { sequence: seq[0], timestamp: video_rtp0 + f * 3000, marker: i + 1 == count, payload };
                    recording.on_rtp(now, 0, packet).expect("rtp");
                    seq[0] += 1;
                }
            } else {
                let payload = Bytes::from_static(&[0xfc, 0xff, 0xfe]);
                recording
                    .on_rtp(now, 1, RtpPacket { sequence: seq[1], timestamp: audio_rtp0 + f * 960, marker: false, payload })
                    .expect("rtp");
                seq[1] += 1;
            }
        }
        recording.finish().expect("finish");
        let mut file = Vec::new();
        while let Some(output) = recording.next_output() {
            match output {
                Output::InitSegment(data) | Output::MediaSegment { data, .. } => file.extend_from_slice(&data),
                Output::KeyframeRequest { .. } | Output::Gap { .. } => {}
            }
        }
        let path = std::env::temp_dir().join(format!("switchboard-arrival-{}.mp4", std::process::id()));
        std::fs::write(&path, &file).expect("written");
        let probe = ffprobe(&path);
        let _ = std::fs::remove_file(&path);
        let packets: Vec<u32> =
            probe["streams"].as_array().expect("streams").iter().filter_map(|s| s["nb_read_packets"].as_str()?.parse().ok()).collect();
        // The first audio frame may fall a few microseconds before the video's start.
        assert_eq!(packets[0], 30);
        assert!((49..=50).contains(&packets[1]), "the audio shares the video's timeline: {probe}");
    }
}
