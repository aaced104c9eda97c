//! The forwarding table: published tracks, their subscribers, and the per-packet fan-out.
//!
//! Sans-IO: fed with `(now, packet)` and feedback, it returns the packets to send and the
//! keyframe requests to make. It knows nothing about sockets, SRTP or peer connections, which
//! keeps loss, reordering, restarts and subscriber churn testable in microseconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rtc::rtp;

use crate::ids::{ParticipantKey, TrackId};
use crate::keyframe::KeyframeRequester;
use crate::munger::{seq_is_older, RtpMunger};
use crate::packet_cache::PacketCache;
use crate::retransmit::{BitrateMeter, RetransmitBudget, MAX_PACKETS_PER_NACK};
use crate::simulcast::{layer_for_size, Decision, FrameSize, LayerSelector, LiveLayers, PayloadFormat};
use crate::speakers::AudioLevel;
use crate::vp8::{Descriptor, PictureNumbering, Vp8Patch};
use crate::{h264, vp8, vp9};

/// Whether a track carries audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio (Opus).
    Audio,
    /// Video (VP8, VP9, H.264, AV1).
    Video,
}

/// Tunables of the forwarding table.
#[derive(Debug, Clone)]
pub struct ForwarderSettings {
    /// Most packets kept per video track for retransmission.
    pub nack_cache_packets: usize,
    /// How long a packet is kept for retransmission at most.
    pub nack_cache_age: Duration,
    /// How long a packet is kept for retransmission at least: the window while the
    /// subscribers' round-trip times are short or not known yet.
    pub nack_cache_min_age: Duration,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_interval: Duration,
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        Self {
            nack_cache_packets: 1024,
            nack_cache_age: Duration::from_secs(1),
            nack_cache_min_age: Duration::from_millis(250),
            keyframe_interval: Duration::from_millis(500),
        }
    }
}

/// Round trips of its slowest subscriber a video track's packets are kept for NACKs: a
/// subscriber asks again each round trip, and a packet resent later than this misses its
/// frame anyway.
pub const NACK_ROUND_TRIPS: u32 = 4;

/// What the subscriber's answer fixed for one downtrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The payload type of the track's codec.
    pub payload_type: u8,
    /// The RTX stream (RFC 4588) for retransmissions, when the subscriber accepted RTX.
    pub rtx: Option<RtxStream>,
}

/// An RTX repair stream: its SSRC and payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxStream {
    /// The repair stream's SSRC.
    pub ssrc: u32,
    /// The `rtx` payload type whose `apt` is the track's payload type.
    pub payload_type: u8,
}

/// How a subscriber shows a track (adaptive stream), as its client says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct View {
    /// Not shown at all: nothing of the track is sent to it.
    pub paused: bool,
    /// The box it is shown in, in device pixels; `None`: any size. Of a simulcast track it
    /// gets no layer above the lowest that fills the box ([`layer_for_size`]).
    pub size: Option<FrameSize>,
}

/// A view given for a track the subscriber does not receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber does not receive the track")]
pub struct NotReceived;

/// A simulcast track one subscriber receives, as its downlink's allocation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulcastSubscription {
    /// The track.
    pub track: TrackId,
    /// Its publisher.
    pub publisher: ParticipantKey,
    /// What each layer sends, in bits per second, lowest first (0: it does not send).
    pub layer_rates: Vec<f64>,
    /// The highest layer the subscriber is given now.
    pub current: usize,
    /// The highest layer the subscriber's view needs.
    pub needed: usize,
}

/// Which layers of a simulcast track its subscribers need (see [`Forwarder::layers_needed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayersNeeded {
    /// The track.
    pub track: TrackId,
    /// Its publisher.
    pub publisher: ParticipantKey,
    /// How many layers it has.
    pub layers: usize,
    /// The highest layer any subscriber's view needs; `None` when no one receives it, or
    /// every subscriber paused it.
    pub highest: Option<usize>,
}

/// One subscriber's view of a published track.
#[derive(Debug)]
struct DownTrack<S> {
    subscriber: ParticipantKey,
    ssrc: u32,
    /// `None` until the subscriber answered.
    negotiated: Option<Negotiated>,
    /// Next sequence number of the RTX stream.
    rtx_sequence: u16,
    munger: RtpMunger,
    /// The subscriber's round-trip time from its receiver reports (zero until one came).
    round_trip: Duration,
    /// What it may still have retransmitted.
    budget: RetransmitBudget,
    /// The simulcast layer it is sent.
    selector: LayerSelector,
    /// The highest simulcast layer its downlink is given (see [`crate::allocation`]).
    max_layer: usize,
    /// How its client shows the track.
    view: View,
    /// The highest simulcast layer its view needs, from the sizes the layers send.
    view_layer: usize,
    /// Its VP8 picture numbers, continued across layer switches.
    pictures: PictureNumbering,
    /// What the caller keeps with the subscription.
    link: S,
}

