//! [`ClientError`], the one error of this crate, and [`Closed`], how a connection ended.

use std::{fmt, time::Duration};

/// How a connection ended, in WebSocket close-code terms for both transports.
///
/// gRPC statuses are mapped to the codes the protocol gives the same events on the WebSocket
/// (docs/protocol.md, "Sessions and resume"): `UNAUTHENTICATED` "token revoked" → 4001, other
/// `UNAUTHENTICATED` → 4002, `RESOURCE_EXHAUSTED` → 4008, `ABORTED` → 4009, `UNAVAILABLE` →
/// 1001. A connection that ended without a close frame or status is [`Closed::ABNORMAL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code.
    pub code: u16,
    /// The reason the node gave (or what the client saw).
    pub reason: String,
}

impl Closed {
    /// The code of a connection that ended without a close frame (RFC 6455).
    pub const ABNORMAL: u16 = 1006;
    /// The code of a close frame without a status (RFC 6455).
    pub const NO_STATUS: u16 = 1005;
    /// The code of a normal close.
    pub const NORMAL: u16 = 1000;

    /// Returns a close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    /// Returns the close of a connection that just stopped.
    pub fn abnormal(reason: impl Into<String>) -> Self {
        Self::new(Self::ABNORMAL, reason)
    }

    /// Returns the close of an `Attach` stream that ended with `status`.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code = match status.code() {
            tonic::Code::Unauthenticated if status.message().contains("revoked") => 4001,
            tonic::Code::Unauthenticated => 4002,
            tonic::Code::ResourceExhausted => 4008,
            tonic::Code::Aborted => 4009,
            tonic::Code::Unavailable => 1001,
            tonic::Code::Ok => Self::NORMAL,
            _ => Self::ABNORMAL,
        };
        Self::new(code, status.message())
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.code, self.reason)
    }
}

/// Everything that can go wrong talking to a Message Node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made or broke (I/O, TLS, HTTP/2, WebSocket framing).
    #[error("transport: {0}")]
    Transport(String),
    /// The node refused the connection before the upgrade (HTTP status and JSON body), or
    /// refused the `Attach` call (gRPC status).
    #[error("connection refused with {status}: {body}")]
    Refused {
        /// HTTP status (401, 403, 410, 429, 503), or for gRPC the HTTP equivalent of the
        /// status code (401 unauthenticated, 403 permission denied, 404 not found, 503 other).
        status: u16,
        /// The response body or the gRPC message.
        body: String,
    },
    /// The node answered with an error response.
    #[error("protocol error {code}: {description}")]
    Protocol {
        /// `body.code`.
        code: u16,
        /// `body.description`.
        description: String,
    },
    /// No response arrived in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(Closed),
    /// An address that does not have one of the protocol's forms.
    #[error("bad address {0}")]
    BadAddress(String),
    /// A message the client cannot use (a missing welcome, a response without a field it needs).
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Returns the protocol code of a [`ClientError::Protocol`] or the status of a
    /// [`ClientError::Refused`].
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Protocol { code, .. } => Some(*code),
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::Transport(e.to_string())
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(e: tonic::transport::Error) -> Self {
        ClientError::Transport(e.to_string())
    }
}
