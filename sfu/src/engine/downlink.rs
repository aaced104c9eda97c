//! Each subscriber's downlink: shared among the simulcast tracks it receives as its estimate
//! allows ([`crate::allocation`]), and probed for more when the allocation wants more than
//! the estimate (`egress/probe.rs`), with padding on one of its repair streams.

use std::time::{Duration, Instant};

use tracing::debug;

use super::participant::egress_of;
use super::{Engine, Transmit};
use crate::allocation::{self, Priority, Wanted, UP_MARGIN};
use crate::egress::Egress;
use crate::metrics::Counter;
use crate::{ParticipantKey, TrackSource};

/// How often a subscriber's downlink is shared anew among its simulcast tracks: its
/// transport-wide feedback comes every 50 to 100 ms.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// An estimate under this share of the one the downlink was last shared by is acted on
/// within the interval: a congested link is relieved at once.
const FALL_ACTED_ON_AT_ONCE: f64 = 0.85;
/// How long the estimate must have had room for a higher layer before a track gets it.
const UP_HOLD: Duration = Duration::from_secs(1);

impl Engine {
    /// Shares the subscriber's estimated downlink among the simulcast tracks it receives, at
    /// most once an [`ALLOCATION_INTERVAL`] unless the estimate fell, a step up only once the
    /// room for it has lasted [`UP_HOLD`]; where a track is held below the top layer its
    /// publisher sends, probes for what every track's top layer would take.
    pub(super) fn allocate(&mut self, now: Instant, subscriber: ParticipantKey) {
        let Some(participant) = self.participants.get_mut(&subscriber) else { return };
        let Some(estimate) = participant.subscriber.as_ref().and_then(|p| p.egress.as_ref()).and_then(Egress::estimate) else {
            return;
        };
        // A fall of the estimate is acted on at once; anything else waits its turn.
        let due = participant.allocated.is_none_or(|(at, shared)| {
            now.saturating_duration_since(at) >= ALLOCATION_INTERVAL || estimate < FALL_ACTED_ON_AT_ONCE * shared
        });
        if !due {
            return;
        }
        participant.allocated = Some((now, estimate));
        let room = participant.room.clone();
        let tracks = self.forwarder.simulcast_subscriptions_of(subscriber, now);
        if tracks.is_empty() {
            return;
        }
        let speakers = self.speakers.told.get(&room);
        let wanted: Vec<Wanted> = tracks
            .iter()
            .map(|subscription| {
                let (track, publisher) = (subscription.track, subscription.publisher);
                let screen = self
                    .participants
                    .get(&publisher)
                    .is_some_and(|p| p.published.values().any(|t| t.track == track && t.info.source == TrackSource::ScreenShare));
                let priority = match (screen, speakers.is_some_and(|s| s.contains(&publisher))) {
                    (true, _) => Priority::ScreenShare,
                    (false, true) => Priority::Speaker,
                    (false, false) => Priority::Other,
                };
                Wanted {
                    priority,
                    layer_rates: subscription.layer_rates.clone(),
                    current: subscription.current,
                    needed: subscription.needed,
                }
            })
            .collect();
        let single_streams = self.forwarder.single_stream_rate_of(subscriber);
        let mut chosen = allocation::allocate(estimate - single_streams, &wanted);
        // A step up waits until the room for it has lasted: an estimate a probe raised past
        // the link falls again within a second, and each switch costs a keyframe.
        let rises = chosen.iter().zip(&wanted).any(|(layer, track)| *layer > track.current);
        let room_since = self.participants.get_mut(&subscriber).map(|p| {
            p.room_since = if rises { Some(p.room_since.unwrap_or(now)) } else { None };
            p.room_since
        });
        if room_since.flatten().is_some_and(|since| now.saturating_duration_since(since) < UP_HOLD) {
            for (layer, track) in chosen.iter_mut().zip(&wanted) {
                *layer = (*layer).min(track.current);
            }
        }
        debug!(%subscriber, estimate, single_streams, ?chosen, "downlink shared");
        let mut held_back = false;
        for (subscription, (layer, track_wants)) in tracks.iter().zip(chosen.into_iter().zip(&wanted)) {
            held_back |= layer < track_wants.top_sending();
            // A track given every layer its view needs is capped by its view alone: a larger
            // view then gets its layer from the allocation that view triggers, with no hold.
            let most = if layer >= track_wants.needed { usize::MAX } else { layer };
            self.forwarder.set_max_layer(&subscription.track, &subscriber, most);
        }
        if held_back {
            let desired = single_streams + UP_MARGIN * wanted.iter().map(Wanted::top_rate).sum::<f64>();
            self.probe_toward(now, subscriber, desired);
        }
    }

    /// Starts a probe of `subscriber`'s downlink for `desired` bits per second, if its
    /// estimate is under it and no probe is on or held back.
    fn probe_toward(&mut self, now: Instant, subscriber: ParticipantKey, desired: f64) {
        let egress = egress_of(&mut self.participants, subscriber);
        let Some(egress) = egress else { return };
        if egress.probe_toward(now, desired) {
            let deadline = egress.deadline();
            if !self.probing.contains(&subscriber) {
                self.probing.push(subscriber);
            }
            self.sooner(deadline);
        }
    }

    /// Sends the padding packets of the probes being sent that are due at `now`, each on one
    /// of its subscriber's repair streams (a subscriber with none has its probe given up).
    pub(super) fn send_probe_padding(&mut self, now: Instant, out: &mut dyn Transmit) {
        if self.probing.is_empty() {
            return;
        }
        let mut probing = std::mem::take(&mut self.probing);
        probing.retain(|key| {
            let egress = egress_of(&mut self.participants, *key);
            let Some(egress) = egress else { return false };
            while egress.padding_due(now) {
                let sealed = match self.forwarder.padding_header(*key) {
                    Some(header) => egress.protect_padding(now, header).ok(),
                    None => None,
                };
                let Some((datagram, remote)) = sealed else {
                    egress.cancel_probe(now);
                    break;
                };
                out.transmit(datagram, remote);
                self.counters.add(Counter::ProbePackets, 1);
            }
            egress.is_probing()
        });
        self.probing = probing;
    }
}