/// One stream of a published track: its only one, or one of its simulcast layers.
#[derive(Debug)]
struct Layer {
    /// The SSRC it is sent on, once known: a simulcast layer's is bound when it opens, a
    /// single-stream track's is whichever sends (a restarted encoder picks another).
    ssrc: Option<u32>,
    /// Its recent packets, for NACKs (video only).
    cache: Option<PacketCache>,
    keyframes: KeyframeRequester,
    /// The newest sequence number it sent (simulcast layers only): an older packet, a late
    /// retransmission, cannot start a switch to it.
    newest: Option<u16>,
    /// What it sends (simulcast layers only).
    bitrate: BitrateMeter,
    /// The picture size of its latest keyframe (simulcast VP8, VP9 and H.264 layers only).
    size: Option<FrameSize>,
}

/// A published track with its subscribers.
#[derive(Debug)]
struct UpTrack<S> {
    publisher: ParticipantKey,
    kind: MediaKind,
    clock_rate: u32,
    format: PayloadFormat,
    /// Its streams, lowest simulcast layer first.
    layers: Vec<Layer>,
    /// Which layers send: simulcast tracks only.
    live: Option<LiveLayers>,
    /// The simulcast layer the taps get: the top one that sends once the track settled, kept
    /// (a recording follows one stream) unless it stops.
    tap: LayerSelector,
    /// What the publisher sends, which bounds what a subscriber may have retransmitted.
    bitrate: BitrateMeter,
    /// Muted by its publisher or an admin: its packets go nowhere.
    muted: bool,
    /// An audio track's loudness, when its packets carry their level.
    level: Option<AudioLevel>,
    downtracks: Vec<DownTrack<S>>,
}

/// A packet ready to be protected and sent to one subscriber.
#[derive(Debug)]
pub struct Outgoing {
    /// Who receives it.
    pub subscriber: ParticipantKey,
    /// Which published track it belongs to.
    pub track: TrackId,
    /// The rewritten packet (payload shared with the source packet, except for RTX).
    pub packet: rtp::Packet,
    /// New VP8 picture numbers, to write into the payload as it is sent (a subscriber
    /// switched between simulcast layers).
    pub patch: Option<Vp8Patch>,
    /// Whether this is a retransmission on the RTX stream rather than on the track's SSRC.
    pub rtx: bool,
}

/// A keyframe request to send to a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyframeRequest {
    /// The publisher of the track.
    pub publisher: ParticipantKey,
    /// The published track.
    pub track: TrackId,
    /// The SSRC the PLI names.
    pub media_ssrc: u32,
}

/// A subscription taken out of the table: who had it, the SSRC it was sent with, and what
/// the caller kept with it.
#[derive(Debug)]
pub struct Removed<S> {
    /// The subscriber.
    pub subscriber: ParticipantKey,
    /// The SSRC the subscriber received the track on.
    pub ssrc: u32,
    /// What the caller kept with the subscription.
    pub link: S,
    /// Where its numbering stood: another track sent on the same SSRC continues from it
    /// ([`Forwarder::subscribe_continuing`]).
    pub munger: RtpMunger,
}

impl<S> DownTrack<S> {
    fn removed(self) -> Removed<S> {
        Removed { subscriber: self.subscriber, ssrc: self.ssrc, link: self.link, munger: self.munger }
    }
}

/// Routes each published track's packets to its subscribers. The table is the one record of
/// a subscription: beside what the packet path needs, each keeps a `link` of the caller's
/// (the engine keeps the subscriber connection's sender there).
#[derive(Debug)]
pub struct Forwarder<S = ()> {
    settings: ForwarderSettings,
    tracks: HashMap<TrackId, UpTrack<S>>,
    /// Keyframe requests the packet path made (for subscribers waiting to switch layers).
    requests: Vec<KeyframeRequest>,
}

impl<S> Forwarder<S> {
    /// An empty forwarding table.
    pub fn new(settings: ForwarderSettings) -> Self {
        Self { settings, tracks: HashMap::new(), requests: Vec::new() }
    }

    /// Registers a published track of one stream. Video tracks get a NACK cache.
    pub fn add_track(&mut self, track: TrackId, publisher: ParticipantKey, kind: MediaKind, clock_rate: u32) {
        self.insert_track(track, publisher, kind, clock_rate, PayloadFormat::Other, 1);
    }

