//! Simulcast: which of a track's layers each subscriber is sent.
//!
//! A simulcast publisher sends one track as several independent streams (layers, lowest
//! resolution first), each with its own SSRC, sequence numbers and keyframes. A subscriber
//! gets one of them at a time. It can only be moved to another layer where that layer's
//! keyframe starts, since its decoder knows nothing of the new layer's earlier frames; until
//! then it keeps the layer it has. [`LayerSelector`] makes that decision per packet, and
//! [`LiveLayers`] tells which layers the publisher is sending at all (a browser stops the
//! upper ones when its uplink or CPU cannot carry them, or when an encoding is deactivated).

use std::time::{Duration, Instant};

/// How long a layer may go without a packet before it counts as stopped: subscribers on it
/// move down to the highest layer still sending. Browsers send a frame at least every
/// 100 ms or so on a camera track, so this is several frames missed.
pub const LAYER_SILENCE: Duration = Duration::from_millis(500);

/// The payload format of a track, as far as switching layers needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// VP8 (RFC 7741): keyframes and picture numbers are read from its descriptor.
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184).
    H264,
    /// H.265 (RFC 7798).
    H265,
    /// AV1 (the AOM RTP payload format).
    Av1,
    /// Anything else: its keyframes are not recognised, so a subscriber is switched at once
    /// and its decoder asks for the keyframe it lacks.
    Other,
}

impl PayloadFormat {
    /// The format of a codec by its MIME type (`video/VP8`).
    pub fn of(mime_type: &str) -> Self {
        let subtype = mime_type.rsplit('/').next().unwrap_or_default();
        match subtype.to_ascii_uppercase().as_str() {
            "VP8" => Self::Vp8,
            "VP9" => Self::Vp9,
            "H264" => Self::H264,
            "H265" => Self::H265,
            "AV1" => Self::Av1,
            _ => Self::Other,
        }
    }

    /// Whether `payload` is the first packet of a keyframe (of a format not recognised: any
    /// packet).
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        let first = payload.first().copied().unwrap_or_default();
        match self {
            Self::Vp8 => crate::vp8::is_keyframe_start(payload),
            Self::H264 => crate::h264::is_keyframe_start(payload),
            Self::H265 => crate::h265::is_keyframe_start(payload),
            // VP9 descriptor: B (start of a frame) set, P (inter-picture predicted) clear.
            Self::Vp9 => !payload.is_empty() && first & 0x08 != 0 && first & 0x40 == 0,
            // AV1 aggregation header: N, the first packet of a coded video sequence.
            Self::Av1 => first & 0x08 != 0,
            Self::Other => true,
        }
    }
}

/// A picture's size in pixels, as a layer's keyframes give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl FrameSize {
    /// Whether pictures of this size, shown scaled to fit a box of `shown` keeping their
    /// aspect (CSS `object-fit: contain`), are scaled down or not at all: they reach at least
    /// one of the box's sides.
    pub fn covers(self, shown: FrameSize) -> bool {
        self.width >= shown.width || self.height >= shown.height
    }
}

/// The lowest layer of `sizes` (lowest first; `None` where no keyframe told it yet) whose
/// pictures cover a box of `shown` ([`FrameSize::covers`]); the top layer if none does.
pub fn layer_for_size(sizes: impl IntoIterator<Item = Option<FrameSize>>, shown: FrameSize) -> usize {
    let mut top = 0;
    for (layer, size) in sizes.into_iter().enumerate() {
        if size.is_some_and(|size| size.covers(shown)) {
            return layer;
        }
        top = layer;
    }
    top
}

/// What to do with one packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not its layer: drop it.
    Drop,
    /// Its layer: forward it.
    Forward,
    /// The keyframe it was waiting for: forward it, the first packet of its new layer.
    Switch,
}

/// The layer one subscriber is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerSelector {
    /// `None` until its first keyframe (or again after [`LayerSelector::restart`]).
    current: Option<usize>,
}

