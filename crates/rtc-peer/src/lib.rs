//! A Rust WebRTC peer for tests and tools, on the `webrtc` crate (webrtc-rs 0.21).
//!
//! A [`Peer`] can publish a synthetic H264 video (a moving test pattern encoded with
//! openh264, one access unit per RTP sample, paced at a set frame rate and bitrate) and
//! decodes every remote video track it receives, counting decoded frames per track
//! ([`RemoteTrackKey`] = media stream id + track id).
//!
//! Signalling is the caller's: [`Peer::create_offer`] / [`Peer::apply_answer`] for the first
//! negotiation, [`Peer::apply_offer`] for offers from the other side (an SFU's
//! renegotiations), [`Peer::take_local_candidates`] / [`Peer::add_remote_candidate`] for
//! trickle ICE, [`Peer::restart_ice_offer`] for an ICE restart (from new sockets with
//! [`PeerConfig::rebind_on_ice_restart`], as after a network change). Waits
//! ([`Peer::wait_connected`], [`Peer::wait_decoded`],
//! [`Peer::wait_tracks`]) are event driven and bounded by a timeout.
//!
//! Layout: `peer` (the connection and its handler), `publish` (local track and pacing),
//! `receive` (depacketizing and decoding), `pattern` (test pattern and encoder), `error`.
//!
//! Networking is deliberately minimal: one UDP socket on the configured address (normally
//! `127.0.0.1:0`) is the only host candidate; no mDNS, no STUN, no TURN.

mod error;
mod pattern;
mod peer;
mod publish;
mod receive;

pub use error::PeerError;
pub use pattern::{PatternEncoder, TestPattern, VideoConfig};
pub use peer::{Peer, PeerConfig};
pub use receive::{RemoteTrackKey, TrackCounters};
pub use webrtc::peer_connection::RTCPeerConnectionState;

/// The H264 format we send: constrained baseline 3.1, packetization mode 1.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
