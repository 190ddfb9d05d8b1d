//! Track routing: published tracks, their subscribers, and the per-subscriber forwarding state.
//!
//! A published track lives in the core's track table and lists its subscribers. Each
//! subscriber holds an [`OutTrack`] for it: the m-line we negotiate towards the subscriber
//! (its lifecycle is [`OutState`]), the simulcast layer it receives and its outgoing timeline.
//! Frames are written into the subscriber's `Rtc` with the frame API, so str0m packetizes,
//! numbers, paces and retransmits (RTX) per leg.

use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::format::PayloadParams;
use str0m::media::{MediaData, MediaKind, Mid, Pt, Rid};

use crate::event::{TrackId, TrackKind};
use crate::keyframe::KeyframeGate;
use crate::participant::PKey;
use crate::simulcast::{LayerInfo, LayerSwitch, Timeline, Verdict};
use crate::stats::{LayerStats, RateMeter, TrackStats};

/// One simulcast layer (or the only stream) of a published track.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) rid: Option<Rid>,
    pub(crate) meter: RateMeter,
    pub(crate) gate: KeyframeGate,
}

impl Layer {
    fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            meter: RateMeter::default(),
            gate: KeyframeGate::default(),
        }
    }
}

/// A track a participant publishes.
#[derive(Debug)]
pub(crate) struct PublishedTrack {
    pub(crate) id: TrackId,
    pub(crate) publisher: PKey,
    pub(crate) publisher_id: Arc<str>,
    pub(crate) room: Arc<str>,
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    /// In announcement order until measured; `sorted_layers` orders them by bitrate.
    pub(crate) layers: Vec<Layer>,
    /// Every participant that should receive the track (negotiated or not yet).
    pub(crate) subscribers: Vec<PKey>,
    pub(crate) frames_in: u64,
}

impl PublishedTrack {
    pub(crate) fn new(
        id: TrackId,
        publisher: PKey,
        publisher_id: Arc<str>,
        room: Arc<str>,
        mid: Mid,
        kind: MediaKind,
        rids: Vec<Rid>,
    ) -> Self {
        let layers = if rids.is_empty() {
            vec![Layer::new(None)]
        } else {
            rids.into_iter().map(|r| Layer::new(Some(r))).collect()
        };
        PublishedTrack {
            id,
            publisher,
            publisher_id,
            room,
            mid,
            kind,
            layers,
            subscribers: Vec::new(),
            frames_in: 0,
        }
    }

    pub(crate) fn track_kind(&self) -> TrackKind {
        track_kind(self.kind)
    }

    pub(crate) fn is_simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer a frame belongs to; unknown rids (not in the SDP) get a layer of their own.
    pub(crate) fn layer_mut(&mut self, rid: Option<Rid>) -> &mut Layer {
        let idx = match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                self.layers.push(Layer::new(rid));
                self.layers.len() - 1
            }
        };
        &mut self.layers[idx]
    }

    /// Accounts an incoming frame.
    pub(crate) fn on_frame(&mut self, now: Instant, data: &MediaData, keyframe: bool) {
        self.frames_in += 1;
        let layer = self.layer_mut(data.rid);
        layer.meter.add(now, data.data.len());
        if keyframe {
            layer.gate.on_keyframe();
        }
    }

    /// Layers ordered lowest quality first: by measured bitrate once every layer is measured,
    /// by announcement order before that.
    pub(crate) fn sorted_layers(&self) -> Vec<LayerInfo> {
        let mut v: Vec<LayerInfo> = self
            .layers
            .iter()
            .map(|l| LayerInfo {
                rid: l.rid,
                bitrate_bps: l.meter.bps(),
            })
            .collect();
        if self.layers.iter().all(|l| l.meter.is_measured()) {
            v.sort_by_key(|l| l.bitrate_bps);
        }
        v
    }

    pub(crate) fn stats(&self, open_subscribers: usize) -> TrackStats {
        TrackStats {
            track: self.id.clone(),
            publisher: self.publisher_id.to_string(),
            kind: self.track_kind(),
            layers: self
                .sorted_layers()
                .into_iter()
                .map(|l| LayerStats {
                    rid: l.rid.map(|r| r.to_string()).unwrap_or_default(),
                    bitrate_bps: l.bitrate_bps,
                })
                .collect(),
            subscribers: open_subscribers,
            frames_in: self.frames_in,
            keyframe_requests: self.layers.iter().map(|l| l.gate.sent).sum(),
        }
    }
}