impl LayerSelector {
    /// Decides on a packet of `layer`, the subscriber being meant to get `target`;
    /// `keyframe_start` is asked only when the packet could be the switch to `target`.
    pub fn decide(&mut self, layer: usize, target: usize, keyframe_start: impl FnOnce() -> bool) -> Decision {
        if self.current != Some(target) && layer == target && keyframe_start() {
            self.current = Some(layer);
            return Decision::Switch;
        }
        // Its layer, which carries on while a switch waits for the target's keyframe.
        if self.current == Some(layer) {
            Decision::Forward
        } else {
            Decision::Drop
        }
    }

    /// The layer it is sent, once it got a keyframe.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// Whether it waits for a keyframe of `target`.
    pub fn waits_for(&self, target: usize) -> bool {
        self.current != Some(target)
    }

    /// Waits for the next keyframe before sending anything again (a track resumed after a
    /// mute: whatever it was sent last, the decoder needs a fresh start).
    pub fn restart(&mut self) {
        self.current = None;
    }
}

/// Which layers of a track the publisher is sending.
#[derive(Debug, Clone)]
pub struct LiveLayers {
    last_seen: Vec<Option<Instant>>,
    top: usize,
    /// When the track's first packet came.
    first_seen: Option<Instant>,
}

impl LiveLayers {
    /// A track of `layers` layers, none sending yet.
    pub fn new(layers: usize) -> Self {
        Self { last_seen: vec![None; layers.max(1)], top: 0, first_seen: None }
    }

    /// Notes a packet of `layer` at `now`; returns the highest layer sending, which
    /// subscribers are moved to.
    pub fn on_packet(&mut self, now: Instant, layer: usize) -> usize {
        self.first_seen.get_or_insert(now);
        if let Some(seen) = self.last_seen.get_mut(layer) {
            *seen = Some(now);
        }
        if layer > self.top {
            self.top = layer;
        } else if layer < self.top && self.last_seen[self.top].is_none_or(|at| now.saturating_duration_since(at) > LAYER_SILENCE) {
            self.top = (0..self.last_seen.len()).rev().find(|&l| self.is_sending(now, l)).unwrap_or(layer);
        }
        self.top
    }

    /// The highest layer sending, as of the last packet.
    pub fn top(&self) -> usize {
        self.top
    }

    /// Whether the track has sent for [`LAYER_SILENCE`]: long enough for every layer it
    /// sends to have been seen, so [`LiveLayers::top`] is the top one, not merely the first.
    pub fn settled(&self, now: Instant) -> bool {
        self.first_seen.is_some_and(|at| now.saturating_duration_since(at) >= LAYER_SILENCE)
    }

    /// Whether `layer` sent a packet within [`LAYER_SILENCE`] of `now`.
    pub fn is_sending(&self, now: Instant, layer: usize) -> bool {
        self.last_seen.get(layer).copied().flatten().is_some_and(|at| now.saturating_duration_since(at) <= LAYER_SILENCE)
    }