    /// Registers a simulcast video track of `layers` layers (lowest first), whose SSRCs
    /// [`Forwarder::bind_layer`] gives as they open. Each subscriber gets one layer: the
    /// highest that sends, switched at `format`'s keyframes.
    pub fn add_simulcast_track(
        &mut self,
        track: TrackId,
        publisher: ParticipantKey,
        clock_rate: u32,
        format: PayloadFormat,
        layers: usize,
    ) {
        self.insert_track(track, publisher, MediaKind::Video, clock_rate, format, layers.max(1));
        if let Some(up) = self.tracks.get_mut(&track) {
            up.live = Some(LiveLayers::new(layers));
        }
    }

    fn insert_track(
        &mut self,
        track: TrackId,
        publisher: ParticipantKey,
        kind: MediaKind,
        clock_rate: u32,
        format: PayloadFormat,
        layers: usize,
    ) {
        let layer = || Layer {
            ssrc: None,
            cache: (kind == MediaKind::Video).then(|| PacketCache::new(self.settings.nack_cache_packets, self.settings.nack_cache_min_age)),
            keyframes: KeyframeRequester::new(self.settings.keyframe_interval),
            newest: None,
            bitrate: BitrateMeter::default(),
            size: None,
        };
        let up = UpTrack {
            publisher,
            kind,
            clock_rate,
            format,
            layers: (0..layers).map(|_| layer()).collect(),
            live: None,
            tap: LayerSelector::default(),
            bitrate: BitrateMeter::default(),
            muted: false,
            level: None,
            downtracks: Vec::new(),
        };
        self.tracks.insert(track, up);
    }

    /// Gives a simulcast track's layer its SSRC (the stream of that RID opened).
    pub fn bind_layer(&mut self, track: &TrackId, layer: usize, ssrc: u32) {
        if let Some(layer) = self.tracks.get_mut(track).filter(|up| up.live.is_some()).and_then(|up| up.layers.get_mut(layer)) {
            layer.ssrc = Some(ssrc);
        }
    }

    /// Removes a published track; returns its subscriptions, whose senders must be removed.
    pub fn remove_track(&mut self, track: &TrackId) -> Vec<Removed<S>> {
        let Some(up) = self.tracks.remove(track) else { return Vec::new() };
        up.downtracks.into_iter().map(DownTrack::removed).collect()
    }

    /// Reads the audio level of `track`'s packets from the header extension `extension_id`.
    pub fn measure_level(&mut self, track: &TrackId, extension_id: u8) {
        if let Some(up) = self.tracks.get_mut(track) {
            up.level = Some(AudioLevel::new(extension_id));
        }
    }

    /// The smoothed loudness of `track` at `now` (0 for a track whose level is not measured,
    /// or muted).
    pub fn loudness(&self, track: &TrackId, now: Instant) -> f32 {
        self.tracks.get(track).and_then(|up| up.level.as_ref()).map_or(0.0, |level| level.loudness(now))
    }

    /// Number of published tracks in the table.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// Number of subscriptions (downtracks) in the table.
    pub fn subscription_count(&self) -> usize {
        self.tracks.values().map(|t| t.downtracks.len()).sum()
    }

    /// The tracks `subscriber` is subscribed to, each with the SSRC it is sent with and the
    /// caller's link (a scan of the table: for negotiation, not the packet path).
    pub fn subscriptions_of(&self, subscriber: ParticipantKey) -> impl Iterator<Item = (TrackId, u32, &S)> {
        self.tracks.iter().flat_map(move |(track, up)| {
            up.downtracks.iter().filter(move |d| d.subscriber == subscriber).map(move |d| (*track, d.ssrc, &d.link))
        })
    }

    /// The caller's links of `subscriber`'s subscriptions, to change.
    pub fn links_of_mut(&mut self, subscriber: ParticipantKey) -> impl Iterator<Item = &mut S> {
        self.tracks
            .values_mut()
            .flat_map(move |up| up.downtracks.iter_mut().filter(move |d| d.subscriber == subscriber).map(|d| &mut d.link))
    }

    /// Subscribes `subscriber` to `track`, sending with `ssrc` once it has negotiated; the
    /// caller keeps `link` with it. A subscription the subscriber had to the track is replaced.
    pub fn subscribe(&mut self, track: &TrackId, subscriber: ParticipantKey, ssrc: u32, link: S) {
        let _ = self.subscribe_continuing(track, subscriber, ssrc, link, None);
    }

