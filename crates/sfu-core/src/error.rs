//! The one error type of the media core.

/// Returns why a core call was refused. Every variant is caused by the caller's input (or a
/// configured limit); none of them leaves the core in a broken state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// `create_room` for a room id that is already open on this node.
    #[error("room {0:?} already exists")]
    RoomExists(String),
    /// The room id is not open on this node.
    #[error("room {0:?} not found")]
    RoomNotFound(String),
    /// `join` with a participant id that is already present on this node.
    #[error("participant {0:?} already joined")]
    ParticipantExists(String),
    /// The participant id is not present on this node.
    #[error("participant {0:?} not found")]
    ParticipantNotFound(String),
    /// The track id is not published in the subscriber's room.
    #[error("track {0:?} not found")]
    TrackNotFound(String),
    /// A room, participant or track id is empty, too long or holds control characters.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// An SDP offer or answer could not be parsed or was refused by the WebRTC stack.
    #[error("bad sdp: {0}")]
    BadSdp(String),
    /// `accept_answer` while no server offer is outstanding for the participant.
    #[error("no renegotiation offer is pending for participant {0:?}")]
    NoPendingOffer(String),
    /// A trickled ICE candidate could not be parsed.
    #[error("bad ice candidate: {0}")]
    BadCandidate(String),
    /// A configured limit (rooms, participants, tracks, input size) would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The core configuration is unusable (for example no or invalid host candidates).
    #[error("invalid core configuration: {0}")]
    Config(String),
}
