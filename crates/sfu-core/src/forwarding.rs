//! Track routing: published tracks, their subscribers, and the per-subscriber forwarding state.
//!
//! A published track lives in the core's track table and lists its subscribers. Each
//! subscriber holds an [`OutTrack`] for it: the m-line we negotiate towards the subscriber
//! (its lifecycle is [`OutState`]), the simulcast layer it receives and the rewriting of its
//! outgoing stream.
//!
//! Packets are forwarded as RTP (str0m's RTP mode): the payload of an incoming packet is
//! shared, not copied, by every subscriber's send queue, and nothing is depacketized or
//! packetized again. Each leg still has its own SSRC, sequence numbers, SRTP context and RTX
//! cache, so NACKs are answered per subscriber.

use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};

use crate::event::{TrackId, TrackKind};
use crate::keyframe::KeyframeGate;
use crate::participant::PKey;
use crate::rewrite::{SeqMap, Timeline};
use crate::simulcast::{LayerInfo, LayerSwitch, Verdict};
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

    /// Accounts an incoming packet. A frame is counted at its last packet (the marker bit);
    /// every audio packet is a frame of its own.
    pub(crate) fn on_packet(&mut self, now: Instant, incoming: &Incoming, len: usize) {
        if incoming.marker || self.kind.is_audio() {
            self.frames_in += 1;
        }
        let layer = self.layer_mut(incoming.rid);
        layer.meter.add(now, len);
        if incoming.keyframe_start {
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
    /// Incoming payload type and the subscriber's matching one (`None`: the subscriber did
    /// not negotiate that codec).
    pub(crate) pt: Option<(Pt, Option<Pt>)>,
    pub(crate) layer: LayerSwitch,
    pub(crate) seq: SeqMap,
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
            seq: SeqMap::default(),
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

/// What the core learned about an incoming packet before handing it to the subscribers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    /// Simulcast layer of the packet's stream.
    pub(crate) rid: Option<Rid>,
    /// The publisher's codec for the packet's payload type.
    pub(crate) params: PayloadParams,
    /// First packet of a keyframe.
    pub(crate) keyframe_start: bool,
    /// Last packet of a frame.
    pub(crate) marker: bool,
}

/// Writes one incoming packet into a subscriber's session if the subscriber should get it.
/// Returns true when something was written (the subscriber's `Rtc` then needs polling).
pub(crate) fn forward_packet(
    rtc: &mut Rtc,
    out: &mut OutTrack,
    packet: &RtpPacket,
    incoming: &Incoming,
) -> bool {
    let Some(mid) = out.open_mid() else {
        return false;
    };
    let switched = match out.layer.decide(incoming.rid, incoming.keyframe_start) {
        Verdict::Drop => return false,
        Verdict::Forward { switched } => switched,
    };
    let in_pt = packet.header.payload_type;
    let pt = match out.pt {
        Some((known, pt)) if known == in_pt => pt,
        _ => {
            let pt = rtc
                .codec_config()
                .match_params(incoming.params)
                .map(|p| p.pt());
            if pt.is_none() {
                // Once per payload type change, not per packet: the SFU does not transcode,
                // so this subscriber gets nothing of the track until the publisher switches.
                tracing::warn!(
                    %mid,
                    codec = ?incoming.params.spec(),
                    "subscriber did not negotiate the publisher's codec; track not forwarded"
                );
            }
            out.pt = Some((in_pt, pt));
            pt
        }
    };
    let Some(pt) = pt else {
        return false;
    };
    let Some(seq) = out.seq.map(*packet.seq_no, switched) else {
        return false;
    };
    let time = out.timeline.map(packet.time, packet.timestamp, switched);
    let mut api = rtc.direct_api();
    let Some(stream) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    let video = out.kind.is_video();
    let write = RtpWrite::new(
        pt,
        seq.into(),
        // RTP carries the low 32 bits; the extended value only keeps the mapping monotonic.
        time.numer() as u32,
        packet.timestamp,
        packet.payload.clone(),
    )
    .marker(packet.header.marker)
    .nackable(video)
    .ext_vals(forwarded_extensions(&packet.header.ext_vals));
    stream.write_rtp(write);
    if incoming.marker || !video {
        out.frames += 1;
    }
    true
}

/// Header extensions that describe the media itself and so travel with it; transport ones
/// (mid, rid, transport-cc, send time) are the leg's own and str0m sets them.
fn forwarded_extensions(ext: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation,
        ..ExtensionValues::default()
    }
}
