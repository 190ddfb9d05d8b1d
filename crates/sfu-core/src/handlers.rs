//! Reactions to session events: publishing, forwarding, feedback, bandwidth estimates.

use std::time::Instant;

use str0m::Event;
use str0m::IceConnectionState;
use str0m::bwe::{Bitrate, BweKind};
use str0m::media::{KeyframeRequestKind, MediaAdded, Mid, Rid};
use str0m::rtp::RtpPacket;

use crate::codec::starts_keyframe;
use crate::core::{JoinMode, SfuCore};
use crate::event::{CoreEvent, Output, TrackId};
use crate::forwarding::{Incoming, PublishedTrack, forward_packet, track_kind};
use crate::participant::PKey;
use crate::simulcast::choose_layer;

/// Budget assumed for one forwarded audio track when choosing video layers.
const AUDIO_BUDGET_BPS: u64 = 50_000;

impl SfuCore {
    pub(crate) fn on_rtc_event(&mut self, key: PKey, event: Event, now: Instant) {
        match event {
            Event::RtpPacket(packet) => self.on_rtp_packet(key, packet, now),
            Event::KeyframeRequest(req) => self.on_subscriber_keyframe_request(key, req.mid, now),
            Event::Connected => {
                let Some(p) = self.participants.get_mut(&key) else {
                    return;
                };
                p.connected = true;
                p.ice_down_since = None;
                let ev = CoreEvent::ParticipantConnected {
                    room: p.room.to_string(),
                    participant: p.id.to_string(),
                };
                self.queue.push_back(Output::Event(ev));
                self.negotiate_list.push(key);
            }
            Event::IceConnectionStateChange(state) => {
                let Some(p) = self.participants.get_mut(&key) else {
                    return;
                };
                match state {
                    IceConnectionState::Disconnected => {
                        p.ice_down_since.get_or_insert(now);
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        p.ice_down_since = None;
                    }
                    _ => {}
                }
            }
            Event::MediaAdded(added) => self.on_media_added(key, added),
            Event::MediaChanged(changed) if !changed.direction.is_receiving() => {
                let tid = self
                    .participants
                    .get(&key)
                    .and_then(|p| p.published.get(&changed.mid).cloned());
                if let Some(tid) = tid {
                    self.unpublish(&tid);
                }
            }
            Event::EgressBitrateEstimate(bwe) => {
                let Some(p) = self.participants.get_mut(&key) else {
                    return;
                };
                match bwe {
                    BweKind::Twcc { estimate, .. } => p.estimate.twcc = Some(estimate.as_u64()),
                    BweKind::Remb { estimate, .. } => {
                        p.estimate.remb = Some((estimate.as_u64(), now));
                    }
                    _ => {}
                }
                self.select_layers(key, now);
            }
            Event::PeerStats(s) => {
                let Some(p) = self.participants.get_mut(&key) else {
                    return;
                };
                p.counters.rtt_ms = s.rtt.map(|d| d.as_millis() as u64);
                p.counters.ingress_loss = s.ingress_loss_fraction;
                p.counters.egress_loss = s.egress_loss_fraction;
                // Loss is only known for what we send, so only subscribers get a loss report.
                if let Some(loss) = s.egress_loss_fraction
                    && !p.subs.is_empty()
                {
                    let sent_bps = p.counters.rate_out.bps();
                    p.estimate.on_loss(loss, sent_bps);
                    self.select_layers(key, now);
                }
            }
            Event::MediaIngressStats(s) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.counters.nacks_sent.insert((s.mid, s.rid), s.nacks);
                }
            }
            Event::MediaEgressStats(s) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.counters.nacks_received.insert((s.mid, s.rid), s.nacks);
                }
            }
            Event::Closed => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.gone
                        .get_or_insert(crate::event::LeaveReason::Disconnected);
                    self.gone_list.push(key);
                }
            }
            _ => {}
        }
    }

    /// A new m-line from the peer: if it sends to us, it is a published track; if it receives
    /// from us, a viewer's slot for a room track.
    fn on_media_added(&mut self, key: PKey, added: MediaAdded) {
        if added.direction.is_sending() {
            self.add_receive_slot(key, added.mid, added.kind);
        }
        if !added.direction.is_receiving() {
            return;
        }
        let limit = self.config.max_tracks_per_participant;
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.published.contains_key(&added.mid) {
            return;
        }
        if p.mode == JoinMode::View {
            tracing::warn!(participant = %p.id, mid = %added.mid, "a viewer cannot publish; m-line ignored");
            return;
        }
        if p.published.len() >= limit {
            tracing::warn!(participant = %p.id, limit, "track limit reached; track not forwarded");
            return;
        }
        let tid = TrackId::new(format!("{}-{}", p.id, added.mid));
        let mut rids: Vec<Rid> = Vec::new();
        if let Some(s) = &added.simulcast {
            for l in s.recv.iter().chain(s.send.iter()) {
                if !rids.contains(&l.rid) {
                    rids.push(l.rid);
                }
            }
        }
        let track = PublishedTrack::new(
            tid.clone(),
            key,
            p.id.clone(),
            p.room.clone(),
            added.mid,
            added.kind,
            rids,
        );
        p.published.insert(added.mid, tid.clone());
        let room_id = p.room.clone();
        let publisher = p.id.to_string();
        let event = CoreEvent::TrackPublished {
            room: room_id.to_string(),
            participant: publisher,
            track: tid.clone(),
            kind: track_kind(added.kind),
            rids: track
                .layers
                .iter()
                .filter_map(|l| l.rid.map(|r| r.to_string()))
                .collect(),
        };
        self.tracks.insert(tid.clone(), track);
        let members = match self.rooms.get_mut(&room_id) {
            Some(r) => {
                r.tracks.push(tid.clone());
                r.members.clone()
            }
            None => Vec::new(),
        };
        self.queue.push_back(Output::Event(event));
        tracing::info!(track = %tid, kind = ?added.kind, "track published");
        for m in members {
            if m != key {
                self.sync_subscriptions(m);
            }
        }
    }

    /// Removes a published track from the room and from every subscriber.
    pub(crate) fn unpublish(&mut self, tid: &TrackId) {
        let Some(track) = self.tracks.remove(tid) else {
            return;
        };
        if let Some(p) = self.participants.get_mut(&track.publisher) {
            p.published.remove(&track.mid);
        }
        if let Some(r) = self.rooms.get_mut(&track.room) {
            r.tracks.retain(|t| t != tid);
        }
        for sub in &track.subscribers {
            if let Some(sp) = self.participants.get_mut(sub) {
                sp.excluded.remove(tid);
                if sp.drop_subscription(tid) {
                    self.negotiate_list.push(*sub);
                }
            }
        }
        // Opted-out participants are not in `subscribers`; forget their opt-out too.
        if let Some(room) = self.rooms.get(&track.room) {
            for m in &room.members {
                if let Some(mp) = self.participants.get_mut(m) {
                    mp.excluded.remove(tid);
                }
            }
        }
        self.queue
            .push_back(Output::Event(CoreEvent::TrackUnpublished {
                room: track.room.to_string(),
                participant: track.publisher_id.to_string(),
                track: tid.clone(),
            }));
    }

    /// An RTP packet from a publisher: account it and hand it to every subscriber.
    fn on_rtp_packet(&mut self, key: PKey, packet: RtpPacket, now: Instant) {
        // Padding-only packets carry nothing to forward (str0m already drops empty ones).
        if packet.payload.is_empty() {
            return;
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let (mid, rid) = match p.rx_routes.get(&ssrc) {
            Some(route) => *route,
            None => {
                let mut api = p.rtc.direct_api();
                let Some(stream) = api.stream_rx(&ssrc) else {
                    return;
                };
                let route = (stream.mid(), stream.rid());
                p.rx_routes.insert(ssrc, route);
                route
            }
        };
        let Some(tid) = p.published.get(&mid).cloned() else {
            return;
        };
        let pt = packet.header.payload_type;
        let Some(params) = p
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|c| c.pt() == pt)
            .copied()
        else {
            tracing::debug!(%pt, "packet with a payload type the publisher did not negotiate");
            return;
        };
        let Some(track) = self.tracks.get_mut(&tid) else {
            return;
        };
        let incoming = Incoming {
            rid,
            params,
            keyframe_start: track.kind.is_video()
                && starts_keyframe(params.spec().codec, &packet.payload),
            marker: packet.header.marker,
        };
        track.on_packet(now, &incoming, packet.payload.len());
        for sub in &track.subscribers {
            let Some(sp) = self.participants.get_mut(sub) else {
                continue;
            };
            let Some(out) = sp.subs.get_mut(&tid) else {
                continue;
            };
            if forward_packet(&mut sp.rtc, out, &packet, &incoming) {
                if incoming.marker || out.kind.is_audio() {
                    sp.counters.frames_forwarded += 1;
                }
                if !sp.dirty {
                    sp.dirty = true;
                    self.poll_list.push(*sub);
                }
            }
        }
    }

    /// PLI/FIR from a subscriber on one of our m-lines: ask the publisher of that track for a
    /// keyframe of the layer the subscriber receives (or is switching to).
    fn on_subscriber_keyframe_request(&mut self, key: PKey, mid: Mid, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.counters.keyframe_requests_received += 1;
        let Some(tid) = p.out_mids.get(&mid).cloned() else {
            return;
        };
        let Some(out) = p.subs.get(&tid) else {
            return;
        };
        let rid = out.layer.current.unwrap_or(out.layer.target);
        self.request_keyframe(&tid, rid, now);
    }

    /// Requests a keyframe of one layer from the track's publisher, throttled per layer.
    pub(crate) fn request_keyframe(&mut self, tid: &TrackId, rid: Option<Rid>, now: Instant) {
        let interval = self.config.keyframe_min_interval;
        let Some(track) = self.tracks.get_mut(tid) else {
            return;
        };
        if !track.kind.is_video() {
            return;
        }
        let (publisher, mid) = (track.publisher, track.mid);
        let gate = &mut track.layer_mut(rid).gate;
        if gate.request(now, interval) {
            self.send_keyframe_request(publisher, mid, rid);
        } else if let Some(due) = gate.deadline(interval) {
            self.keyframe_due = Some(self.keyframe_due.map_or(due, |d| d.min(due)));
        }
    }

    /// Asks the publisher for a keyframe with a PLI (every browser supports it; FIR is the
    /// older, heavier request).
    fn send_keyframe_request(&mut self, publisher: PKey, mid: Mid, rid: Option<Rid>) {
        let Some(p) = self.participants.get_mut(&publisher) else {
            return;
        };
        match p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            Some(stream) => stream.request_keyframe(KeyframeRequestKind::Pli),
            // No stream for this layer yet (nothing received): the retry loop asks again.
            None => tracing::debug!(%mid, ?rid, "keyframe request not sent: no stream yet"),
        }
        self.mark_dirty(publisher);
    }

    /// Sends keyframe requests that the throttle held back and that are now due.
    pub(crate) fn send_due_keyframe_requests(&mut self, now: Instant) {
        let interval = self.config.keyframe_min_interval;
        let mut send = Vec::new();
        let mut next: Option<Instant> = None;
        for t in self.tracks.values_mut() {
            for l in &mut t.layers {
                if l.gate.poll_due(now, interval) {
                    send.push((t.publisher, t.mid, l.rid));
                } else if let Some(d) = l.gate.deadline(interval) {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        self.keyframe_due = next;
        for (publisher, mid, rid) in send {
            self.send_keyframe_request(publisher, mid, rid);
        }
    }

    /// Subscriptions whose m-lines just opened: pick their layer and ask for a keyframe so the
    /// new receiver can start decoding at once.
    pub(crate) fn on_tracks_opened(&mut self, key: PKey, opened: &[TrackId], now: Instant) {
        self.select_layers(key, now);
        for tid in opened {
            let target = self
                .participants
                .get(&key)
                .and_then(|p| p.subs.get(tid))
                .filter(|o| o.kind.is_video())
                .map(|o| o.layer.target);
            if let Some(rid) = target {
                self.request_keyframe(tid, rid, now);
            }
        }
    }

    /// Subscriptions still waiting for a keyframe (the request or the keyframe got lost) ask
    /// again; the throttle keeps this cheap for the publisher.
    pub(crate) fn retry_keyframes(&mut self, key: PKey, now: Instant) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let waiting: Vec<(TrackId, Option<Rid>)> = p
            .subs
            .iter()
            .filter(|(_, o)| o.kind.is_video() && o.open_mid().is_some())
            .filter(|(_, o)| o.layer.wants_keyframe())
            .map(|(tid, o)| (tid.clone(), o.layer.target))
            .collect();
        for (tid, rid) in waiting {
            self.request_keyframe(&tid, rid, now);
        }
    }

    /// Chooses the simulcast layer of every video subscription of `key` from its bandwidth
    /// estimate, and tells the estimator how much we would like to send.
    pub(crate) fn select_layers(&mut self, key: PKey, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let available = p.estimate.available(now);
        let mut fixed: u64 = 0;
        let mut simulcast_tracks: u64 = 0;
        let mut desired: u64 = 0;
        for (tid, out) in &p.subs {
            let Some(t) = self.tracks.get(tid) else {
                continue;
            };
            if out.kind.is_audio() {
                fixed += AUDIO_BUDGET_BPS;
                desired += AUDIO_BUDGET_BPS;
            } else if t.is_simulcast() {
                simulcast_tracks += 1;
                desired += t.sorted_layers().last().map_or(0, |l| l.bitrate_bps);
            } else {
                let bps = t.layers.first().map_or(0, |l| l.meter.bps());
                fixed += bps;
                desired += bps;
            }
        }
        p.estimate.wanted_bps = desired;
        let budget = Some(available.saturating_sub(fixed) / simulcast_tracks.max(1));
        let mut wanted = Vec::new();
        for (tid, out) in p.subs.iter_mut() {
            let Some(t) = self.tracks.get(tid) else {
                continue;
            };
            if !t.is_simulcast() || out.kind.is_audio() {
                continue;
            }
            let mut layers = t.sorted_layers();
            // A layer the publisher paused (CPU or uplink limits) has no bitrate: never aim
            // at it while another layer is flowing, its keyframe would never come.
            if layers.iter().any(|l| l.bitrate_bps > 0) {
                layers.retain(|l| l.bitrate_bps > 0);
            }
            let Some(choice) = choose_layer(&layers, budget, out.layer.current) else {
                continue;
            };
            if choice != out.layer.target {
                tracing::debug!(track = %tid, from = ?out.layer.target, to = ?choice, ?budget, "layer target");
                out.layer.target = choice;
                if out.open_mid().is_some() && out.layer.wants_keyframe() {
                    wanted.push((tid.clone(), choice));
                }
            }
        }
        // Ask the estimator to probe up to what the best layers need (plus some headroom).
        let desired = desired + desired / 5;
        if self.config.bwe && desired > 0 && desired.abs_diff(p.bwe_desired) > p.bwe_desired / 10 {
            p.bwe_desired = desired;
            p.rtc
                .bwe()
                .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
            if !p.dirty {
                p.dirty = true;
                self.poll_list.push(key);
            }
        }
        for (tid, rid) in wanted {
            self.request_keyframe(&tid, rid, now);
        }
    }
}
