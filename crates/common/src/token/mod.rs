//! Access tokens: their claims and grants, verification against the auth service's keys, and
//! the credential a long-lived session holds.
//!
//! Tokens are EdDSA (Ed25519) JWTs minted by `rethink-auth`.
//!
//! Layout:
//! - [`grants`]: [`Grants`], what a token allows, and its scope syntax (`rooms.publish,room=demo*`).
//! - [`verifier`]: [`TokenVerifier`]: fetches the public keys (a JWK set), caches them, refetches on
//!   an unknown `kid` (at most once per [`VerifierOptions::min_refetch_interval`]), checks
//!   signature, `exp`/`nbf` (with leeway) and `aud`, and refuses revoked token ids.
//! - [`feed`]: how a verifier learns revocations: [`TokenVerifier::follow`] reads the revoked set
//!   from the store, follows [`crate::bus::topics::AUTH_REVOCATIONS`], re-reads the store after
//!   every bus reconnect and periodically, and holds the service not ready while it cannot.
//! - [`credential`]: [`Credential`], a session's token: renewable by its subject, and a future
//!   that resolves when the token is revoked or expires, so sessions end with their token.
//! - here: [`Claims`], [`TokenError`], bearer extraction and the axum extractor [`Authenticated`].
//!
//! Contracts: a bearer token is read from the `Authorization` header; only a WebSocket upgrade
//! may carry it as `?access_token=` ([`bearer_from_upgrade`]), because browsers cannot set
//! headers there and query strings end up in logs. A revocation reaches every session holding a
//! [`Credential`] of that token as soon as the verifier learns it.

mod credential;
mod feed;
mod grants;
mod verifier;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, ErrorCode};
use rethink_proto::v1 as pb;
use serde::{Deserialize, Serialize};

pub use credential::Credential;
pub use feed::{FEED_CONDITION, FeedOptions};
pub use grants::{CameraGrants, Grants, RoomGrants, ServiceGrants};
pub use verifier::{
    HttpJwks, JwksSource, RevocationFeedError, TokenVerifier, VerifierOptions, decode_revocation,
};

/// The audience every rethink token is minted for and checked against by default.
pub const DEFAULT_AUDIENCE: &str = "rethink";
/// Path of the JWK set on the auth service's HTTP surface.
pub const JWKS_PATH: &str = "/auth/.well-known/jwks.json";
/// Key prefix of revoked token ids in the key-value store (value: `exp` as decimal Unix seconds,
/// TTL until `exp`).
pub const REVOKED_KEY_PREFIX: &str = "rethink:auth:revoked:";
/// `Event.type` of a [`TokenRevoked`] event.
pub const TOKEN_REVOKED_EVENT: &str = "auth.token.revoked";
/// Longest token accepted; anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

pub use pb::TokenRevoked;

/// The claims of a rethink access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: `user:<name>` for people, the API key's subject for services.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id, the handle for revocation.
    pub jti: String,
    /// Audience; [`DEFAULT_AUDIENCE`] for every rethink service.
    pub aud: String,
    /// What the bearer may do.
    #[serde(default)]
    pub grants: Grants,
}

impl From<&Claims> for pb::Claims {
    fn from(c: &Claims) -> Self {
        pb::Claims {
            sub: c.sub.clone(),
            name: c.name.clone(),
            iat: c.iat,
            nbf: c.nbf,
            exp: c.exp,
            jti: c.jti.clone(),
            aud: c.aud.clone(),
            grants: Some((&c.grants).into()),
        }
    }
}