    /// [`Forwarder::subscribe`], numbering the packets on from `munger` (that of a track the
    /// subscriber received on the same SSRC before), so that the subscriber sees one
    /// continuous stream. Gives the munger back if the track is not in the table.
    pub fn subscribe_continuing(
        &mut self,
        track: &TrackId,
        subscriber: ParticipantKey,
        ssrc: u32,
        link: S,
        munger: Option<RtpMunger>,
    ) -> Result<(), Option<RtpMunger>> {
        let Some(up) = self.tracks.get_mut(track) else { return Err(munger) };
        up.downtracks.retain(|d| d.subscriber != subscriber);
        let munger = munger.map(|m| m.with_clock_rate(up.clock_rate)).unwrap_or_else(|| RtpMunger::new(up.clock_rate));
        up.downtracks.push(DownTrack {
            subscriber,
            ssrc,
            negotiated: None,
            rtx_sequence: 0,
            munger,
            round_trip: Duration::ZERO,
            budget: RetransmitBudget::default(),
            selector: LayerSelector::default(),
            max_layer: usize::MAX,
            view: View::default(),
            view_layer: usize::MAX,
            pictures: PictureNumbering::default(),
            link,
        });
        Ok(())
    }

    /// Takes `subscriber`'s subscription to `track` out of the table.
    pub fn unsubscribe(&mut self, track: &TrackId, subscriber: ParticipantKey) -> Option<Removed<S>> {
        let up = self.tracks.get_mut(track)?;
        let index = up.downtracks.iter().position(|d| d.subscriber == subscriber)?;
        Some(up.downtracks.swap_remove(index).removed())
    }

