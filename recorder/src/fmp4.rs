//! Fragmented MP4 (CMAF) of one participant's audio and video, with `shiguredo_mp4`: an
//! initialization segment (`ftyp` + `moov`), then media segments (`moof` + `mdat`) as the
//! recording goes. The initialization segment followed by every media segment is a playable
//! MP4 file, so a recording that stops abruptly is playable up to its last fragment; the same
//! segments, apart, are HLS's fMP4 segments.
//!
//! Times are the recording's media time in microseconds (both tracks on one clock, see
//! [`clock`](crate::clock)); each track's first sample starts at 0 of its own timeline, so a
//! recording starts its tracks together (the caller starts video on a keyframe and drops the
//! audio before it).

use std::num::NonZeroU32;

use bytes::Bytes;
use shiguredo_mp4::bitstream::av1::{build_av01_box_from_config_obus, parse_obus, Av1ObuParseContext, Av1ObuType, Av1SampleEntryConfig};
use shiguredo_mp4::bitstream::h264::{annexb_to_length_prefixed, build_avc1_box_from_annexb, H264SampleEntryConfig, LengthSize};
use shiguredo_mp4::bitstream::opus::{build_opus_box, ChannelCount, OpusSampleEntryConfig};
use shiguredo_mp4::bitstream::vp8::{build_vp08_box, parse_frame_header, Vp8SampleEntryConfig};
use shiguredo_mp4::bitstream::vp9::{self, build_vp09_box, Vp9FrameSize, Vp9SampleEntryConfig};
use shiguredo_mp4::boxes::SampleEntry;
use shiguredo_mp4::mux::{Fmp4SegmentMuxer, Sample};
use shiguredo_mp4::TrackKind;

use crate::assembler::{Codec, Frame};

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    /// The codec cannot be written to MP4 by this writer.
    #[error("{0:?} cannot be recorded to MP4 yet")]
    UnsupportedCodec(Codec),
    /// The first frame of a video track is not a keyframe with what the sample entry needs.
    #[error("cannot describe the {codec:?} track: {reason}")]
    SampleEntry {
        /// The codec.
        codec: Codec,
        /// What is missing.
        reason: String,
    },
    /// The muxer refused.
    #[error("MP4 muxer: {0}")]
    Mux(String),
}

/// A sample waiting for its successor, which gives its duration.
struct Held {
    at_micros: i64,
    data: Bytes,
    keyframe: bool,
}

/// One track's state.
struct Track {
    kind: TrackKind,
    codec: Codec,
    timescale: NonZeroU32,
    entry: Option<SampleEntry>,
    /// Whether the muxer has seen the sample entry.
    described: bool,
    held: Option<Held>,
    /// Media time of the track's first sample.
    origin: Option<i64>,
}

impl Track {
    fn new(codec: Codec) -> Self {
        let kind = if codec.is_audio() { TrackKind::Audio } else { TrackKind::Video };
        let timescale = NonZeroU32::new(codec.clock_rate()).unwrap_or(NonZeroU32::MIN);
        Self { kind, codec, timescale, entry: None, described: false, held: None, origin: None }
    }

    /// Timescale units of a media time, from the track's first sample.
    fn ticks(&self, at_micros: i64) -> i64 {
        let since = at_micros - self.origin.unwrap_or(at_micros);
        (since * i64::from(self.timescale.get()) + 500_000).div_euclid(1_000_000)
    }
}

/// A sample ready for the next fragment.
struct Ready {
    kind: TrackKind,
    timescale: NonZeroU32,
    entry: Option<SampleEntry>,
    duration: u32,
    keyframe: bool,
    data: Bytes,
}

/// The writer of one recording.
pub struct Fmp4Writer {
    muxer: Fmp4SegmentMuxer,
    tracks: Vec<Track>,
    ready: Vec<Ready>,
    init: Option<Bytes>,
}

/// Duration given to a track's last sample, which has no successor: 20 ms of audio, one
/// frame at 30 fps of video.
fn last_sample_micros(codec: Codec) -> i64 {
    if codec.is_audio() {
        20_000
    } else {
        33_333
    }
}