/// Why a token was refused (or could not be checked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No bearer token in the request.
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not a well-formed JWT, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with an algorithm other than EdDSA.
    #[error("token algorithm not accepted; tokens must be EdDSA")]
    WrongAlgorithm,
    /// Signed by a key the auth service does not publish.
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired; log in again")]
    Expired,
    /// Before `nbf`.
    #[error("token not valid yet")]
    NotYetValid,
    /// Minted for another audience.
    #[error("token was minted for another audience")]
    WrongAudience,
    /// Revoked before it expired.
    #[error("token was revoked")]
    Revoked,
    /// A session was offered a token of another identity than its own.
    #[error("the new token is for {got:?}, but this session belongs to {expected:?}")]
    WrongSubject {
        /// The session's subject.
        expected: String,
        /// The offered token's subject.
        got: String,
    },
    /// The auth service's keys could not be fetched.
    #[error("cannot fetch signing keys: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// Returns this error's entry in the code table.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            TokenError::Missing => ErrorCode::MissingToken,
            TokenError::Malformed(_) => ErrorCode::MalformedToken,
            TokenError::WrongAlgorithm => ErrorCode::WrongAlgorithm,
            TokenError::UnknownKey(_) => ErrorCode::UnknownKey,
            TokenError::BadSignature => ErrorCode::BadSignature,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::NotYetValid => ErrorCode::TokenNotYetValid,
            TokenError::WrongAudience => ErrorCode::WrongAudience,
            TokenError::Revoked => ErrorCode::TokenRevoked,
            TokenError::WrongSubject { .. } => ErrorCode::WrongSubject,
            TokenError::KeysUnavailable(_) => ErrorCode::KeysUnavailable,
        }
    }

    /// Returns the HTTP status for this error: 503 when keys are unavailable, 403 for a renewal
    /// by another identity, else 401.
    pub fn status(&self) -> StatusCode {
        self.error_code().http_status()
    }

    /// Returns the stable machine-readable code used in JSON errors.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::new(e.error_code(), e.to_string())
    }
}

/// Renders `{"error":{"code","message"}}` with `WWW-Authenticate: Bearer` on 401.
impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<TokenError> for tonic::Status {
    fn from(e: TokenError) -> Self {
        ApiError::from(e).into()
    }
}

/// Returns the current time in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Returns the bearer token of `Authorization: Bearer <token>`. Every HTTP route reads its token
/// this way; only WebSocket upgrades also look at the query ([`bearer_from_upgrade`]).
pub fn bearer_from_parts(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(strip_bearer)
}

/// Returns the bearer token of a WebSocket upgrade: the `Authorization` header, else the
/// `access_token` query parameter (browsers cannot set headers on WebSocket upgrades).
pub fn bearer_from_upgrade(parts: &Parts) -> Option<&str> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return bearer_from_parts(parts);
    }
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "access_token")
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty())
    })
}

/// Sets `authorization: Bearer <token>` on outgoing gRPC metadata (clients of other services).
pub fn insert_bearer(
    metadata: &mut tonic::metadata::MetadataMap,
    token: &str,
) -> Result<(), TokenError> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| TokenError::Malformed("token is not valid header text".into()))?;
    metadata.insert("authorization", value);
    Ok(())
}

/// Returns the token of `authorization: Bearer <token>` gRPC metadata.
pub fn bearer_from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(strip_bearer)
}

fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Axum extractor of verified claims: the handler runs only with a valid `Authorization: Bearer`
/// token, otherwise the request is answered with the [`TokenError`] as JSON. Needs a [`TokenVerifier`] reachable
/// from the router state via [`FromRef`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    TokenVerifier: FromRef<S>,
{
    type Rejection = TokenError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = TokenVerifier::from_ref(state);
        verifier.verify_parts(parts).await.map(Authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let parts = |uri: &str, auth: Option<&str>| {
            let mut req = axum::http::Request::builder().uri(uri);
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            req.body(()).unwrap().into_parts().0
        };
        let query_only = parts("/msg?x=1&access_token=abc", None);
        assert_eq!(bearer_from_upgrade(&query_only), Some("abc"));
        // Ordinary routes never read the query: it leaks into logs and referrers.
        assert_eq!(bearer_from_parts(&query_only), None);
        let header = parts("/me?access_token=abc", Some("bearer  tok "));
        assert_eq!(bearer_from_parts(&header), Some("tok"));
        assert_eq!(bearer_from_upgrade(&header), Some("tok"));
        assert_eq!(strip_bearer("Basic abc"), None);
        assert_eq!(strip_bearer("Bearer"), None);
        let mut md = tonic::metadata::MetadataMap::new();
        insert_bearer(&mut md, "abc").unwrap();
        assert_eq!(bearer_from_metadata(&md), Some("abc"));
        assert!(insert_bearer(&mut md, "a\nb").is_err());
    }
}
