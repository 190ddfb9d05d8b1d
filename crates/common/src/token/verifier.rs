//! [`TokenVerifier`]: checks tokens against the auth service's public keys and the revoked set.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    Claims, DEFAULT_AUDIENCE, JWKS_PATH, MAX_TOKEN_LEN, REVOKED_KEY_PREFIX, TokenError,
    TokenRevoked, bearer_from_metadata, bearer_from_parts, unix_now,
};
use crate::{
    bus::{BusError, EventBus, topics},
    kv::{KvError, KvStore},
};

/// Why a verifier could not start following revocations.
#[derive(Debug, thiserror::Error)]
pub enum RevocationFeedError {
    /// Subscribing to the revocation topic failed.
    #[error("subscribing to token revocations: {0}")]
    Bus(#[from] BusError),
    /// Reading stored revocations failed.
    #[error("loading token revocations: {0}")]
    Kv(#[from] KvError),
}

/// Where a verifier gets the public keys from.
#[async_trait]
pub trait JwksSource: Send + Sync + 'static {
    /// Returns the current JWK set.
    async fn fetch(&self) -> Result<JwkSet, TokenError>;
}

/// Fetches the JWK set over HTTP from the auth service.
#[derive(Debug, Clone)]
pub struct HttpJwks {
    url: String,
    client: reqwest::Client,
}

impl HttpJwks {
    /// Largest JWK set accepted.
    const MAX_BYTES: usize = 256 * 1024;

    /// Returns a source for `<auth_url>/auth/.well-known/jwks.json` (`auth_url` like
    /// `http://auth:8081`).
    pub fn new(auth_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            url: format!("{}{JWKS_PATH}", auth_url.trim_end_matches('/')),
            client,
        }
    }
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        let unavailable =
            |e: &dyn fmt::Display| TokenError::KeysUnavailable(format!("GET {}: {e}", self.url));
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        if !response.status().is_success() {
            return Err(unavailable(&response.status()));
        }
        let body = response.bytes().await.map_err(|e| unavailable(&e))?;
        if body.len() > Self::MAX_BYTES {
            return Err(unavailable(&"JWK set too large"));
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(&e))
    }
}

/// A fixed JWK set, for tests and tools that already hold the keys.
#[async_trait]
impl JwksSource for JwkSet {
    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        Ok(self.clone())
    }
}

/// Tuning of a [`TokenVerifier`].
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// Accepted `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Shortest time between two key fetches caused by unknown `kid`s, so forged tokens cannot
    /// make the verifier hammer the auth service. A token with a new `kid` (after a rotation)
    /// waits at most this long.
    pub min_refetch_interval: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            audience: DEFAULT_AUDIENCE.to_string(),
            leeway: Duration::from_secs(30),
            min_refetch_interval: Duration::from_secs(1),
        }
    }
}

/// Verifies access tokens. Cheap to clone; clones share keys and revocations.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn JwksSource>,
    options: VerifierOptions,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Number of completed key fetches, to tell whether one happened while a caller waited.
    fetches: AtomicU64,
    /// jti -> exp of revoked tokens that have not expired yet.
    revoked: Mutex<HashMap<String, i64>>,
    /// Bumped whenever a token id is newly revoked, so sessions re-check their tokens.
    revocations: watch::Sender<u64>,
    /// Stops the revocation listener when the last clone is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A [`TokenVerifier`] that does not keep it alive.
pub(super) struct WeakVerifier(std::sync::Weak<Inner>);