fn sample_entry(codec: Codec, frame: &Frame) -> Result<SampleEntry, Fmp4Error> {
    let failed = |reason: String| Fmp4Error::SampleEntry { codec, reason };
    match codec {
        Codec::Opus => Ok(SampleEntry::Opus(build_opus_box(&OpusSampleEntryConfig {
            channel_count: ChannelCount::Stereo,
            pre_skip: 312,
            input_sample_rate: 48_000,
            output_gain: 0,
        }))),
        Codec::H264 => {
            let config = H264SampleEntryConfig { length_size: LengthSize::FourBytes };
            build_avc1_box_from_annexb(&frame.data, &config).map(SampleEntry::Avc1).map_err(|e| failed(e.to_string()))
        }
        Codec::Vp8 => {
            let header = parse_frame_header(&frame.data).map_err(|e| failed(e.to_string()))?;
            let key = header.keyframe.ok_or_else(|| failed("the first frame is not a keyframe".into()))?;
            Ok(SampleEntry::Vp08(build_vp08_box(&Vp8SampleEntryConfig {
                video_full_range_flag: false,
                colour_primaries: Vp8SampleEntryConfig::COLOUR_PRIMARIES_BT601,
                transfer_characteristics: Vp8SampleEntryConfig::TRANSFER_CHARACTERISTICS_BT601,
                matrix_coefficients: Vp8SampleEntryConfig::MATRIX_COEFFICIENTS_BT601,
                width: key.width,
                height: key.height,
            })))
        }
        Codec::Vp9 => {
            let header = vp9::parse_frame_header(&frame.data).map_err(|e| failed(e.to_string()))?;
            let Vp9FrameSize::Resolved { width, height } = header.frame_size else {
                return Err(failed("the first frame is not a keyframe".into()));
            };
            let config = Vp9SampleEntryConfig {
                level: Vp9SampleEntryConfig::LEVEL_UNDEFINED,
                colour_primaries: Vp8SampleEntryConfig::COLOUR_PRIMARIES_BT601,
                transfer_characteristics: Vp8SampleEntryConfig::TRANSFER_CHARACTERISTICS_BT601,
                matrix_coefficients: Vp8SampleEntryConfig::MATRIX_COEFFICIENTS_BT601,
                width: u16::try_from(width).unwrap_or(u16::MAX),
                height: u16::try_from(height).unwrap_or(u16::MAX),
            };
            build_vp09_box(&header, &config).map(SampleEntry::Vp09).map_err(|e| failed(e.to_string()))
        }
        Codec::Av1 => {
            // av1C carries the sequence header OBU of the first keyframe.
            let obus = parse_obus(&frame.data, Av1ObuParseContext::Sample).map_err(|e| failed(e.to_string()))?;
            let sequence = obus
                .iter()
                .find(|obu| matches!(obu.obu_type, Av1ObuType::SequenceHeader))
                .ok_or_else(|| failed("the first frame has no sequence header".into()))?;
            let config = Av1SampleEntryConfig { initial_presentation_delay_minus_one: None };
            build_av01_box_from_config_obus(sequence.obu, &config).map(SampleEntry::Av01).map_err(|e| failed(e.to_string()))
        }
    }
}

/// The sample bytes MP4 stores: H.264 as length-prefixed NAL units, AV1 as its OBUs without
/// temporal delimiters (the depacketizer already drops them; an encoder's stream has them).
fn sample_data(codec: Codec, frame: &Frame) -> Result<Bytes, Fmp4Error> {
    let failed = |e: shiguredo_mp4::Error| Fmp4Error::SampleEntry { codec, reason: e.to_string() };
    match codec {
        Codec::H264 => annexb_to_length_prefixed(&frame.data, LengthSize::FourBytes).map(Bytes::from).map_err(failed),
        Codec::Av1 => {
            let obus = parse_obus(&frame.data, Av1ObuParseContext::Sample).map_err(failed)?;
            if obus.iter().all(|obu| !matches!(obu.obu_type, Av1ObuType::TemporalDelimiter)) {
                return Ok(frame.data.clone());
            }
            let kept = obus.iter().filter(|obu| !matches!(obu.obu_type, Av1ObuType::TemporalDelimiter));
            Ok(Bytes::from(kept.flat_map(|obu| obu.obu.iter().copied()).collect::<Vec<u8>>()))
        }
        _ => Ok(frame.data.clone()),
    }
}

impl Fmp4Writer {
    /// A writer for these tracks (one audio and/or one video codec).
    pub fn new(codecs: &[Codec]) -> Result<Self, Fmp4Error> {
        let muxer = Fmp4SegmentMuxer::new().map_err(|e| Fmp4Error::Mux(e.to_string()))?;
        Ok(Self { muxer, tracks: codecs.iter().map(|c| Track::new(*c)).collect(), ready: Vec::new(), init: None })
    }

