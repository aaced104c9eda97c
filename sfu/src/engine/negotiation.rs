//! Session descriptions: the client's offers on its publisher connection, the server's
//! offers on the subscriber connection and the client's answers to them.
//!
//! The subscriber connection only ever sends, and the server offers on it whenever the
//! room's tracks change; an offer made while another is out waits for its answer
//! ([`Negotiation`]). The engine fixes the codecs it accepts for a kind from the first
//! answered m-line of that kind, so until the subscriber has answered a kind one m-line of
//! it offers every codec, and from then on its track's codec only; the others offer only
//! their track's codec where that names one format (the one-format rule: the engine reads
//! every m-line of every answer again, at a cost that grows with the square of its codecs).

use std::collections::HashMap;
use std::time::Instant;

use rand::Rng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpSender, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiver, RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::TRANSPORT_CC_URI;
use tracing::{debug, warn};

use super::participant::{Negotiation, Subscription};
use super::Engine;
use crate::forwarder::{Negotiated, Removed, RtxStream};
use crate::peer::PeerRole;
use crate::{codec, fault_kind, MediaKind, ParticipantKey, SfuError, SfuEvent, TrackId, TrackInfo, TrackSource};

/// A refused description: the step that failed and the kind of fault, never the text of the
/// description (a client's 60 KB of junk would come back in the error and go to the records).
pub(super) fn invalid_sdp<E: std::fmt::Debug>(step: &'static str) -> impl FnOnce(E) -> SfuError {
    move |err| SfuError::InvalidSdp(format!("{step} ({})", fault_kind(&err)))
}

