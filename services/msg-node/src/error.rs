//! The crate's error type and its mapping to protocol codes, HTTP statuses and gRPC statuses,
//! all in one place.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

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

/// HTTP replies (refused upgrades) are `{"error":{"code","message"}}`, like the auth service's.
impl IntoResponse for MsgNodeError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<MsgNodeError> for tonic::Status {
    fn from(e: MsgNodeError) -> Self {
        let message = e.to_string();
        match e {
            MsgNodeError::BadRequest(_) => tonic::Status::invalid_argument(message),
            MsgNodeError::Unauthorized(_) => tonic::Status::unauthenticated(message),
            MsgNodeError::Forbidden(_) => tonic::Status::permission_denied(message),
            MsgNodeError::NotFound(_) | MsgNodeError::Gone(_) => tonic::Status::not_found(message),
            MsgNodeError::Timeout(_) => tonic::Status::deadline_exceeded(message),
            MsgNodeError::Conflict(_) => tonic::Status::already_exists(message),
            MsgNodeError::TooLarge(_) | MsgNodeError::RateLimited(_) => {
                tonic::Status::resource_exhausted(message)
            }
            MsgNodeError::Unavailable(_) => tonic::Status::unavailable(message),
            MsgNodeError::Store(_) | MsgNodeError::Internal(_) => tonic::Status::internal(message),
        }
    }
}
