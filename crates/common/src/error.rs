//! The one table of error codes every rethink API answers with, and the one error body.
//!
//! Layout: [`ErrorCode`] lists every machine-readable code with its HTTP status and gRPC code;
//! [`ApiError`] is a code, a message and an optional retry hint, rendered as
//! `{"error":{"code":"<code>","message":"<message>"}}` over HTTP and as a `tonic::Status` over
//! gRPC.
//!
//! Contracts: each service maps its own error enum to an [`ApiError`] in one `From` impl; status
//! codes are never chosen anywhere else. Plain error responses made below the services (unknown
//! route, wrong method, timeouts) are rewritten into the same body by [`json_errors`], which every
//! listener applies. Messages are lowercase sentences that say what to fix.
//! Internal errors are logged with their detail and answered with a generic message.

use std::{fmt, time::Duration};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:ident, $grpc:ident;)*) => {
        /// A machine-readable error code, the same on every rethink API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// Returns the code as sent in error bodies (`snake_case`).
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// Returns the HTTP status of this code.
            pub fn http_status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// Returns the gRPC status code of this code.
            pub fn grpc_code(self) -> tonic::Code {
                match self { $(ErrorCode::$variant => tonic::Code::$grpc,)* }
            }
        }
    };
}

error_codes! {
    /// The request is malformed; the message says what to fix.
    BadRequest = "bad_request", BAD_REQUEST, InvalidArgument;
    /// An SDP offer or answer that cannot be used.
    BadSdp = "bad_sdp", BAD_REQUEST, InvalidArgument;
    /// No bearer token.
    MissingToken = "missing_token", UNAUTHORIZED, Unauthenticated;
    /// A token that is not a well-formed rethink JWT.
    MalformedToken = "malformed_token", UNAUTHORIZED, Unauthenticated;
    /// A token signed with another algorithm than EdDSA.
    WrongAlgorithm = "wrong_algorithm", UNAUTHORIZED, Unauthenticated;
    /// A token signed by a key the auth service does not publish.
    UnknownKey = "unknown_key", UNAUTHORIZED, Unauthenticated;
    /// A token whose signature does not match.
    BadSignature = "bad_signature", UNAUTHORIZED, Unauthenticated;
    /// A token past its expiry.
    TokenExpired = "token_expired", UNAUTHORIZED, Unauthenticated;
    /// A token before its not-before time.
    TokenNotYetValid = "token_not_yet_valid", UNAUTHORIZED, Unauthenticated;
    /// A token minted for another audience.
    WrongAudience = "wrong_audience", UNAUTHORIZED, Unauthenticated;
    /// A token that was revoked.
    TokenRevoked = "token_revoked", UNAUTHORIZED, Unauthenticated;
    /// A renewal token of another identity than the session's.
    WrongSubject = "wrong_subject", FORBIDDEN, PermissionDenied;
    /// Unknown user or wrong password.
    InvalidCredentials = "invalid_credentials", UNAUTHORIZED, Unauthenticated;
    /// Unknown API key or wrong secret.
    InvalidApiKey = "invalid_api_key", UNAUTHORIZED, Unauthenticated;
    /// Authenticated, but not allowed to do this to this resource.
    Forbidden = "forbidden", FORBIDDEN, PermissionDenied;
    /// No such resource.
    NotFound = "not_found", NOT_FOUND, NotFound;
    /// The path exists, but not with this method.
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED, Unimplemented;
    /// No such user.
    UserNotFound = "user_not_found", NOT_FOUND, NotFound;
    /// The resource exists already or is held by someone else.
    Conflict = "conflict", CONFLICT, AlreadyExists;
    /// A user of this name exists already.
    UserExists = "user_exists", CONFLICT, AlreadyExists;
    /// The operation does not fit the resource's state.
    FailedPrecondition = "failed_precondition", CONFLICT, FailedPrecondition;
    /// The resource is gone for good (an expired resume token).
    Gone = "gone", GONE, NotFound;
    /// Nobody answered in time.
    Timeout = "timeout", REQUEST_TIMEOUT, DeadlineExceeded;
    /// A body or message over its size limit.
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE, ResourceExhausted;
    /// A body of the wrong content type.
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, InvalidArgument;
    /// Too many requests; retry later.
    RateLimited = "rate_limited", TOO_MANY_REQUESTS, ResourceExhausted;
    /// Too many failed login attempts; retry later.
    TooManyAttempts = "too_many_attempts", TOO_MANY_REQUESTS, ResourceExhausted;
    /// A configured limit (rooms, sessions, objects) is reached.
    LimitReached = "limit_reached", TOO_MANY_REQUESTS, ResourceExhausted;
    /// The service cannot serve now (draining, a dependency is down); retry or go elsewhere.
    Unavailable = "unavailable", SERVICE_UNAVAILABLE, Unavailable;
    /// The store (Redis) is unreachable; retry later.
    StorageUnavailable = "storage_unavailable", SERVICE_UNAVAILABLE, Unavailable;
    /// The auth service's keys cannot be fetched, so no token can be checked.
    KeysUnavailable = "keys_unavailable", SERVICE_UNAVAILABLE, Unavailable;
    /// A bug; details are in the service's log.
    Internal = "internal", INTERNAL_SERVER_ERROR, Internal;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as an API answers it: code, message, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code from the table.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Sent as `Retry-After` (HTTP) when set.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Returns an error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Returns an internal error: `detail` is logged, the caller gets a generic message.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// Adds a retry hint.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Returns the JSON body `{"error":{"code","message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.http_status();
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up, at least one: `Retry-After: 0` would invite a storm.
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code.grpc_code(), e.message)
    }
}

/// Rewrites error responses that are not JSON (from axum's routing and extractors, tower's limits
/// and timeouts, static files) into `{"error":{"code","message"}}`, keeping status and headers such as `Allow`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // WebSocket upgrades and the like never carry error bodies, so rewriting them is safe.
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed here"),
        StatusCode::REQUEST_TIMEOUT => (ErrorCode::Timeout, "request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ErrorCode::UnsupportedMediaType, "send a JSON body"),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "service unavailable"),
        s if s.is_server_error() => (ErrorCode::Internal, "internal error"),
        _ => (ErrorCode::BadRequest, "bad request"),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let body = ApiError::new(code, message).body();
    let body = Json(body).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(code.http_status().is_client_error() || code.http_status().is_server_error());
            assert_ne!(code.grpc_code(), tonic::Code::Ok);
        }
    }

    #[tokio::test]
    async fn body_and_headers() {
        let response = ApiError::new(ErrorCode::TooManyAttempts, "slow down")
            .retry_after(Duration::from_millis(1500))
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_attempts");
        assert_eq!(json["error"]["message"], "slow down");
        let response = ApiError::new(ErrorCode::MissingToken, "no token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let status = tonic::Status::from(ApiError::new(ErrorCode::NotFound, "no room"));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