    /// The highest layer up to `cap` that sends at `now`; the lowest that sends if none
    /// below the cap does.
    pub fn highest_sending_at_most(&self, now: Instant, cap: usize) -> usize {
        let sending = |layer: &usize| self.is_sending(now, *layer);
        (0..=cap.min(self.last_seen.len() - 1)).rev().find(sending).or_else(|| (0..self.last_seen.len()).find(sending)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_starts_and_switches_only_on_a_keyframe_of_its_target() {
        let mut s = LayerSelector::default();
        assert_eq!(s.decide(2, 2, || false), Decision::Drop, "nothing before a keyframe");
        assert_eq!(s.decide(0, 2, || true), Decision::Drop, "another layer's keyframe");
        assert_eq!(s.decide(2, 2, || true), Decision::Switch);
        assert_eq!(s.decide(2, 2, || unreachable!("not asked on its own layer")), Decision::Forward);
        assert_eq!(s.decide(1, 2, || true), Decision::Drop);
        // Down to layer 1: layer 2 is forwarded until layer 1's keyframe.
        assert!(s.waits_for(1));
        assert_eq!(s.decide(1, 1, || false), Decision::Drop);
        assert_eq!(s.decide(2, 1, || false), Decision::Forward, "the old layer until the switch");
        assert_eq!(s.decide(1, 1, || true), Decision::Switch);
        assert_eq!(s.decide(2, 1, || true), Decision::Drop, "late packets of the old layer");
        assert!(!s.waits_for(1));
        s.restart();
        assert_eq!(s.decide(1, 1, || false), Decision::Drop, "waits for a keyframe after a restart");
    }

    #[test]
    fn the_top_layer_drops_when_it_goes_silent_and_returns_with_its_packets() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut live = LiveLayers::new(3);
        assert_eq!(live.on_packet(at(0), 0), 0);
        assert_eq!(live.on_packet(at(1), 2), 2);
        assert_eq!(live.on_packet(at(2), 1), 2);
        assert_eq!(live.on_packet(at(400), 1), 2);
        assert_eq!(live.on_packet(at(500), 0), 2, "layer 2 silent for 499 ms");
        assert_eq!(live.on_packet(at(590), 1), 1, "layer 2 stopped; layer 1 still sends");
        assert_eq!(live.on_packet(at(1200), 0), 0, "layer 1 stopped too");
        assert_eq!(live.on_packet(at(1300), 2), 2, "layer 2 resumed");
        assert_eq!(live.on_packet(at(1301), 0), 2);
        assert_eq!(live.highest_sending_at_most(at(1301), 1), 0, "layer 1 stopped");
        assert_eq!(live.highest_sending_at_most(at(1301), 5), 2);
        assert_eq!(LiveLayers::new(3).highest_sending_at_most(at(0), 1), 0, "nothing sends");
        assert!(live.is_sending(at(1301), 0) && !live.is_sending(at(1301), 1), "layer 1 stopped");
        assert!(live.settled(at(500)) && !live.settled(at(499)), "since the first packet");
        assert_eq!(live.top(), 2);
    }

    #[test]
    fn a_box_gets_the_lowest_layer_that_reaches_one_of_its_sides() {
        let size = |width, height| FrameSize { width, height };
        let sizes = [Some(size(320, 180)), Some(size(640, 360)), Some(size(1280, 720))];
        assert_eq!(layer_for_size(sizes, size(320, 180)), 0);
        assert_eq!(layer_for_size(sizes, size(321, 180)), 0, "letterboxed: the height is reached");
        assert_eq!(layer_for_size(sizes, size(400, 400)), 1);
        assert_eq!(layer_for_size(sizes, size(0, 0)), 0, "hidden");
        assert_eq!(layer_for_size(sizes, size(1920, 1080)), 2, "none reaches it: the top one");
        assert_eq!(layer_for_size([None, None, Some(size(1280, 720))], size(200, 100)), 2, "sizes not known yet");
        assert_eq!(layer_for_size([None, Some(size(640, 360)), None], size(200, 100)), 1);
    }

    #[test]
    fn keyframes_are_recognised_per_format() {
        assert_eq!(PayloadFormat::of("video/vp8"), PayloadFormat::Vp8);
        assert_eq!(PayloadFormat::of("video/H264"), PayloadFormat::H264);
        assert_eq!(PayloadFormat::of("audio/opus"), PayloadFormat::Other);
        assert!(PayloadFormat::Vp8.is_keyframe_start(&[0x10, 0x10]));
        assert!(!PayloadFormat::Vp8.is_keyframe_start(&[0x10, 0x11]));
        assert!(PayloadFormat::H264.is_keyframe_start(&[0x65]));
        assert!(PayloadFormat::Vp9.is_keyframe_start(&[0x08]));
        assert!(!PayloadFormat::Vp9.is_keyframe_start(&[0x48]), "inter-predicted");
        assert!(PayloadFormat::Av1.is_keyframe_start(&[0x08]));
        assert!(PayloadFormat::H265.is_keyframe_start(&[19 << 1, 1]));
        assert!(PayloadFormat::Other.is_keyframe_start(&[0x08]), "switched at once");
    }
}
