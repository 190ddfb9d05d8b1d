//! The public face of the media core and its drive loop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::media::{MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc};

use crate::config::CoreConfig;
use crate::demux::{Demux, Route};
use crate::error::CoreError;
use crate::estimate::Estimate;
use crate::event::{CoreEvent, LeaveReason, Output, TrackId, Transmit};
use crate::forwarding::{OutState, OutTrack, PublishedTrack};
use crate::participant::{PKey, Participant};
use crate::room::Room;
use crate::sdp::mark_rejected_sections_inactive;
use crate::sdpfrag::{self, IceFragment, IceUpdate};
use crate::stats::{NodeLoad, ParticipantStats, RateMeter, RoomStats};

/// Longest room or participant id accepted.
const MAX_ID_BYTES: usize = 256;
/// Longest trickled candidate line accepted.
const MAX_CANDIDATE_BYTES: usize = 1024;
/// Period of housekeeping: connect/disconnect deadlines, layer choice, rate windows.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Deadline reported when nothing at all is scheduled.
const IDLE: Duration = Duration::from_secs(3600);

/// How a participant's session is negotiated after [`SfuCore::join_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinMode {
    /// Conference participants: they publish what their offer sends, and the server adds and
    /// removes forwarded tracks by renegotiation ([`CoreEvent::Renegotiate`], answered through
    /// [`SfuCore::accept_answer`]).
    #[default]
    Renegotiated,
    /// Ingest (WHIP): the participant publishes what its offer sends and receives nothing.
    /// The core never makes it an offer.
    Publish,
    /// Playback (WHEP): the offer may only receive (`recvonly`/`inactive` audio and video).
    /// Each m-line it offered to receive on carries one room track of its kind, assigned at
    /// the join and whenever an m-line is free (a track ends) or a track is published. Tracks
    /// that find no free m-line are not sent ([`crate::ParticipantStats::unsent`]). The core
    /// never makes it an offer: a WHEP client cannot take one.
    View,
}

impl JoinMode {
    /// True for sessions whose m-lines are fixed by the joining offer.
    pub fn is_fixed(self) -> bool {
        self != JoinMode::Renegotiated
    }
}

/// Every room and participant of one node. See the crate docs for the driving contract.
pub struct SfuCore {
    pub(crate) config: CoreConfig,
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
    candidates: Vec<Candidate>,
    pub(crate) rooms: HashMap<Arc<str>, Room>,
    // Looked up for every forwarded packet and subscriber: a fast hash, keys are ours.
    pub(crate) participants: FxHashMap<PKey, Participant>,
    by_name: HashMap<Arc<str>, PKey>,
    /// Routes datagrams to participants by STUN ufrag and learned address.
    demux: Demux,
    pub(crate) tracks: FxHashMap<TrackId, PublishedTrack>,
    pub(crate) queue: VecDeque<Output>,
    /// Session deadlines, earliest first. An entry is live when it equals the participant's
    /// `armed_at`; others are stale and skipped, so re-arming never searches the heap.
    timers: BinaryHeap<Reverse<(Instant, PKey)>>,
    /// Participants whose sessions have output to drain.
    pub(crate) poll_list: Vec<PKey>,
    /// Participants that may need a server offer.
    pub(crate) negotiate_list: Vec<PKey>,
    /// Participants to remove at the end of the drive.
    pub(crate) gone_list: Vec<PKey>,
    scratch: Vec<Transmit>,
    next_key: u64,
    last_now: Instant,
    next_housekeeping: Option<Instant>,
    /// Earliest deferred keyframe request.
    pub(crate) keyframe_due: Option<Instant>,
    pub(crate) load: LoadCounters,
}

#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    datagrams_in: u64,
    datagrams_out: u64,
    dropped: u64,
    /// Dropped because they came from no known address and named no known ICE ufrag.
    unknown_source: u64,
    rate_in: RateMeter,
    rate_out: RateMeter,
}

