//! Sans-IO media core of the rethink SFU, built on [str0m].
//!
//! [`SfuCore`] holds every room and participant of one node. Each participant is one str0m
//! `Rtc` (ICE-lite, our host candidates) and all of them share one UDP socket: incoming
//! datagrams are routed in O(1), STUN by the ICE ufrag it names and everything else by the
//! peer address its checks came from (`demux`); datagrams of unknown sources are dropped and
//! counted ([`SfuCore::datagrams_from_unknown_sources`]) without reaching any session. The core never touches a socket, a
//! clock or a thread: its driver feeds it datagrams, API calls and timeouts, then drains
//! [`SfuCore::poll_output`] until it returns [`Output::Timeout`].
//!
//! ```text
//!   driver (sfu service)                 SfuCore
//!   ────────────────────                 ──────────────────────────────────────────────
//!   UDP recv ─────────── handle_datagram ─▶ demux (ufrag | address) ─▶ participant Rtc
//!   timer ────────────── handle_timeout ──▶ every due Rtc + housekeeping
//!   gRPC join/answer… ── join/accept_answer/set_subscribed/leave
//!   UDP send / events ◀─ poll_output ◀──── Transmit | Event(CoreEvent) | Timeout
//! ```
//!
//! Media flow: every publisher's tracks (Opus audio, VP8/H264 video, simulcast layers) are
//! forwarded to every other participant of the room unless that participant narrowed its
//! subscriptions ([`SfuCore::set_subscribed`]). A forwarded track is a send-only m-line the
//! server adds to the subscriber's session by renegotiation: the core emits
//! [`CoreEvent::Renegotiate`] with an offer and expects the answer through
//! [`SfuCore::accept_answer`]. Packets are forwarded as RTP (str0m's RTP mode): an incoming
//! packet's payload is shared by every subscriber's send queue, never depacketized or
//! re-packetized; each leg has its own SSRC, sequence numbers, SRTP and RTX cache, so NACKs
//! are answered per subscriber. The core finds keyframes itself (`codec`) because new
//! subscribers and simulcast switches can only start at one.
//!
//! Sessions that cannot take a server offer join with a [`JoinMode`]: WHIP publishers
//! ([`JoinMode::Publish`]) publish and receive nothing; WHEP viewers ([`JoinMode::View`]) get
//! the room's tracks in the receive-only m-lines of their own offer, matched by kind, and never
//! a [`CoreEvent::Renegotiate`]. A peer's offer with new ICE credentials restarts ICE (str0m
//! answers with new ones of ours and keeps DTLS); datagrams are routed by the new ufrag and
//! address from then on. Fixed sessions restart with a trickle-ICE fragment instead
//! ([`SfuCore::patch_ice`]).
//!
//! Layout:
//! - `core`: the public [`SfuCore`] API and the drive loop.
//! - `handlers`: reactions to session events (publish, forward, feedback, estimates).
//! - `participant`: one peer's session and negotiation state.
//! - `room`: members and tracks of a room.
//! - `demux`: the ufrag and address maps that route datagrams to sessions.
//! - `sdp`: repairs of peer SDP that str0m would refuse (rejected m-sections).
//! - `forwarding`: published tracks, subscriptions, writing packets to subscribers.
//! - `codec`: keyframe detection in VP8 and H264 payloads.
//! - `rewrite`: per-subscriber sequence numbers and timestamps, continuous across switches.
//! - `simulcast`: layer choice from the bandwidth estimate, keyframe-gated switching.
//! - `estimate`: the budget towards each subscriber (TWCC-reported loss, REMB, optionally
//!   str0m's delay-based estimator).
//! - `keyframe`: keyframe request throttling.
//! - `stats`: snapshots and load counters.
//! - `sdpfrag`: trickle-ICE SDP fragments and ICE restarts of sessions without renegotiation.
//!
//! Timing: the core keeps every session's deadline in a timer heap; `poll_output` ends with
//! the earliest one and `handle_timeout` runs only the sessions that are due, so an idle
//! participant costs nothing per packet. Each subscriber's budget comes from the loss its
//! TWCC feedback reports and from REMB; with [`CoreConfig::bwe`] str0m's delay-based estimator
//! (which also paces the leg) caps it too. The budget picks the simulcast layer per subscriber.
//!
//! Contracts: nothing from the network can panic the core; bad input is a [`CoreError`].
//! Participant ids are unique per node (the service may prefix them with the room). The core
//! is `Send` (one task owns it) and never blocks.

mod codec;
mod config;
mod core;
mod demux;
mod error;
mod estimate;
mod event;
mod forwarding;
mod handlers;
mod keyframe;
mod participant;
mod rewrite;
mod room;
mod sdp;
mod sdpfrag;
mod simulcast;
mod stats;

pub use crate::config::CoreConfig;
pub use crate::core::{JoinMode, SfuCore};
pub use crate::error::CoreError;
pub use crate::event::{CoreEvent, LeaveReason, Output, TrackId, TrackKind, Transmit};
pub use crate::sdpfrag::{IceUpdate, apply_ice_fragment, ice_credentials};
pub use crate::stats::{LayerStats, NodeLoad, ParticipantStats, RoomStats, TrackStats};

#[cfg(test)]
mod tests {
    #[test]
    fn core_can_move_to_the_driving_task() {
        fn is_send<T: Send>() {}
        is_send::<super::SfuCore>();
    }
}
