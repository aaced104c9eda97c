//! Who is in the worker's rooms: participants joining and leaving with their connections,
//! and the tracks they publish reaching, and leaving, everyone else's subscriber connection.

use std::collections::HashMap;
use std::time::Instant;

use rand::Rng;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{AUDIO_LEVEL_URI, SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI, TRANSPORT_CC_URI};
use tracing::{info, warn};

use super::participant::{Negotiation, Participant, Peer, Published, Subscription};
use super::{Engine, Joining, Transmit};
use crate::egress::Egress;
use crate::forwarder::{MediaKind, Removed};
use crate::ingress::{Ingress, LayerName};
use crate::peer::{build_peer, PeerRole};
use crate::remote::Remote;
use crate::simulcast::PayloadFormat;
use crate::tap::TapEvent;
use crate::{ParticipantKey, RoomId, SfuError, SfuEvent, TrackId, TrackInfo};

impl Engine {
    pub(super) fn join(&mut self, now: Instant, key: ParticipantKey, joining: Joining) -> Result<Vec<TrackInfo>, SfuError> {
        let Joining { room, participant: id, identity, grants, events } = joining;
        let subscriber = match grants.subscribe {
            true => match self.open_peer(now, key, PeerRole::Subscriber) {
                Ok(peer) => Some(peer),
                Err(err) => {
                    self.keys.remove(&id);
                    return Err(err);
                }
            },
            false => None,
        };
        let members = self.rooms.entry(room.clone()).or_default();
        let existing: Vec<TrackInfo> = members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .flat_map(|p| p.published.values().map(|published| published.info.clone()))
            .collect();
        members.push(key);
        self.participants.insert(
            key,
            Participant {
                id,
                identity,
                room,
                grants,
                events,
                publisher: None,
                subscriber,
                published: HashMap::new(),
                sources: HashMap::new(),
                negotiation: Negotiation::Stable,
                viewer: None,
                allocated: None,
                room_since: None,
            },
        );
        if grants.subscribe {
            for track in &existing {
                self.subscribe(now, key, track);
            }
            self.renegotiate(now, key);
        }
        Ok(existing)
    }