pub(crate) fn track_kind(kind: MediaKind) -> TrackKind {
    if kind.is_audio() {
        TrackKind::Audio
    } else {
        TrackKind::Video
    }
}

/// Negotiation state of a forwarded track's m-line towards the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// Wanted, waiting for the next server offer.
    Queued,
    /// In the outstanding offer; `cancel` when unsubscribed meanwhile.
    Offered { mid: Mid, cancel: bool },
    /// Negotiated; frames flow.
    Open(Mid),
    /// To be stopped in the next offer.
    Stop(Mid),
    /// Stopped in the outstanding offer.
    StopOffered(Mid),
}

/// A track forwarded to one subscriber.
#[derive(Debug)]
pub(crate) struct OutTrack {
    pub(crate) state: OutState,
    pub(crate) kind: MediaKind,
    /// msid stream id: the publisher, so the subscriber can group a participant's tracks.
    pub(crate) stream_id: Arc<str>,
    /// Incoming payload params and the subscriber's matching payload type.
    pub(crate) pt: Option<(PayloadParams, Pt)>,
    pub(crate) layer: LayerSwitch,
    pub(crate) timeline: Timeline,
    pub(crate) frames: u64,
}

impl OutTrack {
    pub(crate) fn new(track: &PublishedTrack) -> Self {
        let layer = if track.kind.is_audio() {
            LayerSwitch::audio()
        } else {
            // The real target is chosen when the m-line opens; until then the highest layer.
            LayerSwitch::video(track.sorted_layers().last().and_then(|l| l.rid))
        };
        OutTrack {
            state: OutState::Queued,
            kind: track.kind,
            stream_id: track.publisher_id.clone(),
            pt: None,
            layer,
            timeline: Timeline::default(),
            frames: 0,
        }
    }

    pub(crate) fn open_mid(&self) -> Option<Mid> {
        match self.state {
            OutState::Open(mid) => Some(mid),
            _ => None,
        }
    }
}

/// Writes one incoming frame into a subscriber's session if the subscriber should get it.
/// Returns true when something was written (the subscriber's `Rtc` then needs polling).
pub(crate) fn forward_frame(
    rtc: &mut Rtc,
    out: &mut OutTrack,
    data: &MediaData,
    keyframe: bool,
) -> bool {
    let Some(mid) = out.open_mid() else {
        return false;
    };
    let switched = match out.layer.decide(data.rid, keyframe) {
        Verdict::Drop => return false,
        Verdict::Forward { switched } => switched,
    };
    let Some(writer) = rtc.writer(mid) else {
        return false;
    };
    let pt = match out.pt {
        Some((params, pt)) if params == data.params => pt,
        _ => {
            // The subscriber did not negotiate this codec: nothing we can send it.
            let Some(pt) = writer.match_params(data.params) else {
                tracing::debug!(?mid, "subscriber lacks the publisher's codec");
                return false;
            };
            out.pt = Some((data.params, pt));
            pt
        }
    };
    let time = out.timeline.map(data.time, data.network_time, switched);
    match writer.write(pt, data.network_time, time, data.data.clone()) {
        Ok(()) => {
            out.frames += 1;
            true
        }
        Err(e) => {
            tracing::debug!(?mid, error = %e, "forwarding write refused");
            false
        }
    }
}