    /// Records what the subscriber negotiated for this track; forwarding to it starts now.
    /// Returns a keyframe request for video, so the new subscriber can start decoding at
    /// once (throttled, and then deferred, with the other subscribers' requests).
    pub fn set_negotiated(
        &mut self,
        now: Instant,
        track: &TrackId,
        subscriber: &ParticipantKey,
        negotiated: Negotiated,
    ) -> Option<KeyframeRequest> {
        let up = self.tracks.get_mut(track)?;
        let down = up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber)?;
        let was_waiting = down.negotiated.replace(negotiated).is_none();
        if was_waiting {
            self.keyframe_request(now, track, Some(subscriber))
        } else {
            None
        }
    }

    /// Takes a subscriber's round-trip time and sets the retransmission window of every
    /// video track it receives to [`NACK_ROUND_TRIPS`] round trips of the slowest of the
    /// track's subscribers, within the configured least and most. A subscriber that left
    /// counts until the next report of another one (they come about every second).
    pub fn set_round_trip(&mut self, subscriber: &ParticipantKey, round_trip: Duration) {
        let (least, most) = (self.settings.nack_cache_min_age, self.settings.nack_cache_age.max(self.settings.nack_cache_min_age));
        for up in self.tracks.values_mut() {
            let Some(down) = up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber) else { continue };
            down.round_trip = round_trip;
            let slowest = up.downtracks.iter().map(|d| d.round_trip).max().unwrap_or_default();
            for cache in up.layers.iter_mut().filter_map(|l| l.cache.as_mut()) {
                cache.set_max_age(slowest.saturating_mul(NACK_ROUND_TRIPS).clamp(least, most));
            }
        }
    }

    /// Removes everything a participant published or subscribed to; returns the removed
    /// tracks with their subscriptions.
    pub fn remove_participant(&mut self, participant: &ParticipantKey) -> Vec<(TrackId, Vec<Removed<S>>)> {
        let published: Vec<TrackId> = self.tracks.iter().filter(|(_, up)| &up.publisher == participant).map(|(id, _)| *id).collect();
        let removed = published
            .into_iter()
            .map(|track| {
                let subscribers = self.remove_track(&track);
                (track, subscribers)
            })
            .collect();
        for up in self.tracks.values_mut() {
            up.downtracks.retain(|d| &d.subscriber != participant);
        }
        removed
    }

    /// Mutes or unmutes a track: a muted track's packets are dropped here. Returns the
    /// keyframe request that lets its subscribers (and taps) resume at once on unmute; the
    /// subscribers of a simulcast track wait for a keyframe of their layer, which the packet
    /// path asks for.
    pub fn set_muted(&mut self, now: Instant, track: &TrackId, muted: bool) -> Option<KeyframeRequest> {
        let up = self.tracks.get_mut(track)?;
        let unmuted = up.muted && !muted;
        up.muted = muted;
        if !unmuted {
            return None;
        }
        for down in &mut up.downtracks {
            down.selector.restart();
        }
        self.keyframe_request(now, track, None)
    }

    /// Whether the taps get this packet (of `ssrc`, with `payload`) of a track, arriving at
    /// `now`: it is not muted, and it is the track's only stream or the simulcast layer the
    /// taps follow. That is the top layer that sends, from its first keyframe once the track
    /// has sent long enough for every layer to show ([`LiveLayers::settled`]), and the same
    /// layer after that while it sends: a recording keeps one stream.
    pub fn is_tapped(&mut self, now: Instant, track: &TrackId, ssrc: u32, payload: &[u8]) -> bool {
        let Some(up) = self.tracks.get_mut(track).filter(|up| !up.muted) else { return false };
        let Some(live) = up.live.as_ref() else { return true };
        let Some(layer) = up.layers.iter().position(|l| l.ssrc == Some(ssrc)) else { return false };
        let target = match up.tap.current() {
            Some(current) if live.is_sending(now, current) => current,
            _ if live.settled(now) => live.top(),
            _ => return false,
        };
        let format = up.format;
        up.tap.decide(layer, target, || format.is_keyframe_start(payload)) != Decision::Drop
    }

    /// Fans one packet of a published track out to its subscribers, appending to `out`;
    /// nothing for a muted track. Header extensions are stripped: their ids are negotiated
    /// per connection. Each subscriber of a simulcast track gets the packets of its layer
    /// only; the keyframe requests this makes for subscribers waiting to switch are taken
    /// with [`Forwarder::take_request`].
    pub fn forward(&mut self, now: Instant, track: &TrackId, mut packet: rtp::Packet, out: &mut Vec<Outgoing>) {
        let Some(up) = self.tracks.get_mut(track) else { return };
        let Some(layer) = up.layer_of(packet.header.ssrc) else { return };
        // Which layers send is followed through a mute, so that subscribers resume on the
        // right one.
        let target = up.live.as_mut().map(|live| live.on_packet(now, layer));
        if up.muted {
            return;
        }
        if let Some(level) = up.level.as_mut() {
            level.on_packet(now, &packet.header);
        }
        strip_extensions(&mut packet.header);
        up.bitrate.add(now, packet_size(&packet));
        if let Some(cache) = up.layers[layer].cache.as_mut() {
            cache.insert(now, &packet);
        }
        let Some(target) = target else {
            for down in up.downtracks.iter_mut().filter(|d| !d.view.paused) {
                if let Some(rewritten) = rewrite(now, down, &packet) {
                    out.push(Outgoing { subscriber: down.subscriber, track: *track, packet: rewritten, patch: None, rtx: false });
                }
            }
            return;
        };
        up.layers[layer].bitrate.add(now, packet_size(&packet));
        let fresh = up.layers[layer].note_sequence(packet.header.sequence_number);
        let format = up.format;
        let descriptor = (format == PayloadFormat::Vp8).then(|| Descriptor::parse(&packet.payload)).flatten();
        let keyframe_start =
            || fresh && descriptor.as_ref().map_or_else(|| format.is_keyframe_start(&packet.payload), |d| d.keyframe_start);
        let size = match (format, &descriptor) {
            (PayloadFormat::Vp8, Some(d)) if d.keyframe_start => packet.payload.get(usize::from(d.len)..).and_then(vp8::frame_size),
            (PayloadFormat::H264, _) => h264::frame_size(&packet.payload),
            (PayloadFormat::Vp9, _) => vp9::frame_size(&packet.payload),
            _ => None,
        };
        if let Some(size) = size {
            up.set_layer_size(layer, size);
        }
        let mut keyframe = None;
        let mut waiting = false;
        let live = up.live.as_ref();
        for down in up.downtracks.iter_mut().filter(|d| d.negotiated.is_some() && !d.view.paused) {
            // Its own target: the highest layer that sends, as far as its downlink is given
            // and its view needs.
            let most = down.max_layer.min(down.view_layer);
            let target = match live {
                Some(live) if most < target => live.highest_sending_at_most(now, most),
                _ => target,
            };
            let decision = down.selector.decide(layer, target, || *keyframe.get_or_insert_with(keyframe_start));
            waiting |= down.selector.waits_for(target) && layer == target;
            match decision {
                Decision::Drop => continue,
                Decision::Forward => {}
                Decision::Switch => {
                    down.munger.switch_source();
                    if let Some(descriptor) = &descriptor {
                        down.pictures.switch(descriptor);
                    }
                }
            }
            let Some(rewritten) = rewrite(now, down, &packet) else { continue };
            let patch = descriptor.as_ref().and_then(|d| down.pictures.renumber(d));
            out.push(Outgoing { subscriber: down.subscriber, track: *track, packet: rewritten, patch, rtx: false });
        }
        // A delta frame of the layer some subscribers wait for: ask for its keyframe (again
        // with each one, once the throttle lets it).
        if waiting {
            if let Some(request) = up.layer_keyframe_request(now, track, layer, Throttled::Dropped) {
                self.requests.push(request);
            }
        }
    }

    /// The simulcast tracks `subscriber` receives and has not paused (a scan of the table:
    /// for allocation, not the packet path).
    pub fn simulcast_subscriptions_of(&self, subscriber: ParticipantKey, now: Instant) -> Vec<SimulcastSubscription> {
        let simulcast = self.tracks.iter().filter_map(|(track, up)| up.live.as_ref().map(|live| (track, up, live)));
        simulcast
            .filter_map(|(track, up, live)| {
                let down = up.downtracks.iter().find(|d| d.subscriber == subscriber && !d.view.paused)?;
                let rates = up
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(index, layer)| if live.is_sending(now, index) { layer.bitrate.smoothed_bytes_per_second() * 8.0 } else { 0.0 })
                    .collect();
                let top = up.layers.len() - 1;
                Some(SimulcastSubscription {
                    track: *track,
                    publisher: up.publisher,
                    layer_rates: rates,
                    current: down.max_layer.min(top),
                    needed: down.view_layer.min(top),
                })
            })
            .collect()
    }

    /// What the tracks of one stream that `subscriber` receives, and has not paused, send, in
    /// bits per second.
    pub fn single_stream_rate_of(&self, subscriber: ParticipantKey) -> f64 {
        let single = self.tracks.values().filter(|up| up.live.is_none() && !up.muted);
        single
            .filter(|up| up.downtracks.iter().any(|d| d.subscriber == subscriber && !d.view.paused))
            .map(|up| up.bitrate.bytes_per_second() * 8.0)
            .sum()
    }

    /// Gives `subscriber` at most `layer` of the simulcast `track`. One sent a higher layer
    /// is sent nothing more of it: its downlink is short of room, and the lower layer's
    /// keyframe comes sooner through a link that drained than queued behind the old layer.
    pub fn set_max_layer(&mut self, track: &TrackId, subscriber: &ParticipantKey, layer: usize) {
        let down = self.tracks.get_mut(track).and_then(|up| up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber));
        if let Some(down) = down {
            down.max_layer = layer;
            if down.selector.current().is_some_and(|current| current > layer) {
                down.selector.restart();
            }
        }
    }

    /// Of every simulcast track, the highest layer its subscribers' views need (a scan of the
    /// table, for dynacast: not the packet path).
    pub fn layers_needed(&self) -> Vec<LayersNeeded> {
        let simulcast = self.tracks.iter().filter(|(_, up)| up.live.is_some());
        simulcast
            .map(|(track, up)| {
                let top = up.layers.len() - 1;
                let viewing = up.downtracks.iter().filter(|d| !d.view.paused);
                let highest = viewing.map(|d| d.view_layer.min(top)).max();
                LayersNeeded { track: *track, publisher: up.publisher, layers: up.layers.len(), highest }
            })
            .collect()
    }

    /// Takes how `subscriber` shows `track` (adaptive stream). A paused track is sent
    /// nothing. On resuming, the numbering goes on from the last packet sent and the
    /// subscriber starts again at a keyframe: of its layer for a simulcast track (the packet
    /// path asks for it); for a single stream, the request returned (unless throttled).
    pub fn set_view(
        &mut self,
        now: Instant,
        track: &TrackId,
        subscriber: &ParticipantKey,
        view: View,
    ) -> Result<Option<KeyframeRequest>, NotReceived> {
        let up = self.tracks.get_mut(track).ok_or(NotReceived)?;
        let view_layer = up.view_layer(view);
        let down = up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber).ok_or(NotReceived)?;
        let resumed = down.view.paused && !view.paused;
        down.view = view;
        down.view_layer = view_layer;
        if !resumed {
            return Ok(None);
        }
        down.munger.switch_source();
        down.selector.restart();
        if up.live.is_some() {
            return Ok(None);
        }
        Ok(up.layer_keyframe_request(now, track, 0, Throttled::Deferred))
    }

    /// A keyframe request the packet path made, to send.
    pub fn take_request(&mut self) -> Option<KeyframeRequest> {
        self.requests.pop()
    }

    /// The header of a padding packet for `subscriber`'s downlink probes: on the repair
    /// stream of the first of its downtracks that negotiated RTX, numbered on that stream;
    /// `None` if none did.
    pub fn padding_header(&mut self, subscriber: ParticipantKey) -> Option<rtp::header::Header> {
        let downtracks = self.tracks.values_mut().flat_map(|up| up.downtracks.iter_mut());
        let (down, stream) = downtracks.filter(|d| d.subscriber == subscriber).find_map(|d| {
            let stream = d.negotiated.and_then(|n| n.rtx)?;
            Some((d, stream))
        })?;
        let sequence_number = down.rtx_sequence;
        down.rtx_sequence = sequence_number.wrapping_add(1);
        Some(rtp::header::Header {
            version: 2,
            payload_type: stream.payload_type,
            sequence_number,
            ssrc: stream.ssrc,
            ..Default::default()
        })
    }

    /// Answers a subscriber's NACK for the given outgoing sequence numbers from the cache,
    /// on the RTX stream when one was negotiated: each packet once, at most
    /// [`MAX_PACKETS_PER_NACK`] of them, and only while the subscription's retransmission
    /// budget lasts. Returns how many packets were found and appended to `out`.
    pub fn on_nack(
        &mut self,
        now: Instant,
        track: &TrackId,
        subscriber: &ParticipantKey,
        lost: impl IntoIterator<Item = u16>,
        out: &mut Vec<Outgoing>,
    ) -> usize {
        let Some(up) = self.tracks.get_mut(track) else { return 0 };
        let Some(down) = up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber) else { return 0 };
        let renumbered = up.live.is_some() && up.format == PayloadFormat::Vp8;
        let track_rate = up.bitrate.bytes_per_second();
        let mut asked: Vec<u16> = Vec::new();
        for out_seq in lost {
            if asked.len() == MAX_PACKETS_PER_NACK {
                break;
            }
            if !asked.contains(&out_seq) {
                asked.push(out_seq);
            }
        }
        let mut found = 0;
        for out_seq in asked {
            let Some((ssrc, seq)) = down.munger.source_sequence(out_seq) else { continue };
            let layer = up.layers.iter().find(|l| l.ssrc == Some(ssrc));
            let Some(cached) = layer.and_then(|l| l.cache.as_ref()).and_then(|cache| cache.get(ssrc, seq)) else { continue };
            if !down.budget.spend(now, packet_size(cached), track_rate) {
                break;
            }
            let Some(rewritten) = rewrite(now, down, cached) else { continue };
            let patch = renumbered.then(|| Descriptor::parse(&cached.payload)).flatten().and_then(|d| down.pictures.renumber(&d));
            let rtx = down.negotiated.and_then(|n| n.rtx);
            let (packet, patch) = match rtx {
                Some(stream) => {
                    let sequence = down.rtx_sequence;
                    down.rtx_sequence = sequence.wrapping_add(1);
                    (rtx_packet(rewritten, stream, sequence, patch), None)
                }
                None => (rewritten, patch),
            };
            out.push(Outgoing { subscriber: *subscriber, track: *track, packet, patch, rtx: rtx.is_some() });
            found += 1;
        }
        found
    }

    /// A keyframe is wanted for `subscriber` (its PLI or FIR, or it just negotiated) or,
    /// with `None`, for the taps: returns the request to relay to the publisher, for the
    /// layer the subscriber gets (the taps get the highest), or `None` while throttled (the
    /// request is deferred to the end of the interval, see
    /// [`Forwarder::due_keyframe_requests`]) or before the publisher sent anything.
    pub fn keyframe_request(&mut self, now: Instant, track: &TrackId, subscriber: Option<&ParticipantKey>) -> Option<KeyframeRequest> {
        let up = self.tracks.get_mut(track)?;
        let layer = match (&up.live, subscriber) {
            (None, _) => 0,
            // One still waiting for its first keyframe has it asked for by the packet path,
            // of the layer it waits for.
            (Some(_), Some(subscriber)) => up.downtracks.iter().find(|d| &d.subscriber == subscriber)?.selector.current()?,
            (Some(live), None) => up.tap.current().unwrap_or(live.top()),
        };
        up.layer_keyframe_request(now, track, layer, Throttled::Deferred)
    }

    /// When the next deferred keyframe request may go out.
    pub fn keyframe_deadline(&self) -> Option<Instant> {
        self.tracks.values().flat_map(|up| &up.layers).filter_map(|layer| layer.keyframes.deferred_until()).min()
    }

    /// Appends to `out` the deferred keyframe requests due at `now`.
    pub fn due_keyframe_requests(&mut self, now: Instant, out: &mut Vec<KeyframeRequest>) {
        for (track, up) in &mut self.tracks {
            for layer in 0..up.layers.len() {
                if up.layers[layer].keyframes.deferred_until().is_some_and(|at| at <= now) {
                    out.extend(up.layer_keyframe_request(now, track, layer, Throttled::Deferred));
                }
            }
        }
    }
}