    /// Adds a frame of the track with `codec` at media time `at_micros`. A video track's first
    /// frame must be a keyframe (it describes the track).
    pub fn push(&mut self, codec: Codec, at_micros: i64, frame: &Frame) -> Result<(), Fmp4Error> {
        let Some(index) = self.tracks.iter().position(|t| t.codec == codec) else { return Err(Fmp4Error::UnsupportedCodec(codec)) };
        let track = &mut self.tracks[index];
        if track.entry.is_none() {
            track.entry = Some(sample_entry(codec, frame)?);
            track.origin = Some(at_micros);
        }
        let data = sample_data(codec, frame)?;
        let previous = track.held.replace(Held { at_micros, data, keyframe: frame.keyframe });
        if let Some(previous) = previous {
            self.make_ready(index, previous, at_micros);
        }
        Ok(())
    }

    fn make_ready(&mut self, index: usize, held: Held, next_micros: i64) {
        let track = &mut self.tracks[index];
        let duration = (track.ticks(next_micros) - track.ticks(held.at_micros)).clamp(1, i64::from(u32::MAX)) as u32;
        let entry = if track.described { None } else { track.entry.clone() };
        track.described = true;
        self.ready.push(Ready { kind: track.kind, timescale: track.timescale, entry, duration, keyframe: held.keyframe, data: held.data });
    }

    /// Ends the held sample of the track with `codec` at `end_micros`, so that the next
    /// fragment starts with the track's next frame (a segment boundary on a keyframe).
    pub fn seal(&mut self, codec: Codec, end_micros: i64) {
        let Some(index) = self.tracks.iter().position(|t| t.codec == codec) else { return };
        if let Some(held) = self.tracks[index].held.take() {
            self.make_ready(index, held, end_micros);
        }
    }

    /// The media segment of the samples since the last one, or `None` if there are none.
    pub fn fragment(&mut self) -> Result<Option<Bytes>, Fmp4Error> {
        if self.ready.is_empty() {
            return Ok(None);
        }
        let mut ready = std::mem::take(&mut self.ready);
        // One run of data per track in a fragment: video's samples, then audio's, each in order.
        ready.sort_by_key(|r| r.kind == TrackKind::Audio);
        let mut offset = 0u64;
        let samples: Vec<Sample> = ready
            .iter()
            .map(|r| {
                let sample = Sample {
                    track_kind: r.kind,
                    timescale: r.timescale,
                    sample_entry: r.entry.clone(),
                    duration: r.duration,
                    keyframe: r.keyframe,
                    composition_time_offset: None,
                    data_offset: offset,
                    data_size: r.data.len(),
                };
                offset += r.data.len() as u64;
                sample
            })
            .collect();
        let metadata = self.muxer.create_media_segment_metadata(&samples).map_err(|e| Fmp4Error::Mux(e.to_string()))?;
        if self.init.is_none() {
            self.init = Some(Bytes::from(self.muxer.init_segment_bytes().map_err(|e| Fmp4Error::Mux(e.to_string()))?));
        }
        let mut segment = metadata;
        segment.reserve(offset as usize);
        for r in &ready {
            segment.extend_from_slice(&r.data);
        }
        Ok(Some(Bytes::from(segment)))
    }

    /// The initialization segment, known once the first media segment is made.
    pub fn init_segment(&self) -> Option<Bytes> {
        self.init.clone()
    }

    /// Closes every track (its last sample gets a nominal duration) and returns the last
    /// media segment.
    pub fn finish(&mut self) -> Result<Option<Bytes>, Fmp4Error> {
        for index in 0..self.tracks.len() {
            if let Some(held) = self.tracks[index].held.take() {
                let end = held.at_micros + last_sample_micros(self.tracks[index].codec);
                self.make_ready(index, held, end);
            }
        }
        self.fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ffprobe, vp8};

