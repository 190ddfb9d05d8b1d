//! A participant: one peer's str0m session plus what it publishes and receives.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::rtp::Ssrc;
use str0m::{Event, Input, Output as RtcOutput, Rtc};

use crate::core::JoinMode;
use crate::estimate::Estimate;
use crate::event::{LeaveReason, TrackId, Transmit};
use crate::forwarding::{OutState, OutTrack};
use crate::rewrite::{SeqMap, Timeline};
use crate::stats::RateMeter;

/// Key of a participant inside the core (ids are strings; keys are cheap to copy and hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PKey(pub(crate) u64);

/// Due timeouts one `poll` runs itself before it hands the session back to the timer heap.
const MAX_INLINE_TIMEOUTS: usize = 4;

/// Counters kept per participant (the stack's own RTT/loss arrive with its stats events).
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) packets_in: u64,
    pub(crate) packets_out: u64,
    pub(crate) rate_in: RateMeter,
    pub(crate) rate_out: RateMeter,
    pub(crate) frames_forwarded: u64,
    pub(crate) rtt_ms: Option<u64>,
    pub(crate) ingress_loss: Option<f32>,
    pub(crate) egress_loss: Option<f32>,
    /// Latest cumulative values per (mid, rid) from the stack's ingress/egress stats.
    pub(crate) nacks_sent: HashMap<(Mid, Option<str0m::media::Rid>), u64>,
    pub(crate) nacks_received: HashMap<(Mid, Option<str0m::media::Rid>), u64>,
    pub(crate) keyframe_requests_received: u64,
}

pub(crate) struct Participant {
    pub(crate) key: PKey,
    pub(crate) id: Arc<str>,
    pub(crate) room: Arc<str>,
    pub(crate) rtc: Rtc,
    pub(crate) joined_at: Instant,
    pub(crate) connected: bool,
    pub(crate) ice_down_since: Option<Instant>,
    /// The session's own next deadline.
    pub(crate) next_timeout: Instant,
    /// Deadline of this participant's live entry in the core's timer heap.
    pub(crate) armed_at: Option<Instant>,
    /// Queued in the core's poll list.
    pub(crate) dirty: bool,
    /// Tracks this participant publishes, by its m-line. The maps read per forwarded packet
    /// use a fast hash: keys are ours, or SSRCs and mids the session already negotiated.
    pub(crate) published: FxHashMap<Mid, TrackId>,
    /// The m-line and simulcast layer of each incoming SSRC, learned from the session once.
    pub(crate) rx_routes: FxHashMap<Ssrc, (Mid, Option<Rid>)>,
    /// Tracks forwarded to this participant.
    pub(crate) subs: FxHashMap<TrackId, OutTrack>,
    /// Reverse map of `subs` for feedback arriving on our m-lines.
    pub(crate) out_mids: HashMap<Mid, TrackId>,
    /// Tracks this participant opted out of (per-track narrowing).
    pub(crate) excluded: HashSet<TrackId>,
    /// Our outstanding offer.
    pub(crate) pending: Option<SdpPendingOffer>,
    /// When the outstanding offer was made.
    pub(crate) offered_at: Option<Instant>,
    pub(crate) estimate: Estimate,
    /// Last desired bitrate handed to the estimator, to avoid re-arming it with every frame.
    pub(crate) bwe_desired: u64,
    pub(crate) counters: Counters,
    /// Set when the participant must be removed at the end of the current drive.
    pub(crate) gone: Option<LeaveReason>,
    /// How the session is negotiated after the join.
    pub(crate) mode: JoinMode,
    /// [`JoinMode::View`]: the m-lines the peer offered to receive on, in offer order. A slot
    /// is taken while `out_mids` maps its mid to a track.
    pub(crate) slots: Vec<(Mid, MediaKind)>,
    /// [`JoinMode::View`]: the outgoing numbering of freed m-lines. The m-line keeps its SSRC
    /// when the next track takes it, so that track continues the sequence numbers and
    /// timestamps (a restart would read as old packets and be dropped).
    pub(crate) slot_rewrite: HashMap<Mid, (SeqMap, Timeline)>,
    /// The peer's latest offer, kept for sessions without renegotiation: an ICE restart by
    /// SDP fragment replays it with the new credentials.
    pub(crate) remote_offer: Option<String>,
    /// The peer's current ICE username fragment, to tell a restart from a trickle.
    pub(crate) remote_ufrag: Option<String>,
}