impl<S> UpTrack<S> {
    /// The highest layer a subscriber with `view` needs: of a simulcast track shown in a box
    /// of known size, the lowest layer that fills it; any other, every layer.
    fn view_layer(&self, view: View) -> usize {
        match view.size {
            Some(shown) if self.live.is_some() => layer_for_size(self.layers.iter().map(|l| l.size), shown),
            _ => usize::MAX,
        }
    }

    /// Takes the picture size a keyframe of `layer` gave; when it changed, what each
    /// subscriber's view needs is worked out again.
    fn set_layer_size(&mut self, layer: usize, size: FrameSize) {
        if self.layers[layer].size == Some(size) {
            return;
        }
        self.layers[layer].size = Some(size);
        for index in 0..self.downtracks.len() {
            self.downtracks[index].view_layer = self.view_layer(self.downtracks[index].view);
        }
    }

    /// The layer a packet of `ssrc` belongs to: a single-stream track's one, whatever the
    /// SSRC; a simulcast track's by the SSRCs bound.
    fn layer_of(&mut self, ssrc: u32) -> Option<usize> {
        if self.live.is_none() {
            self.layers[0].ssrc = Some(ssrc);
            return Some(0);
        }
        self.layers.iter().position(|l| l.ssrc == Some(ssrc))
    }