impl WeakVerifier {
    /// Returns the verifier while any clone of it lives.
    pub(super) fn upgrade(&self) -> Option<TokenVerifier> {
        self.0.upgrade().map(|inner| TokenVerifier { inner })
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Returns a verifier that reads keys from `source`.
    pub fn new(source: Arc<dyn JwksSource>, options: VerifierOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                options,
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
                fetches: AtomicU64::new(0),
                revoked: Mutex::new(HashMap::new()),
                revocations: watch::channel(0).0,
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Returns a verifier with default options that fetches keys from the auth service at
    /// `auth_url` (e.g. `http://127.0.0.1:8081`).
    pub fn from_auth_url(auth_url: &str) -> Self {
        Self::new(
            Arc::new(HttpJwks::new(auth_url)),
            VerifierOptions::default(),
        )
    }

    /// Returns a handle that does not keep the verifier alive (for its background tasks).
    pub(super) fn downgrade(&self) -> WeakVerifier {
        WeakVerifier(Arc::downgrade(&self.inner))
    }

    /// Returns the signal that fires when the last clone of this verifier is dropped.
    pub(super) fn stopped(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// Checks `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_jwt_error(&e))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("token header has no kid".into()))?;
        let key = self.key_for(&kid).await?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = self.inner.options.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_audience(&[&self.inner.options.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| map_jwt_error(&e))?;
        let claims = data.claims;
        if self.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Reads the bearer token of an HTTP request (`Authorization: Bearer`) and verifies it.
    pub async fn verify_parts(&self, parts: &Parts) -> Result<Claims, TokenError> {
        let token = bearer_from_parts(parts).ok_or(TokenError::Missing)?;
        self.verify(token).await
    }

    /// Reads `authorization: Bearer <token>` from gRPC metadata and verifies it.
    pub async fn verify_metadata(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Claims, TokenError> {
        let token = bearer_from_metadata(metadata).ok_or(TokenError::Missing)?;
        self.verify(token).await
    }

    /// Verifies the bearer token of a tonic request; the error is a ready `Status`
    /// (`UNAUTHENTICATED`, or `UNAVAILABLE` when keys cannot be fetched).
    pub async fn verify_grpc<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Claims, tonic::Status> {
        Ok(self.verify_metadata(request.metadata()).await?)
    }

    /// Returns the key `kid`, refetching the key set when it is unknown. Refetches are spaced
    /// by at least `min_refetch_interval` (a caller arriving sooner waits for the slot), and
    /// callers queued behind a fetch reuse its result.
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        let seen = self.inner.fetches.load(Ordering::Acquire);
        let mut last = self.inner.last_fetch.lock().await;
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        // A fetch completed while this caller queued and the kid is still unknown: fail fast,
        // so tokens with made-up kids cannot queue up behind each other.
        if self.inner.fetches.load(Ordering::Acquire) != seen {
            return Err(TokenError::UnknownKey(kid.to_string()));
        }
        if let Some(at) = *last {
            let wait = self
                .inner
                .options
                .min_refetch_interval
                .saturating_sub(at.elapsed());
            tokio::time::sleep(wait).await;
        }
        *last = Some(Instant::now());
        self.fetch_keys().await?;
        self.key(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))
    }

    /// Refetches the key set now.
    pub async fn refresh(&self) -> Result<(), TokenError> {
        let mut last = self.inner.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_keys().await
    }

    async fn fetch_keys(&self) -> Result<(), TokenError> {
        let set = self.inner.source.fetch().await?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        tracing::debug!(keys = keys.len(), "fetched signing keys");
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        self.inner.fetches.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Marks `jti` revoked until `exp` (Unix seconds) in this verifier and its clones.
    pub fn revoke_local(&self, jti: &str, exp: i64) {
        let now = unix_now();
        let mut revoked = self.inner.revoked.lock().unwrap_or_else(|e| e.into_inner());
        // Forget revocations of tokens that would be refused as expired anyway.
        revoked.retain(|_, exp| *exp + 300 > now);
        if exp + 300 > now && revoked.insert(jti.to_string(), exp).is_none() {
            self.inner.revocations.send_modify(|n| *n += 1);
        }
    }

    /// Returns a receiver whose value changes whenever a token id is newly revoked; sessions
    /// wait on it and then check their own token ([`super::Credential::lapsed`]).
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.inner.revocations.subscribe()
    }

    /// Returns the clock leeway applied to `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.inner.options.leeway
    }

    /// Returns why claims that verified earlier are no longer good now (revoked, or past `exp`
    /// plus the leeway), or `None` while they still are.
    pub fn lapse_of(&self, claims: &Claims) -> Option<TokenError> {
        if self.is_revoked(&claims.jti) {
            return Some(TokenError::Revoked);
        }
        let leeway = i64::try_from(self.inner.options.leeway.as_secs()).unwrap_or(i64::MAX);
        (unix_now() >= claims.exp.saturating_add(leeway)).then_some(TokenError::Expired)
    }

    /// Returns true when `jti` has been revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(jti)
    }

    /// Subscribes to [`topics::AUTH_REVOCATIONS`] and applies every [`TokenRevoked`] event to
    /// this verifier until the last clone is dropped. Returns once the subscription is in place,
    /// so revocations published after this call are seen. Services use
    /// [`TokenVerifier::follow`], which also re-reads the store after reconnects.
    pub async fn follow_revocations(&self, bus: &dyn EventBus) -> Result<(), BusError> {
        let mut subscription = bus
            .subscribe(&[topics::AUTH_REVOCATIONS.to_string()])
            .await?;
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    message = subscription.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let Some(inner) = weak.upgrade() else { break };
                match decode_revocation(&message.payload) {
                    Some(revoked) => {
                        tracing::debug!(jti = %revoked.jti, "token revoked");
                        TokenVerifier { inner }.revoke_local(&revoked.jti, revoked.exp);
                    }
                    None => tracing::warn!("ignoring undecodable revocation event"),
                }
            }
        });
        Ok(())
    }

    /// Loads revocations stored under [`REVOKED_KEY_PREFIX`] (those made before this verifier
    /// started following the bus).
    pub async fn load_revocations(&self, kv: &dyn KvStore) -> Result<usize, KvError> {
        let entries = kv.scan_prefix(REVOKED_KEY_PREFIX).await?;
        let mut count = 0;
        for (key, value) in entries {
            let Some(jti) = key.strip_prefix(REVOKED_KEY_PREFIX) else {
                continue;
            };
            let exp = std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or_else(|| unix_now() + 3600);
            self.revoke_local(jti, exp);
            count += 1;
        }
        Ok(count)
    }
}

