//! The crate's error type and its mapping to protocol codes (the numeric `body.code` of the
//! reTHINK envelope, [`MsgNodeError::code`]) and to the shared code table
//! ([`rethink_common::error::ErrorCode`], for HTTP replies and gRPC statuses), all in one
//! place.

use axum::response::{IntoResponse, Response};
use rethink_common::error::{ApiError, ErrorCode};

/// Everything that can go wrong in the Message Node. Each variant has a protocol code
/// ([`MsgNodeError::code`]) used in error responses, in HTTP replies and (mapped) in gRPC.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MsgNodeError {
    /// A request that cannot be understood (missing fields, bad values).
    #[error("{0}")]
    BadRequest(String),
    /// No valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// A token was refused, for the reason given (expired, revoked, bad signature, ...).
    #[error("{0}")]
    Token(rethink_common::token::TokenError),
    /// Authenticated but not allowed (spoofed `from`, missing grant, policy).
    #[error("{0}")]
    Forbidden(String),
    /// No such address, object or session.
    #[error("{0}")]
    NotFound(String),
    /// Nobody confirmed a delivery in time.
    #[error("{0}")]
    Timeout(String),
    /// The address or object is held by someone else, or a version is stale.
    #[error("{0}")]
    Conflict(String),
    /// A resume token that is unknown or expired.
    #[error("{0}")]
    Gone(String),
    /// A message or frame over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Rate limit exceeded.
    #[error("{0}")]
    RateLimited(String),
    /// The node is at a limit (sessions) or shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Redis or the bus failed.
    #[error("store: {0}")]
    Store(String),
    /// A bug or an unexpected failure.
    #[error("internal: {0}")]
    Internal(String),
}

impl MsgNodeError {
    /// Returns the HTTP-like protocol code of this error.
    pub fn code(&self) -> u16 {
        match self {
            MsgNodeError::BadRequest(_) => 400,
            MsgNodeError::Unauthorized(_) => 401,
            MsgNodeError::Token(e) => ApiError::from(e.clone()).code.http_status().as_u16(),
            MsgNodeError::Forbidden(_) => 403,
            MsgNodeError::NotFound(_) => 404,
            MsgNodeError::Timeout(_) => 408,
            MsgNodeError::Conflict(_) => 409,
            MsgNodeError::Gone(_) => 410,
            MsgNodeError::TooLarge(_) => 413,
            MsgNodeError::RateLimited(_) => 429,
            MsgNodeError::Unavailable(_) => 503,
            MsgNodeError::Store(_) | MsgNodeError::Internal(_) => 500,
        }
    }

    /// Builds the error for a protocol code (used for policy and sync decisions).
    pub fn from_code(code: u16, description: impl Into<String>) -> Self {
        let d = description.into();
        match code {
            400 => MsgNodeError::BadRequest(d),
            401 => MsgNodeError::Unauthorized(d),
            403 => MsgNodeError::Forbidden(d),
            404 => MsgNodeError::NotFound(d),
            408 => MsgNodeError::Timeout(d),
            409 => MsgNodeError::Conflict(d),
            410 => MsgNodeError::Gone(d),
            413 => MsgNodeError::TooLarge(d),
            429 => MsgNodeError::RateLimited(d),
            503 => MsgNodeError::Unavailable(d),
            _ => MsgNodeError::Internal(d),
        }
    }
}

impl From<rethink_common::kv::KvError> for MsgNodeError {
    fn from(e: rethink_common::kv::KvError) -> Self {
        MsgNodeError::Store(e.to_string())
    }
}

impl From<rethink_common::bus::BusError> for MsgNodeError {
    fn from(e: rethink_common::bus::BusError) -> Self {
        MsgNodeError::Store(e.to_string())
    }
}

impl From<&MsgNodeError> for ApiError {
    /// The one mapping to the shared code table: HTTP replies (refused upgrades) and gRPC
    /// statuses both come from it. Store and internal failures are logged, and the caller gets
    /// a generic message.
    fn from(e: &MsgNodeError) -> Self {
        let code = match e {
            MsgNodeError::BadRequest(_) => ErrorCode::BadRequest,
            MsgNodeError::Unauthorized(_) => ErrorCode::MissingToken,
            MsgNodeError::Token(t) => return ApiError::from(t.clone()),
            MsgNodeError::Forbidden(_) => ErrorCode::Forbidden,
            MsgNodeError::NotFound(_) => ErrorCode::NotFound,
            MsgNodeError::Timeout(_) => ErrorCode::Timeout,
            MsgNodeError::Conflict(_) => ErrorCode::Conflict,
            MsgNodeError::Gone(_) => ErrorCode::Gone,
            MsgNodeError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            MsgNodeError::RateLimited(_) => ErrorCode::RateLimited,
            MsgNodeError::Unavailable(_) => ErrorCode::Unavailable,
            MsgNodeError::Store(_) | MsgNodeError::Internal(_) => return ApiError::internal(e),
        };
        ApiError::new(code, e.to_string())
    }
}

/// HTTP replies (refused upgrades) are `{"error":{"code":"<snake_case>","message"}}`, like
/// every service's.
impl IntoResponse for MsgNodeError {
    fn into_response(self) -> Response {
        ApiError::from(&self).into_response()
    }
}

impl From<MsgNodeError> for tonic::Status {
    fn from(e: MsgNodeError) -> Self {
        ApiError::from(&e).into()
    }
}
