//! Viewers: participants that receive over a connection they offered themselves, as a WHEP
//! player does, instead of answering the server's offers.
//!
//! A viewer's offer fixes its connection once: each of its audio and video m-lines that can
//! receive becomes a [`Slot`] with a sender and an SSRC of the server's, and no offer ever
//! follows. The slots carry the tracks of one participant of the room, the source: the
//! identity the viewer named, or else the first participant (in the order they joined) that
//! publishes. When the source's tracks change, or the source leaves and another takes its
//! place, the slots are refilled on the same SSRCs, numbered on from the track before, so the
//! player sees one continuous stream per m-line.

use std::time::Instant;

use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use tracing::{debug, warn};

use super::negotiation::{declaring_wms, invalid_sdp, media_sections, negotiated};
use super::participant::{Participant, Slot, Subscription, Viewer};
use super::Engine;
use crate::forwarder::Removed;
use crate::peer::PeerRole;
use crate::{MediaKind, ParticipantKey, SfuError, TrackId, TrackInfo};

/// The track id of a viewer's slot `index` on its connection (an RFC 8830 token, as a
/// track's own id is).
fn slot_name(kind: MediaKind, index: usize) -> String {
    let prefix = match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    };
    format!("{prefix}{index}")
}

impl Engine {
    /// Applies a viewer's offer: opens its receiving connection with a slot per audio and
    /// video m-line (each must receive), fills the slots from `source`'s tracks (an
    /// identity, or the room's first publisher) and returns the server's answer.
    pub(super) fn viewer_offer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        sdp: String,
        source: Option<String>,
    ) -> Result<String, SfuError> {
        let participant = self.participants.get(&key).ok_or(SfuError::UnknownParticipant)?;
        if participant.subscriber.is_some() {
            return Err(SfuError::AlreadyReceiving);
        }
        let stream = participant.id.to_string();
        let sections = media_sections(&sdp);
        if sections.is_empty() || sections.iter().any(|s| !s.receives || s.mid.is_none()) {
            return Err(SfuError::InvalidSdp("a viewer's offer has audio or video m-lines, each with a mid and receiving".to_owned()));
        }
        if sections.len() > self.settings.max_tracks {
            return Err(SfuError::TooManyTracks { offered: sections.len(), max: self.settings.max_tracks });
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(invalid_sdp("the offer does not parse"))?;
        // Kept with the participant from the start, so that a panic below leaves the
        // connection where `leave` closes it and forgets its ICE route.
        let peer = self.open_peer(now, key, PeerRole::Subscriber)?;
        let participant = self.participants.get_mut(&key).ok_or(SfuError::UnknownParticipant)?;
        let peer = participant.subscriber.insert(peer);
        let answered = (|| {
            peer.pc.set_remote_description(now, offer).map_err(invalid_sdp("the offer cannot be applied"))?;
            // Each m-line gets a sender of the server's: add_track takes the first free
            // transceiver of the kind, which must be the section's own.
            let mut slots = Vec::with_capacity(sections.len());
            for (index, section) in sections.iter().enumerate() {
                let ssrc = self.rng.random::<u32>();
                let rtc_kind = if section.kind == MediaKind::Audio { RtpCodecKind::Audio } else { RtpCodecKind::Video };
                let encoding = RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                    active: true,
                    ..Default::default()
                };
                let name = slot_name(section.kind, index);
                let sender = peer
                    .pc
                    .add_track(MediaStreamTrack::new(stream.clone(), name.clone(), name, rtc_kind, vec![encoding]))
                    .map_err(|e| SfuError::Engine(e.to_string()))?;
                let mut transceiver = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(sender)).ok_or(SfuError::NotNegotiated)?;
                if transceiver.mid() != &section.mid {
                    return Err(SfuError::InvalidSdp(format!("m-line {index} cannot carry a track")));
                }
                transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
                slots.push(Slot { sender, ssrc, kind: section.kind, track: None, munger: None });
            }
            let answer = peer.pc.create_answer(None).map_err(invalid_sdp("no answer can be made to the offer"))?;
            peer.pc.set_local_description(now, answer.clone()).map_err(|e| SfuError::Engine(e.to_string()))?;
            Ok((slots, answer.sdp))
        })();
        let (slots, answer) = match answered {
            Ok(answered) => answered,
            Err(err) => {
                if let Some(peer) = participant.subscriber.take() {
                    self.ice.remove(&peer.ufrag);
                }
                return Err(err);
            }
        };
        participant.viewer = Some(Viewer { source, current: None, slots });
        self.dirty.insert((key, PeerRole::Subscriber));
        self.fill_viewer(now, key);
        Ok(declaring_wms(&answer))
    }

    /// Fills the slots of every viewer in `room`'s participants `members` from its source's
    /// tracks, as they now are.
    pub(super) fn fill_viewers(&mut self, now: Instant, members: &[ParticipantKey]) {
        for member in members {
            if self.participants.get(member).is_some_and(|p| p.viewer.is_some()) {
                self.fill_viewer(now, *member);
            }
        }
    }

    /// The participant whose tracks a viewer shows: the one it shows already while that one
    /// is in the room and publishes (and, if the viewer named an identity, has it);
    /// otherwise the first (in the order they joined) with the identity named that
    /// publishes, or with it at all, or (none named) the first that publishes.
    fn source_of(&self, key: ParticipantKey, viewer: &Viewer, members: &[ParticipantKey]) -> Option<ParticipantKey> {
        let named = |p: &Participant| viewer.source.as_ref().is_none_or(|identity| &p.identity == identity);
        let candidates = || members.iter().filter(|m| **m != key).filter_map(|m| self.participants.get(m).map(|p| (*m, p)));
        let publishing = |p: &Participant| !p.published.is_empty();
        viewer
            .current
            .filter(|current| candidates().any(|(m, p)| m == *current && named(p) && publishing(p)))
            .or_else(|| candidates().find(|(_, p)| named(p) && publishing(p)).map(|(m, _)| m))
            .or_else(|| viewer.source.as_ref().and_then(|_| candidates().find(|(_, p)| named(p)).map(|(m, _)| m)))
    }

    /// Makes a viewer's slots carry its source's tracks: a slot whose track is no longer the
    /// source's is emptied, an empty slot takes the source's first track of its kind (by
    /// publication) that no slot carries.
    fn fill_viewer(&mut self, now: Instant, key: ParticipantKey) {
        let Some(participant) = self.participants.get(&key) else { return };
        let Some(viewer) = participant.viewer.as_ref() else { return };
        let members = self.rooms.get(&participant.room).map(Vec::as_slice).unwrap_or_default();
        let source = self.source_of(key, viewer, members);
        let mut tracks: Vec<TrackInfo> = source
            .and_then(|s| self.participants.get(&s))
            .map(|p| p.published.values().map(|t| t.info.clone()).collect())
            .unwrap_or_default();
        tracks.sort_by_key(|t| t.id);
        let stale: Vec<(usize, TrackId)> = viewer
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.track.filter(|track| !tracks.iter().any(|t| t.id == *track)).map(|track| (index, track)))
            .collect();
        if let Some(viewer) = self.participants.get_mut(&key).and_then(|p| p.viewer.as_mut()) {
            viewer.current = source;
        }
        for (index, track) in stale {
            let removed = self.forwarder.unsubscribe(&track, key);
            self.empty_slot(key, index, removed);
        }
        let Some(viewer) = self.participants.get(&key).and_then(|p| p.viewer.as_ref()) else { return };
        let mut fills: Vec<(usize, TrackInfo)> = Vec::new();
        for (index, slot) in viewer.slots.iter().enumerate().filter(|(_, slot)| slot.track.is_none()) {
            let carried = |t: &TrackInfo| viewer.slots.iter().any(|s| s.track == Some(t.id)) || fills.iter().any(|(_, f)| f.id == t.id);
            if let Some(track) = tracks.iter().find(|t| t.kind == slot.kind && !carried(t)) {
                fills.push((index, track.clone()));
            }
        }
        for (index, track) in fills {
            self.fill_slot(now, key, index, &track);
        }
    }

    /// Sends `track` on the viewer's slot `index` from now on.
    fn fill_slot(&mut self, now: Instant, key: ParticipantKey, index: usize, track: &TrackInfo) {
        let Some(participant) = self.participants.get_mut(&key) else { return };
        let (Some(viewer), Some(peer)) = (participant.viewer.as_mut(), participant.subscriber.as_mut()) else { return };
        let Some(slot) = viewer.slots.get_mut(index) else { return };
        // What the answer gave the track's codec on this m-line, if it has it.
        let found = peer.pc.rtp_sender(slot.sender).and_then(|mut sender| negotiated(&mut sender, &track.codec));
        let Some(found) = found else {
            if self.warnings.allow(now) {
                warn!(participant = %participant.id, track = %track.id, codec = %track.codec.mime_type, "the viewer's answer has no format for the track's codec");
            }
            return;
        };
        let subscription = Subscription { sender: slot.sender, codec: track.codec.clone(), kind: track.kind, all_codecs: false };
        if let Err(munger) = self.forwarder.subscribe_continuing(&track.id, key, slot.ssrc, subscription, slot.munger.take()) {
            slot.munger = munger;
            return;
        }
        slot.track = Some(track.id);
        // The stream's reports count on at the track's clock (a slot may carry G.711 after
        // Opus).
        if let Some(egress) = peer.egress.as_mut() {
            egress.add_stream(slot.ssrc, track.codec.clock_rate);
        }
        debug!(participant = %participant.id, track = %track.id, slot = index, "viewer slot filled");
        if let Some(request) = self.forwarder.set_negotiated(now, &track.id, &key, found) {
            self.send_keyframe_request(now, request);
        }
    }

    /// Empties the viewer's slot `index`, keeping the numbering of the subscription taken out
    /// for the next track sent on it.
    fn empty_slot(&mut self, key: ParticipantKey, index: usize, removed: Option<Removed<Subscription>>) {
        let Some(slot) = self.participants.get_mut(&key).and_then(|p| p.viewer.as_mut()).and_then(|v| v.slots.get_mut(index)) else {
            return;
        };
        slot.track = None;
        if let Some(removed) = removed {
            slot.munger = Some(removed.munger);
        }
    }

    /// Takes a subscription the forwarder removed with its track off a viewer's slot; gives
    /// it back if the subscriber is no viewer (its sender must go, by renegotiation).
    pub(super) fn release_viewer_slot(&mut self, track: &TrackId, removed: Removed<Subscription>) -> Option<Removed<Subscription>> {
        let Some(viewer) = self.participants.get(&removed.subscriber).and_then(|p| p.viewer.as_ref()) else { return Some(removed) };
        if let Some(index) = viewer.slots.iter().position(|s| s.track == Some(*track)) {
            self.empty_slot(removed.subscriber, index, Some(removed));
        }
        None
    }
}