impl std::fmt::Debug for SfuCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuCore")
            .field("rooms", &self.rooms.len())
            .field("participants", &self.participants.len())
            .field("tracks", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

impl SfuCore {
    /// Creates the core. Fails when no candidate is configured or one is not a usable host
    /// address (unspecified, multicast, ...). One DTLS certificate is made here and shared by
    /// every session of the node.
    pub fn new(config: CoreConfig) -> Result<Self, CoreError> {
        if config.candidates.is_empty() {
            return Err(CoreError::Config(
                "at least one host candidate (the media socket's reachable address) is required"
                    .into(),
            ));
        }
        let candidates = config
            .candidates
            .iter()
            .map(|addr| {
                Candidate::host(*addr, "udp")
                    .map_err(|e| CoreError::Config(format!("candidate {addr}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| CoreError::Config("could not generate a DTLS certificate".into()))?;
        Ok(SfuCore {
            config,
            crypto,
            cert,
            candidates,
            rooms: HashMap::new(),
            participants: FxHashMap::default(),
            by_name: HashMap::new(),
            demux: Demux::default(),
            tracks: FxHashMap::default(),
            queue: VecDeque::new(),
            timers: BinaryHeap::new(),
            poll_list: Vec::new(),
            negotiate_list: Vec::new(),
            gone_list: Vec::new(),
            scratch: Vec::new(),
            next_key: 0,
            last_now: Instant::now(),
            next_housekeeping: None,
            keyframe_due: None,
            load: LoadCounters::default(),
        })
    }

    /// Opens a room.
    pub fn create_room(&mut self, room: &str) -> Result<(), CoreError> {
        check_id("room", room)?;
        if self.rooms.contains_key(room) {
            return Err(CoreError::RoomExists(room.into()));
        }
        if self.rooms.len() >= self.config.max_rooms {
            return Err(CoreError::LimitExceeded(format!(
                "this node already holds {} rooms",
                self.rooms.len()
            )));
        }
        let r = Room::new(room);
        self.rooms.insert(r.id.clone(), r);
        Ok(())
    }

    /// Closes a room: every participant leaves with [`LeaveReason::RoomClosed`].
    pub fn close_room(&mut self, room: &str, now: Instant) -> Result<(), CoreError> {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .ok_or_else(|| CoreError::RoomNotFound(room.into()))?;
        self.last_now = now;
        for key in members {
            self.remove_participant(key, LeaveReason::RoomClosed, now);
        }
        self.rooms.remove(room);
        self.drive(now);
        Ok(())
    }

    /// Returns true when the room is open on this node.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Parses the peer's offer, creates its session (ICE-lite, our candidates) and returns
    /// the SDP answer. The tracks the offer sends become published tracks once negotiated; the
    /// room's existing tracks reach the newcomer through a follow-up
    /// [`CoreEvent::Renegotiate`] offer, emitted once the peer is connected.
    pub fn join(
        &mut self,
        room: &str,
        participant: &str,
        offer_sdp: &str,
        now: Instant,
    ) -> Result<String, CoreError> {
        self.join_with(room, participant, offer_sdp, JoinMode::Renegotiated, now)
    }

    /// Like [`SfuCore::join`], for the negotiation `mode` of the participant (WHIP ingest,
    /// WHEP playback or a conference participant).
    pub fn join_with(
        &mut self,
        room: &str,
        participant: &str,
        offer_sdp: &str,
        mode: JoinMode,
        now: Instant,
    ) -> Result<String, CoreError> {
        check_id("room", room)?;
        check_id("participant", participant)?;
        self.check_sdp_size(offer_sdp)?;
        let room_entry = self
            .rooms
            .get(room)
            .ok_or_else(|| CoreError::RoomNotFound(room.into()))?;
        if self.by_name.contains_key(participant) {
            return Err(CoreError::ParticipantExists(participant.into()));
        }
        if room_entry.members.len() >= self.config.max_participants_per_room {
            return Err(CoreError::LimitExceeded(format!(
                "room {room:?} is full ({} participants)",
                room_entry.members.len()
            )));
        }
        let room_id = room_entry.id.clone();
        let offer = SdpOffer::from_sdp_string(&mark_rejected_sections_inactive(offer_sdp))
            .map_err(|e| CoreError::BadSdp(format!("offer does not parse: {e}")))?;
        if mode == JoinMode::View {
            sdpfrag::check_receive_only(offer_sdp)?;
        }
        self.last_now = now;
        let mut rtc = self.new_rtc(now);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| CoreError::BadSdp(e.to_string()))?;

        let key = PKey(self.next_key);
        self.next_key += 1;
        self.demux
            .set_ufrag(key, &rtc.direct_api().local_ice_credentials().ufrag);
        let estimate = Estimate::new(self.config.bwe_initial_bps);
        let mut p = Participant::new(key, participant, room_id.clone(), rtc, estimate, mode, now);
        p.remote_ufrag = sdpfrag::ice_ufrag(offer_sdp).map(str::to_string);
        if mode.is_fixed() {
            p.remote_offer = Some(offer_sdp.to_string());
        }
        self.by_name.insert(p.id.clone(), key);
        self.participants.insert(key, p);
        if let Some(r) = self.rooms.get_mut(&room_id) {
            r.members.push(key);
        }
        self.sync_subscriptions(key);
        self.mark_dirty(key);
        self.drive(now);
        Ok(answer.to_sdp_string())
    }

    /// Applies the participant's answer to the last [`CoreEvent::Renegotiate`] offer.
    pub fn accept_answer(
        &mut self,
        participant: &str,
        answer_sdp: &str,
        now: Instant,
    ) -> Result<(), CoreError> {
        self.check_sdp_size(answer_sdp)?;
        let key = self.key(participant)?;
        let answer = SdpAnswer::from_sdp_string(&mark_rejected_sections_inactive(answer_sdp))
            .map_err(|e| CoreError::BadSdp(format!("answer does not parse: {e}")))?;
        self.last_now = now;
        let p = self
            .participants
            .get_mut(&key)
            .ok_or_else(|| not_found(participant))?;
        if p.pending.is_none() {
            return Err(CoreError::NoPendingOffer(participant.into()));
        }
        let result = p.accept_answer(answer);
        self.negotiate_list.push(key);
        self.mark_dirty(key);
        let opened = match result {
            Ok(opened) => opened,
            Err(e) => {
                self.drive(now);
                return Err(CoreError::BadSdp(e));
            }
        };
        self.sync_subscriptions(key);
        self.on_tracks_opened(key, &opened, now);
        self.drive(now);
        Ok(())
    }

    /// Handles an offer the participant makes itself after joining (it adds, changes or stops
    /// its own tracks) and returns the answer. An outstanding server offer is withdrawn; its
    /// changes come again in a new [`CoreEvent::Renegotiate`].
    pub fn accept_offer(
        &mut self,
        participant: &str,
        offer_sdp: &str,
        now: Instant,
    ) -> Result<String, CoreError> {
        self.check_sdp_size(offer_sdp)?;
        let key = self.key(participant)?;
        let offer = SdpOffer::from_sdp_string(&mark_rejected_sections_inactive(offer_sdp))
            .map_err(|e| CoreError::BadSdp(format!("offer does not parse: {e}")))?;
        self.last_now = now;
        let p = self
            .participants
            .get_mut(&key)
            .ok_or_else(|| not_found(participant))?;
        if p.pending.is_some() {
            p.rollback_offer();
        }
        let result = self.apply_peer_offer(key, offer, offer_sdp);
        self.negotiate_list.push(key);
        self.mark_dirty(key);
        self.drive(now);
        result
    }

    /// Applies an offer of the peer to its session and returns the answer. New ICE
    /// credentials in it restart ICE (str0m answers with new ones of ours and keeps DTLS):
    /// the peer's old addresses stop routing to it, its new ones are learnt from its checks.
    fn apply_peer_offer(
        &mut self,
        key: PKey,
        offer: SdpOffer,
        offer_sdp: &str,
    ) -> Result<String, CoreError> {
        let p = self
            .participants
            .get_mut(&key)
            .ok_or_else(|| CoreError::ParticipantNotFound(String::new()))?;
        let before = p.rtc.direct_api().local_ice_credentials();
        let answer = p
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| CoreError::BadSdp(e.to_string()))?;
        p.remote_ufrag = sdpfrag::ice_ufrag(offer_sdp).map(str::to_string);
        if p.mode.is_fixed() {
            p.remote_offer = Some(offer_sdp.to_string());
        }
        let after = p.rtc.direct_api().local_ice_credentials();
        if after != before {
            tracing::info!(participant = %p.id, "ice restarted by the peer");
            // Forgets the old addresses too: the new checks teach the new ones.
            self.demux.set_ufrag(key, &after.ufrag);
        }
        Ok(answer.to_sdp_string())
    }

    /// Applies a trickle-ICE SDP fragment (RFC 8840, the body of a WHIP/WHEP `PATCH`). With
    /// the session's current credentials (or none) its candidates are added. With new
    /// credentials ICE restarts (RFC 9725 §4.3): only for sessions without renegotiation
    /// ([`JoinMode::Publish`], [`JoinMode::View`]), whose last offer is replayed with the new
    /// credentials; others restart through a full offer ([`SfuCore::accept_offer`]).
    pub fn patch_ice(
        &mut self,
        participant: &str,
        fragment: &str,
        now: Instant,
    ) -> Result<IceUpdate, CoreError> {
        self.check_sdp_size(fragment)?;
        let key = self.key(participant)?;
        let frag = IceFragment::parse(fragment)?;
        let candidates = frag
            .candidates
            .iter()
            .map(|c| {
                Candidate::from_sdp_string(c)
                    .map_err(|e| CoreError::BadCandidate(format!("{c:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.last_now = now;
        let p = self
            .participants
            .get_mut(&key)
            .ok_or_else(|| not_found(participant))?;
        let restart = frag
            .ufrag
            .as_deref()
            .is_some_and(|u| Some(u) != p.remote_ufrag.as_deref());
        if !restart {
            for c in candidates {
                p.rtc.add_remote_candidate(c);
            }
            self.mark_dirty(key);
            self.drive(now);
            return Ok(IceUpdate::Trickled);
        }
        let (Some(ufrag), Some(pwd)) = (frag.ufrag.as_deref(), frag.pwd.as_deref()) else {
            return Err(CoreError::BadSdp(
                "an ice restart needs both a=ice-ufrag and a=ice-pwd".into(),
            ));
        };
        let Some(last_offer) = p.remote_offer.as_deref() else {
            return Err(CoreError::BadSdp(
                "new ice credentials in a fragment: this session renegotiates, so restart \
                 ice with a new offer instead"
                    .into(),
            ));
        };
        let offer_sdp = sdpfrag::restart_offer(last_offer, ufrag, pwd, &frag.candidates);
        let offer = SdpOffer::from_sdp_string(&mark_rejected_sections_inactive(&offer_sdp))
            .map_err(|e| CoreError::BadSdp(format!("restart offer does not parse: {e}")))?;
        let result = self.apply_peer_offer(key, offer, &offer_sdp);
        self.mark_dirty(key);
        self.drive(now);
        let answer = result?;
        let (fragment, ufrag) = sdpfrag::answer_fragment(&answer)
            .ok_or_else(|| CoreError::BadSdp("the answer holds no ice credentials".into()))?;
        Ok(IceUpdate::Restarted { fragment, ufrag })
    }

    /// Adds a trickled ICE candidate of the participant (`candidate:...`, with or without the
    /// `a=` prefix). An empty string (end of candidates) is accepted and ignored. As an ICE-lite
    /// server we learn peer addresses from their checks, so this is optional for peers.
    pub fn add_remote_candidate(
        &mut self,
        participant: &str,
        candidate: &str,
    ) -> Result<(), CoreError> {
        let key = self.key(participant)?;
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        if line.len() > MAX_CANDIDATE_BYTES {
            return Err(CoreError::BadCandidate(format!(
                "candidate is {} bytes, the limit is {MAX_CANDIDATE_BYTES}",
                line.len()
            )));
        }
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| CoreError::BadCandidate(format!("{line:?}: {e}")))?;
        if let Some(p) = self.participants.get_mut(&key) {
            p.rtc.add_remote_candidate(c);
        }
        self.mark_dirty(key);
        Ok(())
    }

    /// Removes the participant: its tracks are unpublished everywhere, its subscriptions
    /// dropped, its session closed (DTLS close_notify is sent).
    pub fn leave(&mut self, participant: &str, now: Instant) -> Result<(), CoreError> {
        let key = self.key(participant)?;
        self.last_now = now;
        self.remove_participant(key, LeaveReason::Left, now);
        self.drive(now);
        Ok(())
    }

    /// Narrows (`on = false`) or restores (`on = true`) what `subscriber` receives: one track of
    /// another participant in its room. Tracks are on by default.
    pub fn set_subscribed(
        &mut self,
        subscriber: &str,
        track: &TrackId,
        on: bool,
        now: Instant,
    ) -> Result<(), CoreError> {
        let key = self.key(subscriber)?;
        self.last_now = now;
        let room = self
            .participants
            .get(&key)
            .map(|p| p.room.clone())
            .ok_or_else(|| not_found(subscriber))?;
        let in_room = self
            .rooms
            .get(&room)
            .is_some_and(|r| r.tracks.contains(track));
        let Some(t) = self.tracks.get_mut(track).filter(|_| in_room) else {
            return Err(CoreError::TrackNotFound(track.to_string()));
        };
        if t.publisher == key {
            // One's own tracks are never forwarded back; nothing to change.
            return Ok(());
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return Err(not_found(subscriber));
        };
        if on {
            p.excluded.remove(track);
            let mut reopened = None;
            if let Some(out) = p.subs.get_mut(track) {
                match out.state {
                    OutState::Offered { mid, cancel: true } => {
                        out.state = OutState::Offered { mid, cancel: false };
                    }
                    OutState::Stop(mid) => {
                        out.state = OutState::Open(mid);
                        reopened = Some(track.clone());
                    }
                    _ => {}
                }
            }
            if !t.subscribers.contains(&key) {
                t.subscribers.push(key);
            }
            self.sync_subscriptions(key);
            if let Some(tid) = reopened {
                self.on_tracks_opened(key, &[tid], now);
            }
        } else {
            p.excluded.insert(track.clone());
            p.drop_subscription(track);
            t.subscribers.retain(|k| *k != key);
        }
        self.negotiate_list.push(key);
        self.drive(now);
        Ok(())
    }

    /// Feeds one datagram received on the media socket. Datagrams that match no participant,
    /// or are not STUN/DTLS/RTP/RTCP, are counted and dropped.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.last_now = now;
        self.load.datagrams_in += 1;
        self.load.rate_in.add(now, data.len());
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, data) else {
            self.load.dropped += 1;
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(key) = self.route(&input, source, data) else {
            self.load.dropped += 1;
            return;
        };
        if let Some(p) = self.participants.get_mut(&key) {
            p.counters.bytes_in += data.len() as u64;
            p.counters.packets_in += 1;
            p.counters.rate_in.add(now, data.len());
            if let Err(e) = p.rtc.handle_input(input) {
                tracing::debug!(participant = %p.id, error = %e, "datagram refused");
            }
        }
        // Only the receiving session is drained now (str0m holds one received RTP packet
        // at a time). The subscribers it wrote to are drained by the next `poll_output`, so a
        // driver that feeds several queued datagrams first pays each subscriber's drain once
        // for all of them.
        self.poll_participant(key, now);
    }

    /// Advances time: sessions whose deadline passed run their timers, and the core does its
    /// housekeeping (deadlines, layer choice, deferred keyframe requests).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            if p.armed_at != Some(at) {
                continue;
            }
            p.armed_at = None;
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(participant = %p.id, error = %e, "timeout refused");
            }
            self.mark_dirty(key);
        }
        if self.keyframe_due.is_some_and(|t| t <= now) {
            self.send_due_keyframe_requests(now);
        }
        if self.next_housekeeping.is_none_or(|t| t <= now) {
            self.housekeeping(now);
            self.next_housekeeping = Some(now + HOUSEKEEPING);
        }
        self.drive(now);
    }

    /// Returns the next output. Drain after every call above until it returns
    /// [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        while self.queue.is_empty() && self.drive_step(self.last_now) {}
        if let Some(o) = self.queue.pop_front() {
            if let Output::Transmit(t) = &o {
                self.load.datagrams_out += 1;
                self.load.rate_out.add(self.last_now, t.contents.len());
            }
            return o;
        }
        let mut next = self.last_now + IDLE;
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if self
                .participants
                .get(&key)
                .is_some_and(|p| p.armed_at == Some(at))
            {
                next = next.min(at);
                break;
            }
            self.timers.pop();
        }
        if !self.participants.is_empty() {
            if let Some(t) = self.next_housekeeping {
                next = next.min(t);
            } else {
                next = self.last_now;
            }
        }
        if let Some(t) = self.keyframe_due {
            next = next.min(t);
        }
        Output::Timeout(next)
    }

    /// Returns how many datagrams came from no known address and named no known ICE ufrag
    /// (dropped without reaching a session). Cheap: for a per-datagram metric.
    pub fn datagrams_from_unknown_sources(&self) -> u64 {
        self.load.unknown_source
    }

    /// Returns a snapshot of one room, or `None` when it is not open here.
    pub fn room_stats(&self, room: &str) -> Option<RoomStats> {
        let r = self.rooms.get(room)?;
        let members: Vec<&Participant> = r
            .members
            .iter()
            .filter_map(|k| self.participants.get(k))
            .collect();
        Some(RoomStats {
            room: room.into(),
            participants: members.iter().map(|p| p.id.to_string()).collect(),
            tracks: r
                .tracks
                .iter()
                .filter_map(|tid| {
                    let t = self.tracks.get(tid)?;
                    let open = t
                        .subscribers
                        .iter()
                        .filter_map(|k| self.participants.get(k))
                        .filter(|p| p.subs.get(tid).is_some_and(|o| o.open_mid().is_some()))
                        .count();
                    Some(t.stats(open))
                })
                .collect(),
            bitrate_in_bps: members.iter().map(|p| p.counters.rate_in.bps()).sum(),
            bitrate_out_bps: members.iter().map(|p| p.counters.rate_out.bps()).sum(),
        })
    }

    /// Returns a snapshot of one participant, or `None` when it is not present here.
    pub fn participant_stats(&self, participant: &str) -> Option<ParticipantStats> {
        let key = self.by_name.get(participant)?;
        let p = self.participants.get(key)?;
        let mut published: Vec<TrackId> = p.published.values().cloned().collect();
        published.sort();
        let mut subscribed: Vec<(TrackId, String)> = p
            .subs
            .iter()
            .filter(|(_, o)| o.open_mid().is_some())
            .map(|(tid, o)| {
                let rid = o
                    .layer
                    .current
                    .flatten()
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                (tid.clone(), rid)
            })
            .collect();
        subscribed.sort();
        let unsent = self.unsent_tracks(p);
        let c = &p.counters;
        Some(ParticipantStats {
            participant: p.id.to_string(),
            room: p.room.to_string(),
            connected: p.connected,
            published,
            subscribed,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            packets_in: c.packets_in,
            packets_out: c.packets_out,
            bitrate_in_bps: c.rate_in.bps(),
            bitrate_out_bps: c.rate_out.bps(),
            frames_forwarded: c.frames_forwarded,
            estimate_bps: Some(p.estimate.available(self.last_now)),
            rtt_ms: c.rtt_ms,
            ingress_loss: c.ingress_loss,
            egress_loss: c.egress_loss,
            nacks_received: c.nacks_received.values().sum(),
            nacks_sent: c.nacks_sent.values().sum(),
            keyframe_requests_received: c.keyframe_requests_received,
            unsent,
        })
    }

    /// Tracks of the room a viewer does not receive because no m-line of their kind is free.
    fn unsent_tracks(&self, p: &Participant) -> Vec<TrackId> {
        if p.mode != JoinMode::View {
            return Vec::new();
        }
        let Some(room) = self.rooms.get(&p.room) else {
            return Vec::new();
        };
        room.tracks
            .iter()
            .filter(|tid| !p.subs.contains_key(*tid) && !p.excluded.contains(*tid))
            .filter(|tid| self.tracks.get(*tid).is_some_and(|t| t.publisher != p.key))
            .cloned()
            .collect()
    }

    /// Returns the node's load for the heartbeat.
    pub fn load(&self) -> NodeLoad {
        NodeLoad {
            rooms: self.rooms.len(),
            participants: self.participants.len(),
            tracks: self.tracks.len(),
            subscriptions: self
                .participants
                .values()
                .map(|p| p.open_subscriptions())
                .sum(),
            bitrate_in_bps: self.load.rate_in.bps(),
            bitrate_out_bps: self.load.rate_out.bps(),
            datagrams_in: self.load.datagrams_in,
            datagrams_out: self.load.datagrams_out,
            datagrams_dropped: self.load.dropped,
            datagrams_unknown_source: self.load.unknown_source,
        }
    }

    // ---- internals -------------------------------------------------------------------------

    fn new_rtc(&self, now: Instant) -> Rtc {
        let mut builder = Rtc::builder()
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_ice_lite(true)
            // Forward RTP packets as they come instead of assembling and re-packetizing frames.
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_stats_interval(Some(self.config.stats_interval));
        if self.config.bwe {
            builder = builder.enable_bwe(Some(Bitrate::bps(self.config.bwe_initial_bps)));
        }
        let mut rtc = builder.build(now);
        for c in &self.candidates {
            rtc.add_local_candidate(c.clone());
        }
        rtc
    }

    fn key(&self, participant: &str) -> Result<PKey, CoreError> {
        self.by_name
            .get(participant)
            .copied()
            .ok_or_else(|| not_found(participant))
    }

    fn check_sdp_size(&self, sdp: &str) -> Result<(), CoreError> {
        if sdp.len() > self.config.max_sdp_bytes {
            return Err(CoreError::LimitExceeded(format!(
                "sdp is {} bytes, the limit is {}",
                sdp.len(),
                self.config.max_sdp_bytes
            )));
        }
        Ok(())
    }

    /// Finds the session of a datagram in O(1) ([`Demux`]); the session confirms it. STUN
    /// routed by ufrag teaches the core the peer's address.
    fn route(&mut self, input: &Input, source: SocketAddr, data: &[u8]) -> Option<PKey> {
        let (key, learn) = match self.demux.route(source, data) {
            Route::ByUfrag(key) => (key, true),
            Route::ByAddr(key) => (key, false),
            Route::Unknown => {
                self.load.unknown_source += 1;
                return None;
            }
        };
        if !self
            .participants
            .get(&key)
            .is_some_and(|p| p.rtc.accepts(input))
        {
            return None;
        }
        if learn {
            self.demux.learn(key, source);
        }
        Some(key)
    }

    pub(crate) fn mark_dirty(&mut self, key: PKey) {
        if let Some(p) = self.participants.get_mut(&key)
            && !p.dirty
        {
            p.dirty = true;
            self.poll_list.push(key);
        }
    }

    /// Runs until every touched session is drained, every needed offer is made and every
    /// departed participant is removed. Events of one session can touch others (forwarding,
    /// keyframe requests), which queues them in turn.
    pub(crate) fn drive(&mut self, now: Instant) {
        while self.drive_step(now) {}
    }

    /// Does one unit of the drive: drains one session, or removes one departed participant,
    /// or makes one offer. Returns false when there was nothing to do. `poll_output` drives
    /// step by step, so a driver can send the first subscribers' packets while the others'
    /// sessions are still to be drained.
    fn drive_step(&mut self, now: Instant) -> bool {
        if let Some(key) = self.poll_list.pop() {
            self.poll_participant(key, now);
        } else if let Some(key) = self.gone_list.pop() {
            let reason = self
                .participants
                .get(&key)
                .and_then(|p| p.gone)
                .unwrap_or(LeaveReason::Disconnected);
            self.remove_participant(key, reason, now);
        } else if let Some(key) = self.negotiate_list.pop() {
            self.negotiate(key);
        } else {
            return false;
        }
        true
    }

    /// Drains one session: its datagrams join the output queue, its events are acted on
    /// (which may mark other sessions dirty) and its deadline is armed.
    fn poll_participant(&mut self, key: PKey, now: Instant) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.dirty = false;
        let events = p.poll(now, &mut self.scratch);
        if p.armed_at != Some(p.next_timeout) {
            p.armed_at = Some(p.next_timeout);
            self.timers.push(Reverse((p.next_timeout, key)));
        }
        let gone = p.gone.is_some();
        self.queue
            .extend(self.scratch.drain(..).map(Output::Transmit));
        for ev in events {
            self.on_rtc_event(key, ev, now);
        }
        if gone {
            self.gone_list.push(key);
        }
    }

    fn negotiate(&mut self, key: PKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.mode.is_fixed() {
            let opened = p.settle_fixed();
            // Freed m-lines take tracks that found none so far.
            self.sync_subscriptions(key);
            if !opened.is_empty() {
                self.on_tracks_opened(key, &opened, self.last_now);
            }
            self.mark_dirty(key);
            return;
        }
        if let Some(offer_sdp) = p.negotiate(self.last_now) {
            let participant = p.id.to_string();
            self.queue.push_back(Output::Event(CoreEvent::Renegotiate {
                participant,
                offer_sdp,
            }));
        }
        self.mark_dirty(key);
    }

    /// An m-line on which we send to the peer appeared in its session. For a viewer
    /// ([`JoinMode::View`]) it is a slot a room track can fill.
    pub(crate) fn add_receive_slot(&mut self, key: PKey, mid: Mid, kind: MediaKind) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.mode != JoinMode::View || p.slots.iter().any(|(m, _)| *m == mid) {
            return;
        }
        p.slots.push((mid, kind));
        self.sync_subscriptions(key);
    }

    /// Makes sure `key` has a subscription entry for every track in its room it has not
    /// opted out of.
    pub(crate) fn sync_subscriptions(&mut self, key: PKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let Some(room) = self.rooms.get(&p.room) else {
            return;
        };
        if p.mode == JoinMode::Publish {
            return;
        }
        let mut added = false;
        for tid in &room.tracks {
            let Some(t) = self.tracks.get_mut(tid) else {
                continue;
            };
            if t.publisher == key || p.excluded.contains(tid) || p.subs.contains_key(tid) {
                continue;
            }
            let mut out = OutTrack::new(t);
            if p.mode == JoinMode::View {
                // No renegotiation: the track needs a free m-line the peer offered.
                let Some(mid) = p.free_slot(t.kind) else {
                    continue;
                };
                out.state = OutState::Offered { mid, cancel: false };
                if let Some((seq, timeline)) = p.slot_rewrite.remove(&mid) {
                    out.seq = seq;
                    out.timeline = timeline;
                }
                p.out_mids.insert(mid, tid.clone());
            }
            p.subs.insert(tid.clone(), out);
            if !t.subscribers.contains(&key) {
                t.subscribers.push(key);
            }
            added = true;
        }
        if added {
            self.negotiate_list.push(key);
        }
    }

    /// Removes a participant and everything hanging off it.
    pub(crate) fn remove_participant(&mut self, key: PKey, reason: LeaveReason, now: Instant) {
        let Some(mut p) = self.participants.remove(&key) else {
            return;
        };
        let mut published: Vec<TrackId> = p.published.values().cloned().collect();
        published.sort();
        for tid in published {
            self.unpublish(&tid);
        }
        for tid in p.subs.keys() {
            if let Some(t) = self.tracks.get_mut(tid) {
                t.subscribers.retain(|k| *k != key);
            }
        }
        self.by_name.remove(&p.id);
        self.demux.remove(key);
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.members.retain(|k| *k != key);
        }
        // Say goodbye properly (RTCP BYE, DTLS close_notify) when the session still lives.
        if p.rtc.is_alive() {
            if let Err(e) = p.rtc.close() {
                tracing::debug!(participant = %p.id, error = %e, "close failed");
            }
            p.gone = None;
            let _ = p.poll(now, &mut self.scratch);
            self.queue
                .extend(self.scratch.drain(..).map(Output::Transmit));
        }
        tracing::info!(participant = %p.id, room = %p.room, ?reason, "participant left");
        self.queue
            .push_back(Output::Event(CoreEvent::ParticipantLeft {
                room: p.room.to_string(),
                participant: p.id.to_string(),
                reason,
            }));
    }

    /// Connect timeouts, ICE grace, meter windows, layer choice, keyframe retries.
    fn housekeeping(&mut self, now: Instant) {
        self.load.rate_in.roll(now);
        self.load.rate_out.roll(now);
        for t in self.tracks.values_mut() {
            for l in &mut t.layers {
                l.meter.roll(now);
            }
        }
        let mut expired = Vec::new();
        let mut keys = Vec::with_capacity(self.participants.len());
        for p in self.participants.values_mut() {
            p.counters.rate_in.roll(now);
            p.counters.rate_out.roll(now);
            keys.push(p.key);
            if !p.connected
                && now.saturating_duration_since(p.joined_at) >= self.config.connect_timeout
            {
                expired.push((p.key, LeaveReason::ConnectTimeout));
            } else if p
                .ice_down_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.disconnect_grace)
            {
                expired.push((p.key, LeaveReason::Disconnected));
            } else if p
                .offered_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.answer_timeout)
            {
                // The offer got lost on the way (or the peer ignored it): withdraw it and
                // offer the same changes again.
                tracing::info!(participant = %p.id, "renegotiation offer unanswered; offering again");
                p.rollback_offer();
                self.negotiate_list.push(p.key);
            }
        }
        for (key, reason) in expired {
            self.remove_participant(key, reason, now);
        }
        keys.sort();
        for key in keys {
            self.select_layers(key, now);
            self.retry_keyframes(key, now);
        }
    }
}

fn not_found(participant: &str) -> CoreError {
    CoreError::ParticipantNotFound(participant.into())
}

fn check_id(what: &str, id: &str) -> Result<(), CoreError> {
    if id.is_empty() {
        return Err(CoreError::InvalidId(format!("{what} id is empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(CoreError::InvalidId(format!(
            "{what} id is {} bytes, the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(CoreError::InvalidId(format!(
            "{what} id {id:?} holds control characters"
        )));
    }
    Ok(())
}