impl Engine {
    /// Applies the client's offer on its publisher connection (made on the first); returns
    /// the server's answer.
    pub(super) fn publisher_offer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        sdp: String,
        mut sources: HashMap<String, TrackSource>,
    ) -> Result<String, SfuError> {
        let participant = self.participants.get(&key).ok_or(SfuError::UnknownParticipant)?;
        if !participant.grants.publish {
            return Err(SfuError::NotAllowed);
        }
        let sections = media_sections(&sdp);
        let offered = sections.iter().filter(|s| s.sends).count();
        if offered > self.settings.max_tracks {
            return Err(SfuError::TooManyTracks { offered, max: self.settings.max_tracks });
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(invalid_sdp("the offer does not parse"))?;
        let new_peer = if participant.publisher.is_none() { Some(self.open_peer(now, key, PeerRole::Publisher)?) } else { None };
        let participant = self.participants.get_mut(&key).ok_or(SfuError::UnknownParticipant)?;
        if let Some(peer) = new_peer {
            participant.publisher = Some(peer);
        }
        let Some(peer) = participant.publisher.as_mut() else { return Err(SfuError::NotNegotiated) };
        let answer = peer
            .pc
            .set_remote_description(now, offer)
            .map_err(invalid_sdp("the offer cannot be applied"))
            .and_then(|()| peer.pc.create_answer(None).map_err(invalid_sdp("no answer can be made to the offer")));
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                // An offer half applied would leave the connection waiting for its answer
                // and refuse the client's next, valid, offer: back to where it was.
                if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                    let _ = peer.pc.set_remote_description(now, rollback);
                }
                return Err(err);
            }
        };
        peer.pc.set_local_description(now, answer.clone()).map_err(|e| SfuError::Engine(e.to_string()))?;
        // What the client said of its sending sections, and nothing else (the map is the
        // client's, and its size too).
        sources.retain(|mid, _| sections.iter().any(|s| s.sends && s.mid.as_ref() == Some(mid)));
        participant.sources.extend(sources);
        self.dirty.insert((key, PeerRole::Publisher));
        // A track the client stopped (`RTCRtpTransceiver.stop()`, a rejected m-line) or
        // stopped sending leaves the room.
        let stopped: Vec<String> = sections.into_iter().filter(|s| !s.sends).filter_map(|s| s.mid).collect();
        if !stopped.is_empty() {
            self.unpublish_sections(now, key, &stopped);
        }
        Ok(answer.sdp)
    }

    /// Applies the client's answer to the outstanding subscriber offer; forwarding to each
    /// answered track starts, and the next offer goes out if tracks changed meanwhile.
    pub(super) fn subscriber_answer(&mut self, now: Instant, key: ParticipantKey, sdp: String) -> Result<(), SfuError> {
        let participant = self.participants.get_mut(&key).ok_or(SfuError::UnknownParticipant)?;
        if participant.negotiation == Negotiation::Stable {
            return Err(SfuError::NotNegotiated);
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(invalid_sdp("the answer does not parse"))?;
        let peer = participant.subscriber.as_mut().ok_or(SfuError::NotNegotiated)?;
        peer.pc.set_remote_description(now, answer).map_err(invalid_sdp("the answer cannot be applied"))?;
        for check in std::mem::take(&mut peer.early_checks) {
            if let Err(err) = peer.pc.handle_read(check) {
                debug!(participant = %participant.id, %err, "early connectivity check rejected");
            }
        }
        let again = participant.negotiation == Negotiation::AwaitingAnswer { again: true };
        participant.negotiation = Negotiation::Stable;
        // Forwarding to a sender starts once its payload type is negotiated.
        let mut ready = Vec::new();
        let mut transport_wide = None;
        for (track, _, subscription) in self.forwarder.subscriptions_of(key) {
            let Some(mut sender) = peer.pc.rtp_sender(subscription.sender) else { continue };
            let extensions = &sender.get_parameters().rtp_parameters.header_extensions;
            transport_wide =
                transport_wide.or_else(|| extensions.iter().find(|e| e.uri == TRANSPORT_CC_URI).and_then(|e| u8::try_from(e.id).ok()));
            match negotiated(&mut sender, &subscription.codec) {
                Some(negotiated) => ready.push((track, negotiated)),
                // A track subscribed after the answered offer went out is in the next one.
                None if again => debug!(participant = %participant.id, %track, "track waits for the next offer"),
                None if self.warnings.allow(now) => {
                    warn!(participant = %participant.id, %track, codec = %subscription.codec.mime_type, "subscriber does not accept the codec")
                }
                None => {}
            }
        }
        if let (Some(extension_id), Some(egress)) = (transport_wide, peer.egress.as_mut()) {
            egress.enable_transport_wide(now, extension_id);
        }
        self.narrow_answered_kinds(key);
        self.dirty.insert((key, PeerRole::Subscriber));
        for (track, negotiated) in ready {
            if let Some(request) = self.forwarder.set_negotiated(now, &track, &key, negotiated) {
                self.send_keyframe_request(now, request);
            }
        }
        if again {
            self.renegotiate(now, key);
        }
        Ok(())
    }

    /// Adds a sender for `track` to the subscriber's connection (negotiated separately).
    pub(super) fn subscribe(&mut self, now: Instant, subscriber: ParticipantKey, track: &TrackInfo) {
        let Some(participant) = self.participants.get_mut(&subscriber) else { return };
        let Some(peer) = participant.subscriber.as_mut() else { return };
        let ssrc = self.rng.random::<u32>();
        let kind = match track.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // The stream is the publisher and the track its own id, both RFC 8830 tokens: the
        // client groups a participant's tracks by stream, and the track's RTCP comes back
        // with its id.
        let media_track = MediaStreamTrack::new(
            track.publisher.to_string(),
            track.id.to_string(),
            track.id.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                active: true,
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        match peer.pc.add_track(media_track) {
            Ok(sender) => {
                // The engine fixes the codecs it accepts for a kind from the first answered
                // m-line of that kind, and later tracks may use other codecs: so until the
                // subscriber has answered a kind, one m-line of it offers every codec (and
                // then only its own, `narrow_answered_kinds`). The others offer only their
                // track's codec (and its RTX) where that names one format: the engine reads
                // every m-line of every answer again, at a cost that grows with the square of
                // its codecs.
                let all_codecs = !codec::has_one_format(&track.codec.mime_type)
                    || needs_every_codec(&peer.pc, self.forwarder.subscriptions_of(subscriber).map(|(_, _, s)| s), track.kind);
                if let Some(mut transceiver) = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(sender)) {
                    // The subscriber connection only ever sends.
                    transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
                    offer_codecs(&mut transceiver, (!all_codecs).then_some(&track.codec));
                }
                if let Some(egress) = peer.egress.as_mut() {
                    egress.add_stream(ssrc, track.codec.clock_rate);
                }
                let subscription = Subscription { sender, codec: track.codec.clone(), kind: track.kind, all_codecs };
                self.forwarder.subscribe(&track.id, subscriber, ssrc, subscription);
            }
            Err(err) if self.warnings.allow(now) => warn!(%subscriber, track = %track.id, %err, "cannot add subscriber track"),
            Err(_) => {}
        }
    }

    /// Once an answer has fixed the codecs of a kind, the m-line that offered every codec of
    /// it offers only its own track's from the next offer on (where that names one format),
    /// so no later answer repeats the whole list, which the engine reads again each time.
    fn narrow_answered_kinds(&mut self, key: ParticipantKey) {
        let Some(peer) = self.participants.get_mut(&key).and_then(|p| p.subscriber.as_mut()) else { return };
        let (audio_fixed, video_fixed) = (kind_answered(&peer.pc, MediaKind::Audio), kind_answered(&peer.pc, MediaKind::Video));
        for subscription in self.forwarder.links_of_mut(key) {
            let kind_fixed = match subscription.kind {
                MediaKind::Audio => audio_fixed,
                MediaKind::Video => video_fixed,
            };
            if subscription.all_codecs && kind_fixed && codec::has_one_format(&subscription.codec.mime_type) {
                subscription.all_codecs = false;
                if let Some(mut transceiver) = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(subscription.sender)) {
                    offer_codecs(&mut transceiver, Some(&subscription.codec));
                }
            }
        }
    }

    /// Sends a new offer on the subscriber connection, or queues one behind the outstanding.
    pub(super) fn renegotiate(&mut self, now: Instant, key: ParticipantKey) {
        let Some(participant) = self.participants.get_mut(&key) else { return };
        if participant.viewer.is_some() {
            return; // a viewer's connection is fixed by its own offer
        }
        if let Negotiation::AwaitingAnswer { again } = &mut participant.negotiation {
            *again = true;
            return;
        }
        let subscribed = self.forwarder.subscriptions_of(key).next().is_some();
        if !subscribed && participant.subscriber.as_ref().is_none_or(|p| p.pc.remote_description().is_none()) {
            return; // nothing to offer yet
        }
        let Some(peer) = participant.subscriber.as_mut() else { return };
        let offer = match peer.pc.create_offer(None) {
            Ok(offer) => offer,
            Err(err) if self.warnings.allow(now) => return warn!(participant = %participant.id, %err, "cannot create subscriber offer"),
            Err(_) => return,
        };
        if let Err(err) = peer.pc.set_local_description(now, offer.clone()) {
            if self.warnings.allow(now) {
                warn!(participant = %participant.id, %err, "cannot apply subscriber offer");
            }
            return;
        }
        participant.negotiation = Negotiation::AwaitingAnswer { again: false };
        // The engine takes back only the offer it made; the client gets it with the line.
        let _ = participant.events.send(SfuEvent::SubscriberOffer(declaring_wms(&offer.sdp)));
        self.dirty.insert((key, PeerRole::Subscriber));
    }

    /// Takes a removed subscription's sender off the subscriber's connection (renegotiated
    /// by the caller); another m-line of its kind takes over offering every codec while the
    /// kind is not answered.
    pub(super) fn remove_sender(&mut self, track: &TrackId, removed: Removed<Subscription>) {
        let subscriber = removed.subscriber;
        let Some(peer) = self.participants.get_mut(&subscriber).and_then(|p| p.subscriber.as_mut()) else { return };
        if let Some(egress) = peer.egress.as_mut() {
            egress.remove_stream(removed.ssrc);
        }
        let subscription = removed.link;
        if let Err(err) = peer.pc.remove_track(subscription.sender) {
            debug!(%subscriber, %track, %err, "remove_track failed");
        }
        let kind = subscription.kind;
        if subscription.all_codecs && needs_every_codec(&peer.pc, self.forwarder.subscriptions_of(subscriber).map(|(_, _, s)| s), kind) {
            if let Some(heir) = self.forwarder.links_of_mut(subscriber).find(|s| s.kind == kind) {
                heir.all_codecs = true;
                if let Some(mut transceiver) = peer.pc.rtp_transceiver(RTCRtpTransceiverId::from(heir.sender)) {
                    offer_codecs(&mut transceiver, None);
                }
            }
        }
    }
}

