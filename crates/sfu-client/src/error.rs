//! [`SfuClientError`], the one error of this crate.

/// Everything that can go wrong controlling an SFU.
#[derive(Debug, thiserror::Error)]
pub enum SfuClientError {
    /// The gRPC connection could not be made.
    #[error("transport: {0}")]
    Transport(String),
    /// The SFU answered with a status (its code says why: NOT_FOUND, ALREADY_EXISTS, ...).
    #[error("sfu {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The token cannot be sent as metadata (not visible ASCII).
    #[error("the token is not valid gRPC metadata")]
    BadToken,
    /// The node registry could not be read.
    #[error("node registry: {0}")]
    Store(#[from] rethink_common::kv::KvError),
    /// A wait ran out.
    #[error("nothing within {0:?}")]
    Timeout(std::time::Duration),
    /// No live node that accepts rooms.
    #[error("no live sfu node accepts rooms")]
    NoNode,
}

impl SfuClientError {
    /// Returns the gRPC code of a [`SfuClientError::Status`].
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            SfuClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

impl From<tonic::transport::Error> for SfuClientError {
    fn from(e: tonic::transport::Error) -> Self {
        SfuClientError::Transport(e.to_string())
    }
}