    #[test]
    fn a_fragmented_file_of_vp8_and_opus_is_what_ffprobe_reads() {
        let mut writer = Fmp4Writer::new(&[Codec::Vp8, Codec::Opus]).expect("writer");
        let mut file = Vec::new();
        let mut fragments = Vec::new();
        // Three seconds: video at 30 fps with a keyframe each second, audio every 20 ms.
        let mut events: Vec<(i64, bool)> = (0..90).map(|f| (f * 1_000_000 / 30, true)).collect();
        events.extend((0..150).map(|f| (f * 20_000, false)));
        events.sort();
        let mut video_frames = 0;
        for (at, is_video) in events {
            if is_video {
                let key = video_frames % 30 == 0;
                if key && video_frames > 0 {
                    fragments.push(writer.fragment().expect("fragment").expect("samples"));
                }
                let frame = Frame { timestamp: 0, data: vp8(key, if key { 4000 } else { 900 }), keyframe: key };
                writer.push(Codec::Vp8, at, &frame).expect("video frame");
                video_frames += 1;
            } else {
                let frame = Frame { timestamp: 0, data: Bytes::from(vec![0xfc, 0xff, 0xfe]), keyframe: true };
                writer.push(Codec::Opus, at, &frame).expect("audio frame");
            }
        }
        fragments.push(writer.finish().expect("finish").expect("samples"));
        file.extend_from_slice(&writer.init_segment().expect("init segment"));
        for fragment in &fragments {
            file.extend_from_slice(fragment);
        }
        let path = std::env::temp_dir().join(format!("switchboard-fmp4-{}.mp4", std::process::id()));
        std::fs::write(&path, &file).expect("written");
        let probe = ffprobe(&path);
        let _ = std::fs::remove_file(&path);
        let streams = probe["streams"].as_array().expect("streams");
        let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
        assert_eq!(codecs, ["vp8", "opus"], "{probe}");
        let packets: Vec<&str> = streams.iter().filter_map(|s| s["nb_read_packets"].as_str()).collect();
        assert_eq!(packets, ["90", "150"], "every frame is a sample");
        let duration: f64 = probe["format"]["duration"].as_str().and_then(|d| d.parse().ok()).expect("duration");
        assert!((duration - 3.0).abs() < 0.05, "duration {duration}");
        assert_eq!(fragments.len(), 3, "one fragment per second");
    }

    #[test]
    fn h264_is_stored_length_prefixed_behind_an_avc1_entry_from_its_sps() {
        // SPS and PPS of a 320x240 constrained-baseline stream (x264).
        let sps = "6742c00dd90141fb0110000003001000000303c0f142a480";
        let pps = "68cb83cb20";
        let hex = |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex")).collect::<Vec<u8>>();
        let annex_b = |nals: &[Vec<u8>]| {
            let mut out = Vec::new();
            for nal in nals {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(nal);
            }
            Bytes::from(out)
        };
        let mut writer = Fmp4Writer::new(&[Codec::H264]).expect("writer");
        for f in 0..60i64 {
            let key = f % 30 == 0;
            let slice: Vec<u8> = std::iter::once(if key { 0x65 } else { 0x41 }).chain(std::iter::repeat_n(0x77, 300)).collect();
            let nals = if key { vec![hex(sps), hex(pps), slice] } else { vec![slice] };
            writer.push(Codec::H264, f * 1_000_000 / 30, &Frame { timestamp: 0, data: annex_b(&nals), keyframe: key }).expect("frame");
        }
        let last = writer.finish().expect("finish").expect("samples");
        let mut file = writer.init_segment().expect("init").to_vec();
        file.extend_from_slice(&last);
        let path = std::env::temp_dir().join(format!("switchboard-h264-{}.mp4", std::process::id()));
        std::fs::write(&path, &file).expect("written");
        let probe = ffprobe(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(probe["streams"][0]["codec_name"], "h264", "{probe}");
        assert_eq!(probe["streams"][0]["nb_read_packets"], "60");
    }

    /// Frames of one second of a test pattern encoded by ffmpeg (`encoder`, IVF container).
    fn encoded_ivf_frames(encoder: &str) -> Vec<Bytes> {
        let path = std::env::temp_dir().join(format!("switchboard-{encoder}-{}.ivf", std::process::id()));
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-frames:v", "30", "-pix_fmt", "yuv420p"])
            .args(["-c:v", encoder, "-cpu-used", "8", "-g", "15", "-f", "ivf"])
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success(), "ffmpeg encoded with {encoder}");
        let ivf = std::fs::read(&path).expect("ivf");
        let _ = std::fs::remove_file(&path);
        let mut frames = Vec::new();
        let mut at = usize::from(u16::from_le_bytes([ivf[6], ivf[7]]));
        while at + 12 <= ivf.len() {
            let size = u32::from_le_bytes([ivf[at], ivf[at + 1], ivf[at + 2], ivf[at + 3]]) as usize;
            frames.push(Bytes::copy_from_slice(&ivf[at + 12..at + 12 + size]));
            at += 12 + size;
        }
        frames
    }

    fn without_temporal_delimiter(codec: Codec, frame: Bytes) -> Bytes {
        // A temporal delimiter OBU with its size field: header 0x12, size 0.
        if codec == Codec::Av1 && frame.starts_with(&[0x12, 0x00]) {
            frame.slice(2..)
        } else {
            frame
        }
    }

