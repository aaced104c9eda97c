//! What the engine holds per participant: its two connections, the tracks it publishes and
//! the tracks it receives.

use std::collections::HashMap;
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::shared::TaggedBytesMut;
use tokio::sync::mpsc;

use crate::egress::Egress;
use crate::ingress::Ingress;
use crate::munger::RtpMunger;
use crate::peer::PeerRole;
use crate::{MediaGrants, MediaKind, ParticipantId, ParticipantKey, RoomId, SfuEvent, TrackId, TrackInfo, TrackSource};

/// Names one connection: whose, and which of the two.
pub(crate) type PeerKey = (ParticipantKey, PeerRole);

/// One of a participant's connections, with the deadline it last asked for.
pub(crate) struct Peer {
    pub pc: RTCPeerConnection,
    pub ufrag: String,
    pub deadline: Option<Instant>,
    /// Connectivity checks that came before the remote description (the client starts
    /// checking as soon as it has answered, and its answer travels the slower signaling
    /// path): handed to the engine once the answer is set, instead of leaving the client
    /// to retry a check that went unanswered.
    pub early_checks: Vec<TaggedBytesMut>,
    /// A subscriber connection's media send side.
    pub egress: Option<Egress>,
    /// A publisher connection's media receive side.
    pub ingress: Option<Ingress>,
}

/// Early connectivity checks kept per connection.
pub(crate) const MAX_EARLY_CHECKS: usize = 8;

/// A track this participant publishes.
pub(crate) struct Published {
    pub track: TrackId,
    pub receiver: RTCRtpReceiverId,
    pub info: TrackInfo,
    /// The mid of its section of the publisher connection.
    pub mid: Option<String>,
    /// Its simulcast layers' RIDs, lowest first (none: one stream).
    pub rids: Vec<String>,
}

/// Where the server's offers on the subscriber connection stand.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Negotiation {
    Stable,
    /// An offer is out; `again` means tracks changed since and another offer must follow.
    AwaitingAnswer {
        again: bool,
    },
}

/// A participant that receives over a connection it offered itself (a WHEP player): each
/// audio and video m-line of its offer is a [`Slot`] that carries one track of the room's
/// source at a time, and the connection is never renegotiated.
pub(crate) struct Viewer {
    /// The identity whose tracks it receives; `None`: the first participant of the room (in
    /// the order they joined) that publishes.
    pub source: Option<String>,
    /// The participant it shows now, kept until it leaves or stops publishing.
    pub current: Option<ParticipantKey>,
    pub slots: Vec<Slot>,
}

/// One m-line of a viewer's connection: its sender, the SSRC it sends with, and the track
/// it carries now, if any.
pub(crate) struct Slot {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    pub kind: MediaKind,
    pub track: Option<TrackId>,
    /// The numbering of the last track it carried, which the next one continues.
    pub munger: Option<RtpMunger>,
}

/// A participant of one of the engine's rooms.
pub(crate) struct Participant {
    /// Its id in signaling (the engine knows it by its [`ParticipantKey`]).
    pub id: ParticipantId,
    /// The identity of its access token: what a viewer names as its source.
    pub identity: String,
    pub room: RoomId,
    pub grants: MediaGrants,
    pub events: mpsc::UnboundedSender<SfuEvent>,
    /// Boxed: a connection is several kilobytes, and the participants map keeps spare slots.
    pub publisher: Option<Box<Peer>>,
    pub subscriber: Option<Box<Peer>>,
    /// By the publisher connection's media track id.
    pub published: HashMap<String, Published>,
    /// What its publisher connection's sections (by mid) capture, as its offers said.
    pub sources: HashMap<String, TrackSource>,
    pub negotiation: Negotiation,
    /// Set when its subscriber connection is one it offered ([`Viewer`]).
    pub viewer: Option<Viewer>,
    /// When its downlink was last shared among the simulcast tracks it receives, and the
    /// estimate it was shared by.
    pub allocated: Option<(Instant, f64)>,
    /// Since when its downlink has had room for a higher layer of some track than it gets:
    /// it gets it once that has lasted [`super::downlink`]'s hold.
    pub room_since: Option<Instant>,
}

/// What the engine keeps with a subscription in the forwarder's table (the one record of
/// it): the track's sender on the subscriber's connection.
pub(crate) struct Subscription {
    pub sender: RTCRtpSenderId,
    /// The publisher's codec, to find its payload type in the subscriber's answer.
    pub codec: RTCRtpCodec,
    pub kind: MediaKind,
    /// Whether its m-line offers every codec of its kind (see `Engine::subscribe`).
    pub all_codecs: bool,
}

impl Participant {
    pub fn peer_mut(&mut self, role: PeerRole) -> Option<&mut Peer> {
        match role {
            PeerRole::Publisher => self.publisher.as_deref_mut(),
            PeerRole::Subscriber => self.subscriber.as_deref_mut(),
        }
    }
}

/// The connection `key` names, if its participant and role still exist.
pub(crate) fn peer_of<'a>(participants: &'a mut HashMap<ParticipantKey, Participant>, key: &PeerKey) -> Option<&'a mut Peer> {
    participants.get_mut(&key.0).and_then(|p| p.peer_mut(key.1))
}

/// The egress of `subscriber`'s subscriber connection, if it still has one.
pub(crate) fn egress_of(participants: &mut HashMap<ParticipantKey, Participant>, subscriber: ParticipantKey) -> Option<&mut Egress> {
    peer_of(participants, &(subscriber, PeerRole::Subscriber)).and_then(|p| p.egress.as_mut())
}
