//! The one error type of the auth service, and its mapping to HTTP and gRPC in one place.

use std::time::Duration;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use rethink_common::{
    error::{ApiError, ErrorCode},
    kv::KvError,
    token::TokenError,
};

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately not telling which).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Unknown API key or wrong secret.
    #[error("invalid api key or secret")]
    InvalidApiKey,
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("request body too large")]
    TooLarge,
    /// The bearer token is missing or refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token is valid but lacks a needed grant.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A user with this name exists already.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No user with this name.
    #[error("user {0:?} not found")]
    UserNotFound(String),
    /// No API key with this id.
    #[error("api key {0:?} not found")]
    ApiKeyNotFound(String),
    /// Too many failed attempts; retry after the given time.
    #[error("too many failed attempts; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// The key-value store failed.
    #[error("storage unavailable: {0}")]
    Storage(#[from] KvError),
    /// A bug or corrupt stored data; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AuthError> for ApiError {
    /// The one mapping of auth errors to the shared code table (and so to HTTP and gRPC).
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
            AuthError::InvalidApiKey => ErrorCode::InvalidApiKey,
            AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::TooLarge => ErrorCode::PayloadTooLarge,
            AuthError::Token(token) => return token.clone().into(),
            AuthError::Forbidden(_) => ErrorCode::Forbidden,
            AuthError::UserExists(_) => ErrorCode::UserExists,
            AuthError::UserNotFound(_) => ErrorCode::UserNotFound,
            AuthError::ApiKeyNotFound(_) => ErrorCode::NotFound,
            AuthError::Throttled(wait) => {
                return ApiError::new(ErrorCode::TooManyAttempts, e.to_string()).retry_after(*wait);
            }
            AuthError::Storage(detail) => {
                tracing::error!(error = %detail, "storage failure");
                return ApiError::new(
                    ErrorCode::StorageUnavailable,
                    "storage unavailable; retry later",
                );
            }
            AuthError::Internal(detail) => return ApiError::internal(detail),
        };
        ApiError::new(code, e.to_string())
    }
}

impl AuthError {
    /// Returns the code this error is answered with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AuthError::Token(e) => e.error_code(),
            AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
            AuthError::InvalidApiKey => ErrorCode::InvalidApiKey,
            AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::TooLarge => ErrorCode::PayloadTooLarge,
            AuthError::Forbidden(_) => ErrorCode::Forbidden,
            AuthError::UserExists(_) => ErrorCode::UserExists,
            AuthError::UserNotFound(_) => ErrorCode::UserNotFound,
            AuthError::ApiKeyNotFound(_) => ErrorCode::NotFound,
            AuthError::Throttled(_) => ErrorCode::TooManyAttempts,
            AuthError::Storage(_) => ErrorCode::StorageUnavailable,
            AuthError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Returns the HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.error_code().http_status()
    }

    /// Returns the stable machine-readable code sent in `{"error":{"code"}}`.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

/// Builds the JSON error body every rethink HTTP error uses.
pub fn error_body(code: ErrorCode, message: &str) -> Json<serde_json::Value> {
    Json(ApiError::new(code, message).body())
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        ApiError::from(e).into()
    }
}
