//! What the core hands back to its driver: datagrams to send, events, the next deadline.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Identifies one published track on a node: `<participant>-<mid>` of the publisher's m-line.
/// Opaque to callers; it is also the msid track id the subscriber sees for the forwarded track
/// (characters outside the msid token set are dropped there).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(Arc<str>);

impl TrackId {
    /// Wraps an id received from a caller (for example from a gRPC request).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        TrackId(id.into())
    }

    /// Returns the id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for TrackId {
    fn from(s: &str) -> Self {
        TrackId(s.into())
    }
}

impl From<String> for TrackId {
    fn from(s: String) -> Self {
        TrackId(s.into())
    }
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Opus audio.
    Audio,
    /// VP8 or H264 video, possibly simulcast.
    Video,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// `leave` was called.
    Left,
    /// The room was closed.
    RoomClosed,
    /// ICE/DTLS never came up within the connect timeout.
    ConnectTimeout,
    /// The peer went away (ICE disconnected past the grace period, DTLS closed or failed).
    Disconnected,
}

/// Events for the driver to relay (gRPC event streams, the event bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// ICE and DTLS are up for the participant; media can flow.
    ParticipantConnected {
        /// Room of the participant.
        room: String,
        /// The participant.
        participant: String,
    },
    /// The participant is gone from the core, with all its tracks and subscriptions.
    ParticipantLeft {
        /// Room of the participant.
        room: String,
        /// The participant.
        participant: String,
        /// Why it left.
        reason: LeaveReason,
    },
    /// A participant started publishing a track; the room's other participants receive it by
    /// default (through a `Renegotiate` offer each).
    TrackPublished {
        /// Room of the publisher.
        room: String,
        /// The publisher.
        participant: String,
        /// Id of the new track.
        track: TrackId,
        /// Audio or video.
        kind: TrackKind,
        /// Simulcast layer ids (`rid`s) the publisher announced; empty without simulcast.
        rids: Vec<String>,
    },
    /// A track is gone (publisher left, stopped it, or the room closed).
    TrackUnpublished {
        /// Room of the publisher.
        room: String,
        /// The publisher.
        participant: String,
        /// Id of the removed track.
        track: TrackId,
    },
    /// The server needs to change the participant's session (tracks added or removed). Relay
    /// `offer_sdp` to the participant and hand its answer to `SfuCore::accept_answer`. At most one
    /// offer is outstanding per participant; further changes wait for the answer.
    Renegotiate {
        /// The participant whose session changes.
        participant: String,
        /// The SDP offer to relay.
        offer_sdp: String,
    },
}

/// One UDP datagram to send from the shared socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Local address to send from (one of the configured candidates).
    pub source: SocketAddr,
    /// Peer address.
    pub destination: SocketAddr,
    /// Datagram payload.
    pub contents: Vec<u8>,
}

/// Output of `SfuCore::poll_output`. Drain until `Timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Relay this event.
    Event(CoreEvent),
    /// Nothing more to do; call `SfuCore::handle_timeout` at this instant (or earlier when a
    /// datagram or API call arrives).
    Timeout(Instant),
}