impl Participant {
    pub(crate) fn new(
        key: PKey,
        id: &str,
        room: Arc<str>,
        rtc: Rtc,
        estimate: Estimate,
        mode: JoinMode,
        now: Instant,
    ) -> Self {
        Participant {
            key,
            id: id.into(),
            room,
            rtc,
            joined_at: now,
            connected: false,
            ice_down_since: None,
            next_timeout: now,
            armed_at: None,
            dirty: false,
            published: FxHashMap::default(),
            rx_routes: FxHashMap::default(),
            subs: FxHashMap::default(),
            out_mids: HashMap::new(),
            excluded: HashSet::new(),
            pending: None,
            offered_at: None,
            estimate,
            bwe_desired: 0,
            counters: Counters::default(),
            gone: None,
            mode,
            slots: Vec::new(),
            slot_rewrite: HashMap::new(),
            remote_offer: None,
            remote_ufrag: None,
        }
    }

    /// Drains the session until it asks for a timeout: datagrams go to `transmits`, events are
    /// returned for the core to act on (they may touch other participants).
    pub(crate) fn poll(&mut self, now: Instant, transmits: &mut Vec<Transmit>) -> Vec<Event> {
        let mut events = Vec::new();
        let mut due_timeouts = 0;
        loop {
            if !self.rtc.is_alive() {
                self.gone.get_or_insert(LeaveReason::Disconnected);
                self.next_timeout = now;
                return events;
            }
            match self.rtc.poll_output() {
                // Forwarded packets make the session ask for an immediate timeout before it
                // sends them; running it here saves a round through the core's timer heap
                // and the driver for every packet. Bounded, so a session that keeps asking
                // still yields to the others.
                Ok(RtcOutput::Timeout(t)) if t <= now && due_timeouts < MAX_INLINE_TIMEOUTS => {
                    due_timeouts += 1;
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                        tracing::debug!(participant = %self.id, error = %e, "timeout refused");
                    }
                }
                Ok(RtcOutput::Timeout(t)) => {
                    self.next_timeout = t;
                    return events;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    let contents: Vec<u8> = t.contents.into();
                    self.counters.bytes_out += contents.len() as u64;
                    self.counters.packets_out += 1;
                    self.counters.rate_out.add(now, contents.len());
                    transmits.push(Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents,
                    });
                }
                Ok(RtcOutput::Event(e)) => events.push(e),
                Err(e) => {
                    tracing::info!(participant = %self.id, error = %e, "session failed");
                    self.rtc.disconnect();
                }
            }
        }
    }

    /// Builds the next server offer from queued track changes, if there are any and no other
    /// offer is outstanding. Waits for the connection so the peer has certainly applied our
    /// answer to its own offer (an offer arriving earlier would collide with it).
    pub(crate) fn negotiate(&mut self, now: Instant) -> Option<String> {
        if self.pending.is_some() || !self.connected || self.gone.is_some() {
            return None;
        }
        let needs = self
            .subs
            .values()
            .any(|o| matches!(o.state, OutState::Queued | OutState::Stop(_)));
        if !needs {
            return None;
        }
        let mut api = self.rtc.sdp_api();
        for (tid, out) in self.subs.iter_mut() {
            match out.state {
                OutState::Queued => {
                    let mid = api.add_media(
                        out.kind,
                        Direction::SendOnly,
                        Some(out.stream_id.to_string()),
                        Some(tid.as_str().to_string()),
                        None,
                    );
                    out.state = OutState::Offered { mid, cancel: false };
                    self.out_mids.insert(mid, tid.clone());
                }
                OutState::Stop(mid) => {
                    api.stop_media(mid);
                    out.state = OutState::StopOffered(mid);
                }
                _ => {}
            }
        }
        match api.apply() {
            Some((offer, pending)) => {
                self.pending = Some(pending);
                self.offered_at = Some(now);
                Some(offer.to_sdp_string())
            }
            None => {
                // Only stops that needed no negotiation: they are done.
                self.finish_stops();
                None
            }
        }
    }

    /// Applies the peer's answer to our offer. Returns the tracks whose m-lines just opened.
    pub(crate) fn accept_answer(&mut self, answer: SdpAnswer) -> Result<Vec<TrackId>, String> {
        let Some(pending) = self.pending.take() else {
            return Err("no offer outstanding".into());
        };
        self.offered_at = None;
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending, answer) {
            // The offer is spent either way; queue its changes again for a fresh offer.
            self.rollback_offer();
            return Err(e.to_string());
        }
        let mut opened = Vec::new();
        for (tid, out) in self.subs.iter_mut() {
            match out.state {
                OutState::Offered { mid, cancel: true } => out.state = OutState::Stop(mid),
                OutState::Offered { mid, cancel: false } => {
                    out.state = OutState::Open(mid);
                    opened.push(tid.clone());
                }
                _ => {}
            }
        }
        self.finish_stops();
        Ok(opened)
    }

    /// Our outstanding offer was invalidated (the peer sent its own offer, or our offer's
    /// answer was refused): put its changes back in the queue.
    pub(crate) fn rollback_offer(&mut self) {
        self.pending = None;
        self.offered_at = None;
        let mut drop_mids = Vec::new();
        self.subs.retain(|_, out| match out.state {
            OutState::Offered { mid, cancel } => {
                drop_mids.push(mid);
                out.state = OutState::Queued;
                !cancel
            }
            // stop_media took effect locally already; the next offer carries it.
            OutState::StopOffered(mid) => {
                drop_mids.push(mid);
                false
            }
            _ => true,
        });
        for mid in drop_mids {
            self.out_mids.remove(&mid);
        }
    }

    fn finish_stops(&mut self) {
        let out_mids = &mut self.out_mids;
        self.subs.retain(|_, out| match out.state {
            OutState::StopOffered(mid) => {
                out_mids.remove(&mid);
                false
            }
            _ => true,
        });
    }

    /// Stops forwarding `track` to this participant (unsubscribe or unpublish). Returns true
    /// when a renegotiation is needed.
    pub(crate) fn drop_subscription(&mut self, track: &TrackId) -> bool {
        let Some(out) = self.subs.get_mut(track) else {
            return false;
        };
        match out.state {
            OutState::Queued => {
                self.subs.remove(track);
                false
            }
            OutState::Offered { mid, .. } => {
                out.state = OutState::Offered { mid, cancel: true };
                false
            }
            OutState::Open(mid) => {
                out.state = OutState::Stop(mid);
                true
            }
            OutState::Stop(_) | OutState::StopOffered(_) => false,
        }
    }

    pub(crate) fn open_subscriptions(&self) -> usize {
        self.subs
            .values()
            .filter(|o| o.open_mid().is_some())
            .count()
    }

    /// [`JoinMode::View`]: returns the first m-line of `kind` no track is assigned to.
    pub(crate) fn free_slot(&self, kind: MediaKind) -> Option<Mid> {
        self.slots
            .iter()
            .find(|(mid, k)| *k == kind && !self.out_mids.contains_key(mid))
            .map(|(mid, _)| *mid)
    }

    /// Sessions without renegotiation: a track assigned to an m-line (held as `Offered`, as
    /// if our offer carried it) opens once the peer is connected, so its first keyframe is
    /// requested when the peer can receive it; a stopped or cancelled track frees its m-line
    /// at once (the m-line stays negotiated and silent until another track takes it). Returns
    /// the tracks that opened.
    pub(crate) fn settle_fixed(&mut self) -> Vec<TrackId> {
        let mut opened = Vec::new();
        let connected = self.connected && self.gone.is_none();
        let out_mids = &mut self.out_mids;
        let slot_rewrite = &mut self.slot_rewrite;
        self.subs.retain(|tid, out| match out.state {
            OutState::Offered { mid, cancel: true }
            | OutState::Stop(mid)
            | OutState::StopOffered(mid) => {
                out_mids.remove(&mid);
                let numbering = (
                    std::mem::take(&mut out.seq),
                    std::mem::take(&mut out.timeline),
                );
                slot_rewrite.insert(mid, numbering);
                false
            }
            OutState::Offered { mid, cancel: false } if connected => {
                out.state = OutState::Open(mid);
                opened.push(tid.clone());
                true
            }
            _ => true,
        });
        opened.sort();
        opened
    }
}
