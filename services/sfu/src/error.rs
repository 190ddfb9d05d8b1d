//! The service's one error type and its one mapping to the shared code table
//! (`rethink_common::error`): HTTP statuses, the JSON error body of WHIP/WHEP
//! (`{"error":{"code","message"}}`) and gRPC statuses all follow from `From<SfuError> for
//! ApiError`.

use rethink_common::error::{ApiError, ErrorCode};
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

/// The one mapping of SFU errors to the shared code table: every HTTP status, error body and
/// gRPC status the service answers with comes from here.
impl From<SfuError> for ApiError {
    fn from(error: SfuError) -> Self {
        let code = match &error {
            SfuError::InvalidArgument(_) => ErrorCode::BadRequest,
            SfuError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            SfuError::BadSdp(_) => ErrorCode::BadSdp,
            SfuError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            SfuError::RoomExists(_) | SfuError::ParticipantExists { .. } => ErrorCode::Conflict,
            SfuError::RoomNotFound(_)
            | SfuError::ParticipantNotFound { .. }
            | SfuError::TrackNotFound(_) => ErrorCode::NotFound,
            SfuError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            SfuError::LimitReached(_) => ErrorCode::LimitReached,
            SfuError::Draining | SfuError::DriverGone => ErrorCode::Unavailable,
            SfuError::Unauthenticated(_) => ErrorCode::MissingToken,
            SfuError::Token(token) => token.error_code(),
            SfuError::PermissionDenied(_) => ErrorCode::Forbidden,
            SfuError::AuthUnavailable(_) => ErrorCode::KeysUnavailable,
            SfuError::Internal(detail) => return ApiError::internal(detail),
        };
        ApiError::new(code, error.to_string())
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
        ApiError::from(error).into()
    }
}

/// `{"error":{"code","message"}}` with the status of the code.
impl axum::response::IntoResponse for SfuError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let cases = [
            (
                SfuError::BadSdp("x".into()),
                tonic::Code::InvalidArgument,
                400,
                "bad_sdp",
            ),
            (
                SfuError::RoomNotFound("r".into()),
                tonic::Code::NotFound,
                404,
                "not_found",
            ),
            (
                SfuError::ParticipantExists {
                    room: "r".into(),
                    participant: "p".into(),
                },
                tonic::Code::AlreadyExists,
                409,
                "conflict",
            ),
            (
                SfuError::Draining,
                tonic::Code::Unavailable,
                503,
                "unavailable",
            ),
            (
                SfuError::from(TokenError::Revoked),
                tonic::Code::Unauthenticated,
                401,
                "token_revoked",
            ),
            (
                SfuError::PermissionDenied("no".into()),
                tonic::Code::PermissionDenied,
                403,
                "forbidden",
            ),
            (
                SfuError::LimitReached("full".into()),
                tonic::Code::ResourceExhausted,
                429,
                "limit_reached",
            ),
        ];
        for (error, grpc, http, code) in cases {
            let api = ApiError::from(error.clone());
            assert_eq!(api.code.as_str(), code, "{error}");
            assert_eq!(api.code.http_status().as_u16(), http, "{error}");
            assert_eq!(tonic::Status::from(error).code(), grpc);
        }
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let api = ApiError::from(SfuError::Internal("secret path /x".into()));
        assert_eq!(api.code, ErrorCode::Internal);
        assert!(!api.message.contains("secret"));
    }
}