    /// A keyframe request for `layer`, unless throttled (then dropped or deferred, as
    /// `throttled` says) or not video.
    fn layer_keyframe_request(&mut self, now: Instant, track: &TrackId, layer: usize, throttled: Throttled) -> Option<KeyframeRequest> {
        if self.kind != MediaKind::Video {
            return None;
        }
        let layer = self.layers.get_mut(layer)?;
        let media_ssrc = layer.ssrc?;
        let allowed = match throttled {
            Throttled::Deferred => layer.keyframes.should_request(now),
            Throttled::Dropped => layer.keyframes.try_request(now),
        };
        allowed.then_some(KeyframeRequest { publisher: self.publisher, track: *track, media_ssrc })
    }
}

impl Layer {
    /// Notes a packet's sequence number; whether it is the newest yet.
    fn note_sequence(&mut self, sequence: u16) -> bool {
        let fresh = self.newest.is_none_or(|newest| !seq_is_older(sequence, newest));
        if fresh {
            self.newest = Some(sequence);
        }
        fresh
    }
}

/// What becomes of a keyframe request inside the throttle's interval.
#[derive(Debug, Clone, Copy)]
enum Throttled {
    /// Sent when the interval ends: a subscriber asked once and waits.
    Deferred,
    /// Dropped: the packet path asks again with the next packet.
    Dropped,
}

