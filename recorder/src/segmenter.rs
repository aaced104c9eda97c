//! Where HLS segments begin: on video keyframes, once a segment is about the target duration
//! long. `request_ahead` before the target the segmenter asks for a keyframe, and from then
//! on any keyframe ends the segment, so segments stay within `request_ahead` below the target
//! (or end on the sender's own keyframes when it ignores requests).
//! Audio-only recordings cut at the first frame past the target. Sans-IO: times are the
//! recording's media time in microseconds.

/// What the segmenter decides for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The frame continues the current segment.
    Continue,
    /// The frame continues the current segment; ask the sender for a keyframe now.
    ContinueAndRequestKeyframe,
    /// The frame starts a new segment; the previous one lasted `duration_micros`.
    NewSegment {
        /// Length of the segment that ends before this frame.
        duration_micros: i64,
    },
}

/// The segmenter of one recording.
#[derive(Debug, Clone)]
pub struct Segmenter {
    target_micros: i64,
    request_ahead_micros: i64,
    has_video: bool,
    /// Start of the current segment; `None` before the first frame.
    segment_start: Option<i64>,
    requested: bool,
}

impl Segmenter {
    /// A segmenter for segments of `target_micros`, asking for a keyframe
    /// `request_ahead_micros` before a boundary; `has_video` says whether to cut on video
    /// keyframes (else on any frame).
    pub fn new(target_micros: i64, request_ahead_micros: i64, has_video: bool) -> Self {
        Self { target_micros: target_micros.max(1), request_ahead_micros, has_video, segment_start: None, requested: false }
    }

    /// Decides for a frame at media time `at_micros`. `video_keyframe` is whether it is a
    /// video keyframe; audio frames pass `false` when the recording has video.
    pub fn on_frame(&mut self, at_micros: i64, is_video: bool, video_keyframe: bool) -> Cut {
        let Some(start) = self.segment_start else {
            if !self.has_video || video_keyframe {
                self.segment_start = Some(at_micros);
            }
            return Cut::Continue;
        };
        let elapsed = at_micros - start;
        let due = if self.has_video {
            is_video && video_keyframe && elapsed >= self.target_micros - self.request_ahead_micros
        } else {
            elapsed >= self.target_micros
        };
        if due {
            self.segment_start = Some(at_micros);
            self.requested = false;
            return Cut::NewSegment { duration_micros: elapsed };
        }
        if self.has_video && !self.requested && elapsed >= self.target_micros - self.request_ahead_micros {
            self.requested = true;
            return Cut::ContinueAndRequestKeyframe;
        }
        Cut::Continue
    }

    /// Length of the current segment if it ended at `at_micros` (for the last one).
    pub fn current_duration(&self, at_micros: i64) -> i64 {
        self.segment_start.map_or(0, |start| (at_micros - start).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    /// Runs 30 fps video with a keyframe every `gop` frames (and on request, after
    /// `request_delay` frames) plus 50 fps audio; returns the segment durations and the
    /// number of keyframe requests.
    fn run(seconds: i64, gop: i64, answer_requests_after: Option<i64>) -> (Vec<i64>, usize) {
        let mut segmenter = Segmenter::new(6 * SECOND, SECOND / 2, true);
        let mut durations = Vec::new();
        let mut requests = 0;
        let mut keyframe_due_at: Option<i64> = None;
        let mut events: Vec<(i64, bool)> = (0..seconds * 30).map(|f| (f * SECOND / 30, true)).collect();
        events.extend((0..seconds * 50).map(|f| (f * SECOND / 50 + 1, false)));
        events.sort();
        let mut frame = 0;
        for (at, is_video) in events {
            let keyframe = is_video && (frame % gop == 0 || keyframe_due_at.is_some_and(|due| frame >= due));
            if is_video {
                if keyframe {
                    keyframe_due_at = None;
                }
                frame += 1;
            }
            match segmenter.on_frame(at, is_video, keyframe) {
                Cut::NewSegment { duration_micros } => durations.push(duration_micros),
                Cut::ContinueAndRequestKeyframe => {
                    requests += 1;
                    if let Some(delay) = answer_requests_after {
                        keyframe_due_at = Some(frame + delay);
                    }
                }
                Cut::Continue => {}
            }
        }
        (durations, requests)
    }

    #[test]
    fn cuts_on_the_keyframe_answering_each_request() {
        // The sender's own keyframes are 10 s apart; it answers requests within 3 frames.
        let (durations, requests) = run(60, 300, Some(3));
        assert!(requests >= durations.len() && requests <= durations.len() + 1, "one request per boundary");
        for duration in &durations {
            assert!((5_500_000..5_700_000).contains(duration), "segment of {duration} µs");
        }
        assert_eq!(durations.len(), 10);
    }

    #[test]
    fn never_cuts_without_a_keyframe() {
        // A sender that ignores requests: segments last until its own keyframes.
        let (durations, _) = run(40, 300, None);
        assert_eq!(durations, [10 * SECOND, 10 * SECOND, 10 * SECOND]);
    }

    #[test]
    fn starts_on_the_first_keyframe_and_audio_only_cuts_anywhere() {
        let mut video = Segmenter::new(SECOND, 0, true);
        assert_eq!(video.on_frame(0, true, false), Cut::Continue);
        assert_eq!(video.current_duration(5), 0, "no segment before a keyframe");
        video.on_frame(100, true, true);
        assert_eq!(video.current_duration(600), 500);

        let mut audio = Segmenter::new(SECOND, 0, false);
        let cuts: Vec<i64> = (0..160)
            .filter_map(|f| match audio.on_frame(f * 20_000, false, false) {
                Cut::NewSegment { duration_micros } => Some(duration_micros),
                _ => None,
            })
            .collect();
        assert_eq!(cuts, [SECOND, SECOND, SECOND]);
    }
}
