//! Dynacast: the simulcast layers no one needs are paused at their publisher, which then
//! neither encodes nor sends them, and resumed as soon as someone needs them again.
//!
//! A layer is needed when some subscriber's view needs it or a higher one
//! ([`crate::forwarder::Forwarder::layers_needed`]): the layers above the highest needed
//! pause, the ones below keep sending, so a subscriber whose downlink narrows has a layer to
//! move down to at once. A tapped room (recorded) needs every layer. A layer pauses only once
//! no one has needed it for [`PAUSE_AFTER`], and resumes at the next round that needs it.

use std::time::{Duration, Instant};

use super::Engine;
use crate::SfuEvent;

/// How long no one must have needed a layer before its publisher is told to pause it: a view
/// that shrinks for a moment (a tile resized, a page scrolled past) does not stop a layer
/// whose encoder would then start again with a keyframe.
const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// What a simulcast track's publisher was last told to send.
#[derive(Debug, Clone, Copy)]
pub(super) struct Demand {
    /// The highest layer it was told to send; `None`: none (nobody receives the track).
    told: Option<usize>,
    /// Since when fewer layers than told have been needed.
    less_since: Option<Instant>,
}

impl Demand {
    /// A track of `layers` layers, which its publisher starts sending all of.
    pub(super) fn new(layers: usize) -> Self {
        Self { told: layers.checked_sub(1), less_since: None }
    }

    /// Takes the highest layer needed at `now` (`None`: none); returns the highest layer the
    /// publisher is to send from now on when that changes: at once for more, after
    /// [`PAUSE_AFTER`] for fewer.
    pub(super) fn update(&mut self, now: Instant, needed: Option<usize>) -> Option<Option<usize>> {
        if needed >= self.told {
            self.less_since = None;
            let more = needed > self.told;
            self.told = needed;
            return more.then_some(needed);
        }
        let since = *self.less_since.get_or_insert(now);
        if now.saturating_duration_since(since) < PAUSE_AFTER {
            return None;
        }
        self.told = needed;
        self.less_since = None;
        Some(needed)
    }
}

impl Engine {
    /// Tells the publishers of simulcast tracks which layers to send, where that changed.
    pub(super) fn tell_layers_needed(&mut self, now: Instant) {
        let needs = self.forwarder.layers_needed();
        self.demand.retain(|track, _| needs.iter().any(|need| need.track == *track));
        for need in needs {
            let Some(publisher) = self.participants.get(&need.publisher) else { continue };
            let top = need.layers.checked_sub(1);
            let needed = if self.taps.is_tapped(&publisher.room) { top } else { need.highest };
            let demand = self.demand.entry(need.track).or_insert_with(|| Demand::new(need.layers));
            let Some(told) = demand.update(now, needed) else { continue };
            let Some(published) = publisher.published.values().find(|p| p.track == need.track) else { continue };
            let Some(mid) = published.mid.clone() else { continue };
            let active = published.rids.iter().enumerate().map(|(layer, rid)| (rid.clone(), told.is_some_and(|t| layer <= t))).collect();
            let _ = publisher.events.send(SfuEvent::PublishLayers { track: need.track, mid, active });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_layers_are_told_at_once_and_fewer_once_they_have_lasted() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut demand = Demand::new(3);
        assert_eq!(demand.update(at(0), Some(2)), None, "every layer sends from the start");
        assert_eq!(demand.update(at(0), Some(0)), None, "fewer: not yet");
        assert_eq!(demand.update(at(2000), Some(1)), None);
        assert_eq!(demand.update(at(3000), Some(0)), Some(Some(0)), "fewer for three seconds");
        assert_eq!(demand.update(at(3300), Some(0)), None, "told already");
        assert_eq!(demand.update(at(3600), None), None);
        assert_eq!(demand.update(at(3900), Some(0)), None, "needed again before it was told");
        assert_eq!(demand.update(at(4200), None), None, "fewer again: the wait starts over");
        assert_eq!(demand.update(at(7200), None), Some(None), "nobody needs any layer");
        assert_eq!(demand.update(at(7500), Some(2)), Some(Some(2)), "more: at once");
    }
}
