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
use crate::munger::RtpMunger;
use crate::packet_cache::PacketCache;
use crate::retransmit::{BitrateMeter, RetransmitBudget, MAX_PACKETS_PER_NACK};
use crate::speakers::AudioLevel;

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
    /// What the caller keeps with the subscription.
    link: S,
}

/// A published track with its subscribers.
#[derive(Debug)]
struct UpTrack<S> {
    publisher: ParticipantKey,
    kind: MediaKind,
    clock_rate: u32,
    /// The SSRC the publisher currently sends, for keyframe requests.
    source_ssrc: Option<u32>,
    cache: Option<PacketCache>,
    keyframes: KeyframeRequester,
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
}

impl<S> Forwarder<S> {
    /// An empty forwarding table.
    pub fn new(settings: ForwarderSettings) -> Self {
        Self { settings, tracks: HashMap::new() }
    }

    /// Registers a published track. Video tracks get a NACK cache.
    pub fn add_track(&mut self, track: TrackId, publisher: ParticipantKey, kind: MediaKind, clock_rate: u32) {
        let cache =
            (kind == MediaKind::Video).then(|| PacketCache::new(self.settings.nack_cache_packets, self.settings.nack_cache_min_age));
        self.tracks.insert(
            track,
            UpTrack {
                publisher,
                kind,
                clock_rate,
                source_ssrc: None,
                cache,
                keyframes: KeyframeRequester::new(self.settings.keyframe_interval),
                bitrate: BitrateMeter::default(),
                muted: false,
                level: None,
                downtracks: Vec::new(),
            },
        );
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
            self.keyframe_request(now, track)
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
            if let Some(cache) = up.cache.as_mut() {
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
    /// keyframe request that lets its subscribers resume at once on unmute.
    pub fn set_muted(&mut self, now: Instant, track: &TrackId, muted: bool) -> Option<KeyframeRequest> {
        let up = self.tracks.get_mut(track)?;
        let unmuted = up.muted && !muted;
        up.muted = muted;
        if unmuted {
            self.keyframe_request(now, track)
        } else {
            None
        }
    }

    /// Whether a track is muted (an unknown one is not).
    pub fn is_muted(&self, track: &TrackId) -> bool {
        self.tracks.get(track).is_some_and(|up| up.muted)
    }

    /// Fans one packet of a published track out to its subscribers, appending to `out`;
    /// nothing for a muted track. Header extensions are stripped: their ids are negotiated
    /// per connection.
    pub fn forward(&mut self, now: Instant, track: &TrackId, mut packet: rtp::Packet, out: &mut Vec<Outgoing>) {
        let Some(up) = self.tracks.get_mut(track).filter(|up| !up.muted) else { return };
        if let Some(level) = up.level.as_mut() {
            level.on_packet(now, &packet.header);
        }
        strip_extensions(&mut packet.header);
        up.source_ssrc = Some(packet.header.ssrc);
        up.bitrate.add(now, packet_size(&packet));
        if let Some(cache) = up.cache.as_mut() {
            cache.insert(now, &packet);
        }
        for down in &mut up.downtracks {
            if let Some(rewritten) = rewrite(now, down, &packet) {
                out.push(Outgoing { subscriber: down.subscriber, track: *track, packet: rewritten, rtx: false });
            }
        }
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
        let Some(cache) = up.cache.as_ref() else { return 0 };
        let Some(down) = up.downtracks.iter_mut().find(|d| &d.subscriber == subscriber) else { return 0 };
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
            let Some(cached) = cache.get(ssrc, seq) else { continue };
            if !down.budget.spend(now, packet_size(cached), track_rate) {
                break;
            }
            let Some(rewritten) = rewrite(now, down, cached) else { continue };
            let rtx = down.negotiated.and_then(|n| n.rtx);
            let packet = match rtx {
                Some(stream) => {
                    let sequence = down.rtx_sequence;
                    down.rtx_sequence = sequence.wrapping_add(1);
                    rtx_packet(rewritten, stream, sequence)
                }
                None => rewritten,
            };
            out.push(Outgoing { subscriber: *subscriber, track: *track, packet, rtx: rtx.is_some() });
            found += 1;
        }
        found
    }

    /// A subscriber asked for a keyframe (PLI/FIR): returns the request to relay to the
    /// publisher, or `None` while throttled (the request is deferred to the end of the
    /// interval, see [`Forwarder::due_keyframe_requests`]) or before the publisher sent
    /// anything.
    pub fn keyframe_request(&mut self, now: Instant, track: &TrackId) -> Option<KeyframeRequest> {
        let up = self.tracks.get_mut(track)?;
        if up.kind != MediaKind::Video {
            return None;
        }
        let media_ssrc = up.source_ssrc?;
        up.keyframes.should_request(now).then_some(KeyframeRequest { publisher: up.publisher, track: *track, media_ssrc })
    }

    /// When the next deferred keyframe request may go out.
    pub fn keyframe_deadline(&self) -> Option<Instant> {
        self.tracks.values().filter_map(|up| up.keyframes.deferred_until()).min()
    }

    /// Appends to `out` the deferred keyframe requests due at `now`.
    pub fn due_keyframe_requests(&mut self, now: Instant, out: &mut Vec<KeyframeRequest>) {
        let due: Vec<TrackId> =
            self.tracks.iter().filter(|(_, up)| up.keyframes.deferred_until().is_some_and(|at| at <= now)).map(|(id, _)| *id).collect();
        out.extend(due.iter().filter_map(|track| self.keyframe_request(now, track)));
    }
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
/// leads the payload, header fields come from the repair stream.
fn rtx_packet(original: rtp::Packet, stream: RtxStream, sequence: u16) -> rtp::Packet {
    let mut payload = bytes::BytesMut::with_capacity(2 + original.payload.len());
    payload.extend_from_slice(&original.header.sequence_number.to_be_bytes());
    payload.extend_from_slice(&original.payload);
    let mut header = original.header;
    header.ssrc = stream.ssrc;
    header.payload_type = stream.payload_type;
    header.sequence_number = sequence;
    rtp::Packet { header, payload: payload.freeze() }
}

#[cfg(test)]
mod tests;
