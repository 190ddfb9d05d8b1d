//! Simulcast layer selection and switching for one subscriber of one track.
//!
//! The layer is picked from the subscriber's bandwidth budget and the measured bitrate of each
//! layer. A switch only takes effect on a keyframe of the target layer: a decoder cannot start
//! from a delta frame of a stream it has never seen. Until that keyframe arrives the old layer
//! keeps flowing, so a switch never leaves a gap.
//!
//! Layers are separate RTP streams; `rewrite` keeps the subscriber's outgoing sequence numbers
//! and timestamps continuous across a switch.

use str0m::media::Rid;

/// Share of the budget a layer may use before we step up to it; keeps us from oscillating
/// around a layer whose bitrate is close to the estimate.
const UP_HEADROOM: f64 = 0.85;

/// One layer as the selector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerInfo {
    pub(crate) rid: Option<Rid>,
    pub(crate) bitrate_bps: u64,
}

/// Picks the layer for a budget. `layers` are ordered lowest quality first. Without a budget
/// (no estimate yet) the highest layer is chosen. Returns `None` only for an empty slice.
pub(crate) fn choose_layer(
    layers: &[LayerInfo],
    budget_bps: Option<u64>,
    current: Option<Option<Rid>>,
) -> Option<Option<Rid>> {
    let lowest = layers.first()?;
    let Some(budget) = budget_bps else {
        return layers.last().map(|l| l.rid);
    };
    let current_idx = current.and_then(|c| layers.iter().position(|l| l.rid == c));
    let mut chosen = lowest.rid;
    for (i, layer) in layers.iter().enumerate() {
        let stepping_up = current_idx.is_some_and(|c| i > c);
        let allowed = if stepping_up {
            (layer.bitrate_bps as f64) <= budget as f64 * UP_HEADROOM
        } else {
            layer.bitrate_bps <= budget
        };
        if allowed {
            chosen = layer.rid;
        }
    }
    Some(chosen)
}

/// What a subscriber's forwarder does with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not for this subscriber (other layer, or waiting for a keyframe).
    Drop,
    /// Forward; `switched` is true on the first frame of a newly started layer.
    Forward { switched: bool },
}

/// Per-subscriber state of one forwarded track.
#[derive(Debug, Clone)]
pub(crate) struct LayerSwitch {
    /// Layer being forwarded; `None` until the first keyframe (video) arrives.
    pub(crate) current: Option<Option<Rid>>,
    /// Layer we want to forward.
    pub(crate) target: Option<Rid>,
}

impl LayerSwitch {
    /// Video starts on a keyframe of `target`.
    pub(crate) fn video(target: Option<Rid>) -> Self {
        LayerSwitch {
            current: None,
            target,
        }
    }

    /// Audio has no keyframes and no layers: everything flows from the start.
    pub(crate) fn audio() -> Self {
        LayerSwitch {
            current: Some(None),
            target: None,
        }
    }

    /// True while the subscriber waits for a keyframe (start or switch).
    pub(crate) fn wants_keyframe(&self) -> bool {
        self.current != Some(self.target)
    }

    pub(crate) fn decide(&mut self, rid: Option<Rid>, keyframe: bool) -> Verdict {
        if rid == self.target && keyframe && self.current != Some(rid) {
            self.current = Some(rid);
            return Verdict::Forward { switched: true };
        }
        if self.current == Some(rid) {
            Verdict::Forward { switched: false }
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn layers() -> Vec<LayerInfo> {
        vec![
            LayerInfo {
                rid: Some("q".into()),
                bitrate_bps: 150_000,
            },
            LayerInfo {
                rid: Some("h".into()),
                bitrate_bps: 500_000,
            },
            LayerInfo {
                rid: Some("f".into()),
                bitrate_bps: 1_500_000,
            },
        ]
    }

    #[test]
    fn picks_highest_layer_within_budget() {
        let l = layers();
        assert_eq!(choose_layer(&l, None, None), Some(Some("f".into())));
        assert_eq!(
            choose_layer(&l, Some(3_000_000), None),
            Some(Some("f".into()))
        );
        assert_eq!(
            choose_layer(&l, Some(600_000), None),
            Some(Some("h".into()))
        );
        assert_eq!(choose_layer(&l, Some(50_000), None), Some(Some("q".into())));
        assert_eq!(choose_layer(&[], Some(1), None), None);
    }

    #[test]
    fn stepping_up_needs_headroom() {
        let l = layers();
        let q = Some(Some("q".into()));
        // 550k fits "h" (500k) but not with headroom: stay on "q".
        assert_eq!(choose_layer(&l, Some(550_000), q), q);
        // Already on "h": 550k keeps it.
        let h = Some(Some("h".into()));
        assert_eq!(choose_layer(&l, Some(550_000), h), h);
    }

    #[test]
    fn switch_waits_for_keyframe_of_target() {
        let q: Option<Rid> = Some("q".into());
        let f: Option<Rid> = Some("f".into());
        let mut s = LayerSwitch::video(f);
        assert_eq!(s.decide(f, false), Verdict::Drop);
        assert_eq!(s.decide(q, true), Verdict::Drop);
        assert_eq!(s.decide(f, true), Verdict::Forward { switched: true });
        assert_eq!(s.decide(f, false), Verdict::Forward { switched: false });
        s.target = q;
        assert!(s.wants_keyframe());
        assert_eq!(s.decide(q, false), Verdict::Drop);
        assert_eq!(s.decide(f, false), Verdict::Forward { switched: false });
        assert_eq!(s.decide(q, true), Verdict::Forward { switched: true });
        assert_eq!(s.decide(f, false), Verdict::Drop);
        assert!(!s.wants_keyframe());
    }
}
