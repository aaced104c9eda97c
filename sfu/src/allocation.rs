//! How a subscriber's downlink is shared among the simulcast tracks it receives: which layer
//! each may get at most.
//!
//! The budget is the subscriber's estimated downlink less what its other tracks (audio, video
//! of one layer) take. Every track first gets its lowest layer, in priority order (screen
//! shares, then the active speakers', then the rest); what is left then lifts them, in the
//! same order, each as high as it fits. A track is only lifted above the layer it had when the
//! rest covers the step with [`UP_MARGIN`] to spare, so an estimate that wavers about one
//! layer's rate does not switch it up and down (each switch costs a keyframe).

/// How much more than a step up costs must be left for a track to take it.
pub const UP_MARGIN: f64 = 1.15;

/// How much a track matters when the downlink is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A screen share: text unreadable at a lower layer.
    ScreenShare,
    /// A camera of someone speaking now.
    Speaker,
    /// Everything else.
    Other,
}

/// One simulcast track a subscriber receives.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// How much it matters.
    pub priority: Priority,
    /// What each layer sends, in bits per second, lowest first (0: it sends nothing).
    pub layer_rates: Vec<f64>,
    /// The highest layer it may get now.
    pub current: usize,
    /// The highest layer the subscriber needs at the size it shows the track.
    pub needed: usize,
}

impl Wanted {
    /// What each layer up to the one needed sends, lowest first: the layers it may get.
    fn layers_needed(&self) -> &[f64] {
        &self.layer_rates[..self.layer_rates.len().min(self.needed.saturating_add(1))]
    }

    /// The highest layer that sends, up to the one needed (the lowest if none does).
    pub fn top_sending(&self) -> usize {
        self.layers_needed().iter().rposition(|rate| *rate > 0.0).unwrap_or(0)
    }

    /// What the highest layer that sends takes, in bits per second.
    pub fn top_rate(&self) -> f64 {
        self.layer_rates.get(self.top_sending()).copied().unwrap_or(0.0)
    }
}

/// The highest layer each of `tracks` may get (in their order) out of `budget` bits per
/// second, none above the layer it needs. Every track keeps at least its lowest layer,
/// however short the budget.
pub fn allocate(budget: f64, tracks: &[Wanted]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tracks.len()).collect();
    order.sort_by_key(|&i| tracks[i].priority);
    let rate = |track: usize, layer: usize| tracks[track].layer_rates.get(layer).copied().unwrap_or(0.0);
    let mut left = budget - (0..tracks.len()).map(|t| rate(t, 0)).sum::<f64>();
    let mut chosen = vec![0; tracks.len()];
    for track in order {
        for layer in 1..tracks[track].layers_needed().len() {
            if rate(track, layer) <= 0.0 {
                continue; // not sending: no reason to stop below it, nor to go to it
            }
            let step = rate(track, layer) - rate(track, chosen[track]);
            let needed = if layer > tracks[track].current { step * UP_MARGIN } else { step };
            if needed > left {
                break;
            }
            left -= step;
            chosen[track] = layer;
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATES: [f64; 3] = [150_000.0, 500_000.0, 1_500_000.0];

    fn camera(priority: Priority, current: usize) -> Wanted {
        Wanted { priority, layer_rates: RATES.to_vec(), current, needed: usize::MAX }
    }

    #[test]
    fn a_wide_link_gets_every_track_its_top_layer() {
        let tracks = vec![camera(Priority::Other, 2), camera(Priority::Other, 2)];
        assert_eq!(allocate(10_000_000.0, &tracks), [2, 2]);
    }

    #[test]
    fn a_narrow_link_keeps_the_lowest_layers_and_lifts_by_priority() {
        let tracks = vec![camera(Priority::Other, 2), camera(Priority::Speaker, 2), camera(Priority::ScreenShare, 2)];
        assert_eq!(allocate(300_000.0, &tracks), [0, 0, 0], "not even the lowest layers fit: kept anyway");
        assert_eq!(allocate(900_000.0, &tracks), [0, 0, 1], "the screen share first, as high as it fits");
        assert_eq!(allocate(1_900_000.0, &tracks), [0, 0, 2]);
        assert_eq!(allocate(2_300_000.0, &tracks), [0, 1, 2], "then the speaker");
    }

    #[test]
    fn a_step_up_needs_a_margin_and_a_step_down_does_not() {
        let up = vec![camera(Priority::Other, 0)];
        assert_eq!(allocate(520_000.0, &up), [0], "1.15 x 350 k more does not fit in 370 k");
        assert_eq!(allocate(560_000.0, &up), [1]);
        let held = vec![camera(Priority::Other, 1)];
        assert_eq!(allocate(520_000.0, &held), [1], "kept while it fits");
        assert_eq!(allocate(480_000.0, &held), [0]);
    }

    #[test]
    fn a_layer_that_sends_nothing_is_passed_over() {
        let tracks = vec![Wanted { priority: Priority::Other, layer_rates: vec![150_000.0, 0.0, 1_500_000.0], current: 2, needed: 2 }];
        assert_eq!(allocate(3_000_000.0, &tracks), [2]);
        assert_eq!(allocate(400_000.0, &tracks), [0]);
    }

    #[test]
    fn no_track_is_given_more_than_its_view_needs_and_what_it_leaves_goes_to_the_others() {
        let thumbnail = Wanted { needed: 0, ..camera(Priority::Speaker, 2) };
        let tracks = vec![thumbnail, camera(Priority::Other, 0)];
        assert_eq!(allocate(10_000_000.0, &tracks), [0, 2]);
        assert_eq!(allocate(1_900_000.0, &tracks), [0, 2], "the speaker's thumbnail leaves room for the other");
        assert_eq!(tracks[0].top_sending(), 0, "its top layer is the one it needs");
        assert_eq!(tracks[0].top_rate(), 150_000.0);
    }
}
