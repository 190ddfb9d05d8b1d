//! The one error type of the auth service, and its mapping to HTTP and gRPC in one place.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use rethink_common::{kv::KvError, token::TokenError};

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

impl AuthError {
    /// Returns the HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InvalidCredentials | AuthError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AuthError::Token(e) => e.status(),
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            AuthError::UserExists(_) => StatusCode::CONFLICT,
            AuthError::UserNotFound(_) | AuthError::ApiKeyNotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AuthError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the stable machine-readable code sent in `{"error":{"code"}}`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::BadRequest(_) => "bad_request",
            AuthError::TooLarge => "payload_too_large",
            AuthError::Token(e) => e.code(),
            AuthError::Forbidden(_) => "forbidden",
            AuthError::UserExists(_) => "user_exists",
            AuthError::UserNotFound(_) => "user_not_found",
            AuthError::ApiKeyNotFound(_) => "not_found",
            AuthError::Throttled(_) => "too_many_attempts",
            AuthError::Storage(_) => "storage_unavailable",
            AuthError::Internal(_) => "internal",
        }
    }
}

/// Builds the JSON error body every rethink HTTP error uses.
pub fn error_body(code: &str, message: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({"error": {"code": code, "message": message}}))
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if let AuthError::Token(e) = self {
            return e.into_response();
        }
        let message = match &self {
            AuthError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                "storage unavailable; retry later".to_string()
            }
            AuthError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (self.status(), error_body(self.code(), &message)).into_response();
        if let AuthError::Throttled(wait) = &self {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        use tonic::Status;
        match e {
            AuthError::Token(e) => e.into(),
            AuthError::InvalidCredentials | AuthError::InvalidApiKey => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::BadRequest(_) | AuthError::TooLarge => {
                Status::invalid_argument(e.to_string())
            }
            AuthError::Forbidden(_) => Status::permission_denied(e.to_string()),
            AuthError::UserExists(_) => Status::already_exists(e.to_string()),
            AuthError::UserNotFound(_) | AuthError::ApiKeyNotFound(_) => {
                Status::not_found(e.to_string())
            }
            AuthError::Throttled(_) => Status::resource_exhausted(e.to_string()),
            AuthError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::unavailable("storage unavailable; retry later")
            }
            AuthError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
