//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong while driving a [`crate::Peer`].
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The WebRTC stack refused an operation (bad SDP, wrong signaling state, closed connection).
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// The H264 encoder or decoder failed.
    #[error("openh264: {0}")]
    Codec(String),
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// A bounded wait ran out; the message says what was awaited and what was seen.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// How long the wait lasted.
        after: Duration,
        /// What was awaited, with the last observed state.
        what: String,
    },
    /// The connection reached `failed` or `closed` while waiting for it to connect.
    #[error("connection ended in state {0}")]
    ConnectionEnded(String),
}

impl From<openh264::Error> for PeerError {
    fn from(error: openh264::Error) -> Self {
        Self::Codec(error.to_string())
    }
}