/// The bytes a packet takes on the wire, before SRTP: its fixed header and payload.
fn packet_size(packet: &rtp::Packet) -> usize {
    12 + packet.payload.len()
}

fn strip_extensions(header: &mut rtp::header::Header) {
    if header.extension {
        header.extension = false;
        header.extension_profile = 0;
        header.extensions.clear();
    }
}

fn rewrite<S>(now: Instant, down: &mut DownTrack<S>, source: &rtp::Packet) -> Option<rtp::Packet> {
    let payload_type = down.negotiated?.payload_type;
    let munged = down.munger.munge(now, source.header.ssrc, source.header.sequence_number, source.header.timestamp)?;
    let mut packet = source.clone();
    packet.header.ssrc = down.ssrc;
    packet.header.payload_type = payload_type;
    packet.header.sequence_number = munged.sequence_number;
    packet.header.timestamp = munged.timestamp;
    Some(packet)
}

/// Wraps a rewritten packet for the RTX stream (RFC 4588): the original sequence number
/// leads the payload (renumbered by `patch`), header fields come from the repair stream.
fn rtx_packet(original: rtp::Packet, stream: RtxStream, sequence: u16, patch: Option<Vp8Patch>) -> rtp::Packet {
    let mut payload = bytes::BytesMut::with_capacity(2 + original.payload.len());
    payload.extend_from_slice(&original.header.sequence_number.to_be_bytes());
    payload.extend_from_slice(&original.payload);
    if let Some(patch) = patch {
        patch.apply(&mut payload[2..]);
    }
    let mut header = original.header;
    header.ssrc = stream.ssrc;
    header.payload_type = stream.payload_type;
    header.sequence_number = sequence;
    rtp::Packet { header, payload: payload.freeze() }
}

#[cfg(test)]
mod tests;
