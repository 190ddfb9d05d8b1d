//! The service's one error type and its mapping to gRPC and HTTP statuses (the only place where
//! that mapping happens).

use http::StatusCode;
use rethink_common::token::TokenError;

/// Why an SFU operation failed. Messages are lowercase and name what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    /// A request field is missing, too long or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An HTTP body of the wrong content type.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The SDP offer or answer could not be used.
    #[error("bad sdp: {0}")]
    BadSdp(String),
    /// An HTTP body over its size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// CreateRoom for a room that exists.
    #[error("room {0:?} already exists")]
    RoomExists(String),
    /// The room does not exist on this node.
    #[error("room {0:?} not found on this node")]
    RoomNotFound(String),
    /// Join for a participant that is already in the room.
    #[error("participant {participant:?} is already in room {room:?}")]
    ParticipantExists {
        /// The room.
        room: String,
        /// The participant.
        participant: String,
    },
    /// The participant is not in the room.
    #[error("participant {participant:?} not found in room {room:?}")]
    ParticipantNotFound {
        /// The room.
        room: String,
        /// The participant.
        participant: String,
    },
    /// The track is not published in the participant's room.
    #[error("track {0:?} not found")]
    TrackNotFound(String),
    /// The operation does not fit the participant's state (e.g. an answer without an offer).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A configured limit was reached.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The node drains after SIGTERM and takes no new rooms; use another node.
    #[error("this sfu node is draining and accepts no new rooms; pick another node")]
    Draining,
    /// No token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A token that did not verify, or a session's token that lapsed (revoked, expired).
    #[error("unauthenticated: {0}")]
    Token(TokenError),
    /// The token verified but does not grant this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The auth service's keys could not be fetched, so no token can be checked.
    #[error("cannot verify tokens now: {0}")]
    AuthUnavailable(String),
    /// The media driver stopped (the node is shutting down).
    #[error("the media driver is not running")]
    DriverGone,
    /// A bug or an unexpected failure of a dependency.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SfuError {
    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument(_)
            | Self::BadSdp(_)
            | Self::UnsupportedMediaType(_)
            | Self::TooLarge(_) => Code::InvalidArgument,
            Self::RoomExists(_) | Self::ParticipantExists { .. } => Code::AlreadyExists,
            Self::RoomNotFound(_) | Self::ParticipantNotFound { .. } | Self::TrackNotFound(_) => {
                Code::NotFound
            }
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::LimitReached(_) => Code::ResourceExhausted,
            Self::Draining | Self::DriverGone | Self::AuthUnavailable(_) => Code::Unavailable,
            Self::Unauthenticated(_) | Self::Token(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of this error (WHIP/WHEP).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidArgument(_) | Self::BadSdp(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RoomExists(_) | Self::ParticipantExists { .. } => StatusCode::CONFLICT,
            Self::RoomNotFound(_) | Self::ParticipantNotFound { .. } | Self::TrackNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::FailedPrecondition(_) => StatusCode::CONFLICT,
            Self::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining | Self::DriverGone | Self::AuthUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Unauthenticated(_) | Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<TokenError> for SfuError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::KeysUnavailable(reason) => Self::AuthUnavailable(reason),
            other => Self::Token(other),
        }
    }
}

impl From<SfuError> for tonic::Status {
    fn from(error: SfuError) -> Self {
        if matches!(error, SfuError::Internal(_)) {
            tracing::error!(%error, "internal error");
        }
        tonic::Status::new(error.grpc_code(), error.to_string())
    }
}

impl axum::response::IntoResponse for SfuError {
    fn into_response(self) -> axum::response::Response {
        (self.http_status(), format!("{self}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let cases = [
            (SfuError::BadSdp("x".into()), tonic::Code::InvalidArgument),
            (SfuError::RoomNotFound("r".into()), tonic::Code::NotFound),
            (
                SfuError::ParticipantExists {
                    room: "r".into(),
                    participant: "p".into(),
                },
                tonic::Code::AlreadyExists,
            ),
            (SfuError::Draining, tonic::Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }
}