/// Whether a subscriber connection still needs an m-line of `kind` that offers every codec:
/// none of its `subscriptions` of that kind offers them, and the engine's codecs for the kind
/// are not fixed yet (they are once the remote description has an m-line of the kind).
fn needs_every_codec<'a>(pc: &RTCPeerConnection, mut subscriptions: impl Iterator<Item = &'a Subscription>, kind: MediaKind) -> bool {
    !subscriptions.any(|s| s.kind == kind && s.all_codecs) && !kind_answered(pc, kind)
}

/// Whether the engine's codecs for `kind` are fixed: the connection's remote description (the
/// subscriber's last answer) has an m-line of the kind.
fn kind_answered(pc: &RTCPeerConnection, kind: MediaKind) -> bool {
    let prefix = match kind {
        MediaKind::Audio => "m=audio ",
        MediaKind::Video => "m=video ",
    };
    pc.remote_description().is_some_and(|d| d.sdp.lines().any(|line| line.starts_with(prefix)))
}

/// An audio or video section of a client's offer.
#[derive(Debug, PartialEq)]
pub(super) struct MediaSection {
    pub mid: Option<String>,
    pub kind: MediaKind,
    /// Not rejected (port 0), not `recvonly` or `inactive`: a track the client publishes.
    pub sends: bool,
    /// Not rejected, not `sendonly` or `inactive`: the client takes a track on it.
    pub receives: bool,
}