    /// Decodes a file completely; returns ffmpeg's complaints.
    fn decode_errors(path: &std::path::Path) -> String {
        let output = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg runs");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    #[test]
    fn real_vp8_vp9_and_av1_streams_decode_without_errors() {
        let encoders = [(Codec::Vp8, "libvpx", "vp8"), (Codec::Vp9, "libvpx-vp9", "vp9"), (Codec::Av1, "libaom-av1", "av1")];
        for (codec, encoder, name) in encoders {
            // The depacketizer hands AV1 on without temporal delimiters; the encoder's IVF
            // temporal units start with one.
            let frames: Vec<Bytes> = encoded_ivf_frames(encoder).into_iter().map(|f| without_temporal_delimiter(codec, f)).collect();
            assert_eq!(frames.len(), 30);
            let mut writer = Fmp4Writer::new(&[codec]).expect("writer");
            let mut file = Vec::new();
            let mut fragments = Vec::new();
            for (i, data) in frames.iter().enumerate() {
                let keyframe = crate::assembler::is_keyframe(codec, data);
                if keyframe && i > 0 {
                    fragments.push(writer.fragment().expect("fragment").expect("samples"));
                }
                writer.push(codec, i as i64 * 1_000_000 / 30, &Frame { timestamp: 0, data: data.clone(), keyframe }).expect("frame");
            }
            fragments.push(writer.finish().expect("finish").expect("samples"));
            assert_eq!(fragments.len(), 2, "{name}: a fragment per keyframe interval");
            file.extend_from_slice(&writer.init_segment().expect("init"));
            fragments.iter().for_each(|f| file.extend_from_slice(f));
            let path = std::env::temp_dir().join(format!("switchboard-{name}-{}.mp4", std::process::id()));
            std::fs::write(&path, &file).expect("written");
            let probe = ffprobe(&path);
            let errors = decode_errors(&path);
            let _ = std::fs::remove_file(&path);
            assert_eq!(probe["streams"][0]["codec_name"], name, "{probe}");
            assert_eq!(probe["streams"][0]["nb_read_packets"], "30");
            assert_eq!(errors, "", "{name} decodes cleanly");
        }
    }

    #[test]
    fn a_real_h264_stream_decodes_without_errors() {
        let path = std::env::temp_dir().join(format!("switchboard-x264-{}.h264", std::process::id()));
        let status = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-frames:v", "30", "-pix_fmt", "yuv420p"])
            .args(["-c:v", "libx264", "-profile:v", "baseline", "-g", "15", "-x264-params", "aud=1", "-f", "h264"])
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success());
        let stream = std::fs::read(&path).expect("h264");
        // Access units start at each access unit delimiter (00 00 00 01 09).
        let starts: Vec<usize> = stream.windows(5).enumerate().filter(|(_, w)| *w == [0, 0, 0, 1, 9]).map(|(i, _)| i).collect();
        let units: Vec<Bytes> = starts
            .iter()
            .enumerate()
            .map(|(n, &s)| Bytes::copy_from_slice(&stream[s..*starts.get(n + 1).unwrap_or(&stream.len())]))
            .collect();
        assert_eq!(units.len(), 30);
        let mut writer = Fmp4Writer::new(&[Codec::H264]).expect("writer");
        let mut file = Vec::new();
        let mut fragments = Vec::new();
        for (i, unit) in units.iter().enumerate() {
            let keyframe = crate::assembler::is_keyframe(Codec::H264, unit);
            if keyframe && i > 0 {
                fragments.push(writer.fragment().expect("fragment").expect("samples"));
            }
            writer.push(Codec::H264, i as i64 * 1_000_000 / 30, &Frame { timestamp: 0, data: unit.clone(), keyframe }).expect("frame");
        }
        fragments.push(writer.finish().expect("finish").expect("samples"));
        assert_eq!(fragments.len(), 2, "IDR frames found at 0 and 15");
        file.extend_from_slice(&writer.init_segment().expect("init"));
        fragments.iter().for_each(|f| file.extend_from_slice(f));
        let mp4 = path.with_extension("mp4");
        std::fs::write(&mp4, &file).expect("written");
        let probe = ffprobe(&mp4);
        let errors = decode_errors(&mp4);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&mp4);
        assert_eq!(probe["streams"][0]["codec_name"], "h264", "{probe}");
        assert_eq!(probe["streams"][0]["nb_read_packets"], "30");
        assert_eq!(errors, "", "h264 decodes cleanly");
    }

    #[test]
    fn video_must_start_on_a_keyframe() {
        let mut writer = Fmp4Writer::new(&[Codec::Vp8]).expect("writer");
        let inter = Frame { timestamp: 0, data: vp8(false, 500), keyframe: false };
        assert!(matches!(writer.push(Codec::Vp8, 0, &inter), Err(Fmp4Error::SampleEntry { .. })));
        assert_eq!(writer.fragment().expect("nothing to write"), None);
    }
}