    pub(super) fn publish_track(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        media_track_id: String,
        receiver_id: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
    ) {
        let Some(participant) = self.participants.get_mut(&key) else { return };
        let id = &participant.id;
        let Some(peer) = participant.publisher.as_deref_mut() else { return };
        let mid = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(receiver_id)).and_then(|t| t.mid().clone());
        let Some(mut receiver) = peer.pc.rtp_receiver(receiver_id) else { return };
        let kind = match receiver.track().kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let Some(codec) = receiver.track().codec(ssrc).cloned() else {
            if self.warnings.allow(now) {
                warn!(participant = %id, "published track without a codec");
            }
            return;
        };
        let extensions = &receiver.get_parameters().rtp_parameters.header_extensions;
        let extension_id = |uri: &str| extensions.iter().find(|e| e.uri == uri).and_then(|e| u8::try_from(e.id).ok());
        let (twcc, audio_level) = (extension_id(TRANSPORT_CC_URI), extension_id(AUDIO_LEVEL_URI));
        let repair_names = extension_id(SDES_MID_URI).zip(extension_id(SDES_REPAIR_RTP_STREAM_ID_URI));
        let track = participant.published.get(&media_track_id).map_or_else(TrackId::next, |p| p.track);
        // A simulcast layer: its place among the track's RIDs, as the offer lists them
        // (lowest first), and how many there are.
        let rids: Vec<String> =
            receiver.track().codings().iter().map(|c| c.rtp_coding_parameters.rid.clone()).filter(|r| !r.is_empty()).collect();
        let layer = rid.as_ref().and_then(|rid| rids.iter().position(|r| r == rid).map(|index| (index, rids.len())));
        if let Some(ingress) = peer.ingress.as_mut() {
            let nack = kind == MediaKind::Video && codec.rtcp_feedback.iter().any(|f| f.typ == "nack" && f.parameter.is_empty());
            let name = mid.clone().zip(rid).map(|(mid, rid)| LayerName { mid, rid });
            ingress.add_stream(now, ssrc, name, track, codec.clock_rate, nack);
            if let Some(extension_id) = twcc {
                ingress.enable_twcc(now, extension_id);
            }
            if let Some((mid_extension, rid_extension)) = repair_names.filter(|_| layer.is_some()) {
                ingress.enable_repair_streams(mid_extension, rid_extension);
            }
        }
        if participant.published.contains_key(&media_track_id) {
            // Another simulcast layer of a known track, or its stream restarted.
            if let Some((index, _)) = layer {
                self.forwarder.bind_layer(&track, index, ssrc);
            }
            return;
        }
        let source = mid.as_ref().and_then(|mid| participant.sources.get(mid).copied()).unwrap_or_default();
        let info = TrackInfo { id: track, publisher: id.clone(), kind, source, codec: codec.clone() };
        let published = Published { track, receiver: receiver_id, info: info.clone(), mid, rids };
        participant.published.insert(media_track_id, published);
        match layer {
            Some((index, count)) if kind == MediaKind::Video => {
                self.forwarder.add_simulcast_track(track, key, codec.clock_rate, PayloadFormat::of(&codec.mime_type), count);
                self.forwarder.bind_layer(&track, index, ssrc);
            }
            _ => self.forwarder.add_track(track, key, kind, codec.clock_rate),
        }
        if let Some(extension_id) = audio_level.filter(|_| kind == MediaKind::Audio) {
            self.forwarder.measure_level(&track, extension_id);
        }
        info!(participant = %id, %track, codec = %codec.mime_type, "track published");
        let room = participant.room.clone();
        self.taps.send(&room, || TapEvent::TrackPublished(info.clone()));
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in &members {
            if let Some(p) = self.participants.get(member) {
                let _ = p.events.send(SfuEvent::TrackPublished(info.clone()));
            }
            if *member != key && self.participants.get(member).is_some_and(|p| p.grants.subscribe) {
                self.subscribe(now, *member, &info);
                self.renegotiate(now, *member);
            }
        }
        self.fill_viewers(now, &members);
    }

    /// Takes the participant's track (by its publisher connection's media track id) out of
    /// the room.
    pub(super) fn unpublish(&mut self, now: Instant, key: ParticipantKey, media_track_id: &str) {
        let Some(participant) = self.participants.get_mut(&key) else { return };
        let Some(published) = participant.published.remove(media_track_id) else { return };
        if let Some(ingress) = participant.publisher.as_mut().and_then(|p| p.ingress.as_mut()) {
            ingress.remove_track(&published.track);
        }
        let room = participant.room.clone();
        let subscribers = self.forwarder.remove_track(&published.track);
        self.unpublished(now, &room, vec![(published.track, subscribers)]);
    }

    /// Unpublishes the participant's tracks whose sections of its publisher connection (by
    /// mid) no longer send.
    pub(super) fn unpublish_sections(&mut self, now: Instant, key: ParticipantKey, mids: &[String]) {
        let Some(participant) = self.participants.get_mut(&key) else { return };
        let Some(peer) = participant.publisher.as_deref_mut() else { return };
        let mut stopped = Vec::new();
        for (media_track_id, published) in &participant.published {
            let transceiver = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(published.receiver));
            if transceiver.is_some_and(|t| t.mid().as_ref().is_some_and(|mid| mids.contains(mid))) {
                stopped.push(media_track_id.clone());
            }
        }
        for media_track_id in stopped {
            self.unpublish(now, key, &media_track_id);
        }
    }

    /// Takes removed tracks off their subscribers' connections (one renegotiation per
    /// subscriber, however many tracks went; viewers' slots are refilled instead) and tells
    /// the room.
    pub(super) fn unpublished(&mut self, now: Instant, room: &RoomId, removed: Vec<(TrackId, Vec<Removed<Subscription>>)>) {
        let mut affected: Vec<ParticipantKey> = Vec::new();
        let mut tracks = Vec::with_capacity(removed.len());
        for (track, subscriptions) in removed {
            for subscription in subscriptions {
                let Some(subscription) = self.release_viewer_slot(&track, subscription) else { continue };
                if !affected.contains(&subscription.subscriber) {
                    affected.push(subscription.subscriber);
                }
                self.remove_sender(&track, subscription);
            }
            tracks.push(track);
        }
        for subscriber in affected {
            self.renegotiate(now, subscriber);
        }
        let members = self.rooms.get(room).cloned().unwrap_or_default();
        self.fill_viewers(now, &members);
        for track in tracks {
            self.taps.send(room, || TapEvent::TrackUnpublished(track));
            for member in &members {
                if let Some(p) = self.participants.get(member) {
                    let _ = p.events.send(SfuEvent::TrackUnpublished(track));
                }
            }
        }
    }

    pub(super) fn leave(&mut self, now: Instant, key: ParticipantKey, out: &mut dyn Transmit) {
        let Some(room) = self.participants.get(&key).map(|p| p.room.clone()) else { return };
        // Out of the room first: viewers whose source it was take the next one's tracks.
        if let Some(members) = self.rooms.get_mut(&room) {
            members.retain(|m| *m != key);
            if members.is_empty() {
                self.rooms.remove(&room);
            }
        }
        let removed = self.forwarder.remove_participant(&key);
        let own: Vec<TrackId> = removed.iter().map(|(track, _)| *track).collect();
        self.unpublished(now, &room, removed);
        let Some(mut participant) = self.participants.remove(&key) else { return };
        // No longer among the members `unpublished` tells: it hears of its own tracks here.
        for track in own {
            let _ = participant.events.send(SfuEvent::TrackUnpublished(track));
        }
        self.keys.remove(&participant.id);
        for peer in [participant.publisher.take(), participant.subscriber.take()].into_iter().flatten() {
            self.close_peer(peer, out);
        }
        self.dirty.retain(|dirty| dirty.0 != key);
        info!(participant = %participant.id, "participant left the media plane");
    }

    /// Builds one of a participant's connections and makes it reachable by its ICE ufrag.
    pub(super) fn open_peer(&mut self, now: Instant, key: ParticipantKey, role: PeerRole) -> Result<Box<Peer>, SfuError> {
        let peer = build_peer(now, role, &self.settings.peers, &mut self.rng)?;
        self.ice.add(peer.ufrag.clone(), &peer.password, (key, role));
        let (egress, ingress) = match role {
            PeerRole::Subscriber => (Some(Egress::new(peer.keys)), None),
            PeerRole::Publisher => (None, Some(Ingress::new(peer.keys, self.rng.random()))),
        };
        Ok(Box::new(Peer { pc: peer.pc, ufrag: peer.ufrag, deadline: None, early_checks: Vec::new(), egress, ingress }))
    }

    /// Closes a connection (flushing its DTLS close) and forgets its ufrag and addresses.
    fn close_peer(&mut self, mut peer: Box<Peer>, out: &mut dyn Transmit) {
        self.ice.remove(&peer.ufrag);
        if peer.pc.close().is_ok() {
            while let Some(written) = peer.pc.poll_write() {
                out.transmit(&written.message, Remote::peer_of(&written.transport));
            }
        }
    }
}