/// The audio and video sections of a client's offer, in order.
pub(super) fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<Option<MediaSection>> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields = media.split(' ');
            let kind = match fields.next().unwrap_or_default() {
                "audio" => Some(MediaKind::Audio),
                "video" => Some(MediaKind::Video),
                _ => None,
            };
            let open = fields.next().is_some_and(|port| port != "0");
            sections.push(kind.map(|kind| MediaSection { mid: None, kind, sends: open, receives: open }));
        } else if let Some(Some(section)) = sections.last_mut() {
            match line {
                "a=recvonly" => section.sends = false,
                "a=sendonly" => section.receives = false,
                "a=inactive" => (section.sends, section.receives) = (false, false),
                _ => {
                    if let Some(mid) = line.strip_prefix("a=mid:") {
                        section.mid = Some(mid.to_owned());
                    }
                }
            }
        }
    }
    sections.into_iter().flatten().collect()
}

/// The session line that says the `a=msid` lines name WebRTC media streams.
const MSID_SEMANTIC: &str = "a=msid-semantic: WMS";

/// `sdp` with [`MSID_SEMANTIC`] as its one `a=msid-semantic` line, before the first media
/// section: the engine writes none in a first offer (and `WMS *` in later ones), and some
/// clients (older browsers, GStreamer) group tracks into streams only with it. A session
/// attribute the answer does not depend on.
pub(super) fn declaring_wms(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + MSID_SEMANTIC.len() + 2);
    let mut declared = false;
    for line in sdp.split_inclusive('\n') {
        let text = line.trim_end();
        if text.starts_with("a=msid-semantic") {
            continue;
        }
        if !declared && text.starts_with("m=") {
            out.push_str(MSID_SEMANTIC);
            out.push_str("\r\n");
            declared = true;
        }
        out.push_str(line);
    }
    out
}

/// Makes a subscriber transceiver offer `only` this codec (and its RTX), or every codec of
/// its kind.
fn offer_codecs(transceiver: &mut RTCRtpTransceiver<'_>, only: Option<&RTCRtpCodec>) {
    let preferences = only.map(|codec| vec![RTCRtpCodecParameters { rtp_codec: codec.clone(), ..Default::default() }]).unwrap_or_default();
    if let Err(err) = transceiver.set_codec_preferences(preferences) {
        debug!(%err, "codec preferences not set");
    }
}

/// The payload type the subscriber's answer gave `codec` on this sender, and the RTX stream
/// if the answer kept an `rtx` format for it.
pub(super) fn negotiated(sender: &mut RTCRtpSender<'_>, codec: &RTCRtpCodec) -> Option<Negotiated> {
    let parameters = sender.get_parameters();
    let codecs = &parameters.rtp_parameters.codecs;
    let payload_type = codecs.iter().find(|c| crate::codec::same_format(&c.rtp_codec, codec))?.payload_type;
    let rtx_payload_type = codecs.iter().find(|c| crate::codec::is_rtx_for(&c.rtp_codec, payload_type)).map(|c| c.payload_type);
    let rtx_ssrc = parameters.encodings.first().and_then(|e| e.rtp_coding_parameters.rtx.as_ref()).map(|rtx| rtx.ssrc);
    let rtx = match (rtx_ssrc, rtx_payload_type) {
        (Some(ssrc), Some(payload_type)) => Some(RtxStream { ssrc, payload_type }),
        _ => None,
    };
    Some(Negotiated { payload_type, rtx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracks_an_offer_sends_and_takes_are_its_open_audio_and_video_sections_that_send_and_receive() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=inactive\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let sends: Vec<bool> = media_sections(sdp).iter().map(|s| s.sends).collect();
        assert_eq!(sends, [true, true, true, false, false, false]);
        let receives: Vec<bool> = media_sections(sdp).iter().map(|s| s.receives).collect();
        assert_eq!(receives, [false, true, true, false, true, false]);
        let kinds: Vec<MediaKind> = media_sections(sdp).iter().map(|s| s.kind).collect();
        assert_eq!(kinds[..2], [MediaKind::Audio, MediaKind::Video]);
    }

    #[test]
    fn sections_are_named_by_their_mid() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=sendonly\r\nm=video 0 X 96\r\na=mid:1\r\nm=video 9 X 96\r\na=inactive\r\n";
        let sections = media_sections(sdp);
        let expected = [(Some("0"), true), (Some("1"), false), (None, false)];
        assert_eq!(sections.iter().map(|s| (s.mid.as_deref(), s.sends)).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_wms_line_is_declared_once_before_the_first_media_section() {
        let sdp = "v=0\r\ns=-\r\na=msid-semantic:WMS *\r\nm=audio 9 X 0\r\na=mid:0\r\nm=video 9 X 0\r\n";
        let declared = declaring_wms(sdp);
        assert_eq!(declared, "v=0\r\ns=-\r\na=msid-semantic: WMS\r\nm=audio 9 X 0\r\na=mid:0\r\nm=video 9 X 0\r\n");
    }
}