/// Decodes a [`TokenRevoked`] from an `Event` envelope as published on the bus.
pub fn decode_revocation(payload: &[u8]) -> Option<TokenRevoked> {
    let event = crate::bus::decode_event(payload).ok()?;
    crate::bus::decode_payload::<TokenRevoked>(&event)?.ok()
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => {
            TokenError::Malformed(format!("missing claim {claim}"))
        }
        _ => TokenError::Malformed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts fetches of an empty key set.
    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl JwksSource for Counting {
        async fn fetch(&self) -> Result<JwkSet, TokenError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(JwkSet { keys: vec![] })
        }
    }

    #[tokio::test]
    async fn made_up_kids_cannot_hammer_the_key_source() {
        use base64::Engine;
        let source = Arc::new(Counting(Default::default()));
        let verifier = TokenVerifier::new(
            source.clone(),
            VerifierOptions {
                min_refetch_interval: Duration::from_millis(50),
                ..VerifierOptions::default()
            },
        );
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tokens: Vec<String> = (0..20)
            .map(|i| {
                let header = b64.encode(format!(r#"{{"alg":"EdDSA","kid":"k{i}"}}"#));
                format!("{header}.e30.AAAA")
            })
            .collect();
        let results = futures::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
        for result in results {
            assert!(
                matches!(result, Err(TokenError::UnknownKey(_))),
                "{result:?}"
            );
        }
        assert!(source.0.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn garbage_is_refused_without_fetching() {
        let verifier = TokenVerifier::new(Arc::new(JwkSet { keys: vec![] }), Default::default());
        for token in ["", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.AA"] {
            assert!(verifier.verify(token).await.is_err());
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            verifier.verify(&long).await,
            Err(TokenError::Malformed(_))
        ));
    }
}
