//! Access tokens: their claims and grants, and verification against the auth service's keys.
//!
//! Tokens are EdDSA (Ed25519) JWTs minted by `rethink-auth`. A [`TokenVerifier`] fetches the
//! public keys (a JWK set) once, caches them, refetches on an unknown `kid` (at most once per
//! [`VerifierOptions::min_refetch_interval`], 1 s by default), checks signature, `exp`/`nbf` (with leeway) and
//! `aud`, and refuses revoked token ids. Revocations arrive as [`TokenRevoked`] events on
//! [`crate::bus::topics::AUTH_REVOCATIONS`] ([`TokenVerifier::follow_revocations`]); revocations
//! made before a verifier started are read from the key-value store
//! ([`TokenVerifier::load_revocations`]).
//!
//! Entry points for services: the axum extractor [`Authenticated`] (reads `Authorization: Bearer`
//! or `?access_token=`) and [`TokenVerifier::verify_grpc`] for tonic handlers (reads the
//! `authorization: Bearer` metadata).

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use rethink_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{BusError, EventBus, topics},
    kv::{KvError, KvStore},
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

/// What a token allows. The default allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// Conference rooms.
    pub rooms: RoomGrants,
    /// IoT cameras.
    pub cameras: CameraGrants,
    /// Server-side hyperties.
    pub services: ServiceGrants,
    /// Administers users, API keys and signing keys.
    pub admin: bool,
}

/// Grants on conference rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomGrants {
    /// Join a room (as a participant).
    pub join: bool,
    /// Publish media into a room.
    pub publish: bool,
    /// Receive media from a room.
    pub subscribe: bool,
    /// Create, close and manage participants of rooms.
    pub admin: bool,
    /// The rooms these grants apply to; `None` means every room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// Grants on cameras.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CameraGrants {
    /// Watch cameras.
    pub view: bool,
    /// Register cameras and change their settings (recording, ...).
    pub manage: bool,
}

/// Grants for server-side components.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceGrants {
    /// Attach to msg-node as a server hyperty.
    pub attach: bool,
}

impl Grants {
    /// Returns the grants of an ordinary user: join, publish and subscribe in every room, view
    /// cameras.
    pub fn user() -> Self {
        Self {
            rooms: RoomGrants {
                join: true,
                publish: true,
                subscribe: true,
                admin: false,
                names: None,
            },
            cameras: CameraGrants {
                view: true,
                manage: false,
            },
            services: ServiceGrants::default(),
            admin: false,
        }
    }

    /// Returns every grant there is.
    pub fn all() -> Self {
        Self {
            rooms: RoomGrants {
                join: true,
                publish: true,
                subscribe: true,
                admin: true,
                names: None,
            },
            cameras: CameraGrants {
                view: true,
                manage: true,
            },
            services: ServiceGrants { attach: true },
            admin: true,
        }
    }

    /// Returns what both `self` and `other` allow; used so a minted token is never wider than
    /// the key that minted it.
    pub fn intersect(&self, other: &Grants) -> Grants {
        let names = match (&self.rooms.names, &other.rooms.names) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (Some(a), Some(b)) => Some(a.iter().filter(|n| b.contains(n)).cloned().collect()),
        };
        Grants {
            rooms: RoomGrants {
                join: self.rooms.join && other.rooms.join,
                publish: self.rooms.publish && other.rooms.publish,
                subscribe: self.rooms.subscribe && other.rooms.subscribe,
                admin: self.rooms.admin && other.rooms.admin,
                names,
            },
            cameras: CameraGrants {
                view: self.cameras.view && other.cameras.view,
                manage: self.cameras.manage && other.cameras.manage,
            },
            services: ServiceGrants {
                attach: self.services.attach && other.services.attach,
            },
            admin: self.admin && other.admin,
        }
    }

    /// Returns true when everything `self` allows is also allowed by `other`.
    pub fn is_subset_of(&self, other: &Grants) -> bool {
        self.intersect(other) == self.normalized()
    }

    /// Returns true when the room grants apply to `room`.
    pub fn covers_room(&self, room: &str) -> bool {
        self.rooms
            .names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == room))
    }

    /// Returns true when the bearer may join `room` (join grant, and the room is covered).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.join && self.covers_room(room)
    }

    /// Returns true when the bearer may publish media into `room`.
    pub fn may_publish(&self, room: &str) -> bool {
        self.rooms.publish && self.covers_room(room)
    }

    /// Returns true when the bearer may receive media from `room`.
    pub fn may_subscribe(&self, room: &str) -> bool {
        self.rooms.subscribe && self.covers_room(room)
    }

    /// Returns true when the bearer may administer `room` (create, close, remove participants);
    /// the global admin grant counts too.
    pub fn may_admin_room(&self, room: &str) -> bool {
        self.admin || (self.rooms.admin && self.covers_room(room))
    }

    // Intersection with "everything" keeps values but drops duplicate room names, so compare
    // against the same normal form.
    fn normalized(&self) -> Grants {
        self.intersect(&Grants::all())
    }

    fn scopes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let flags = [
            (self.rooms.join, "rooms.join"),
            (self.rooms.publish, "rooms.publish"),
            (self.rooms.subscribe, "rooms.subscribe"),
            (self.rooms.admin, "rooms.admin"),
            (self.cameras.view, "cameras.view"),
            (self.cameras.manage, "cameras.manage"),
            (self.services.attach, "services.attach"),
            (self.admin, "admin"),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, s)| s.to_string()),
        );
        if let Some(names) = &self.rooms.names {
            out.extend(names.iter().map(|n| format!("room={n}")));
        }
        out
    }
}

/// Formats grants as the comma-separated scope list [`Grants::from_str`] reads.
impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scopes().join(","))
    }
}

/// Parses a comma-separated scope list: `rooms.join`, `rooms.publish`, `rooms.subscribe`,
/// `rooms.admin`, `rooms.*`, `cameras.view`, `cameras.manage`, `cameras.*`, `services.attach`,
/// `admin`, `room=<name>` (limits room grants to the named rooms), and the presets `user`, `all`
/// and `none`.
impl FromStr for Grants {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut g = Grants::default();
        for scope in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match scope {
                "user" => {
                    let names = g.rooms.names.take();
                    g = merge(&g, &Grants::user());
                    g.rooms.names = names;
                }
                "all" => {
                    let names = g.rooms.names.take();
                    g = Grants::all();
                    g.rooms.names = names;
                }
                "none" => {}
                "rooms.join" => g.rooms.join = true,
                "rooms.publish" => g.rooms.publish = true,
                "rooms.subscribe" => g.rooms.subscribe = true,
                "rooms.admin" => g.rooms.admin = true,
                "rooms.*" => {
                    g.rooms.join = true;
                    g.rooms.publish = true;
                    g.rooms.subscribe = true;
                    g.rooms.admin = true;
                }
                "cameras.view" => g.cameras.view = true,
                "cameras.manage" => g.cameras.manage = true,
                "cameras.*" => {
                    g.cameras.view = true;
                    g.cameras.manage = true;
                }
                "services.attach" => g.services.attach = true,
                "admin" => g.admin = true,
                other => match other.strip_prefix("room=") {
                    Some(name) if !name.is_empty() => {
                        g.rooms
                            .names
                            .get_or_insert_with(Vec::new)
                            .push(name.to_string());
                    }
                    _ => {
                        return Err(format!(
                            "unknown grant {other:?}; use rooms.join, rooms.publish, \
                             rooms.subscribe, rooms.admin, cameras.view, cameras.manage, \
                             services.attach, admin, room=<name>, user, all or none"
                        ));
                    }
                },
            }
        }
        Ok(g)
    }
}

fn merge(a: &Grants, b: &Grants) -> Grants {
    Grants {
        rooms: RoomGrants {
            join: a.rooms.join || b.rooms.join,
            publish: a.rooms.publish || b.rooms.publish,
            subscribe: a.rooms.subscribe || b.rooms.subscribe,
            admin: a.rooms.admin || b.rooms.admin,
            names: a.rooms.names.clone(),
        },
        cameras: CameraGrants {
            view: a.cameras.view || b.cameras.view,
            manage: a.cameras.manage || b.cameras.manage,
        },
        services: ServiceGrants {
            attach: a.services.attach || b.services.attach,
        },
        admin: a.admin || b.admin,
    }
}

impl From<&Grants> for pb::Grants {
    fn from(g: &Grants) -> Self {
        pb::Grants {
            rooms: Some(pb::RoomGrants {
                join: g.rooms.join,
                publish: g.rooms.publish,
                subscribe: g.rooms.subscribe,
                admin: g.rooms.admin,
                names: g.rooms.names.clone().unwrap_or_default(),
                all_rooms: g.rooms.names.is_none(),
            }),
            cameras: Some(pb::CameraGrants {
                view: g.cameras.view,
                manage: g.cameras.manage,
            }),
            services: Some(pb::ServiceGrants {
                attach: g.services.attach,
            }),
            admin: g.admin,
        }
    }
}

impl From<&pb::Grants> for Grants {
    fn from(g: &pb::Grants) -> Self {
        let rooms = g.rooms.clone().unwrap_or_default();
        let cameras = g.cameras.unwrap_or_default();
        let services = g.services.unwrap_or_default();
        Grants {
            rooms: RoomGrants {
                join: rooms.join,
                publish: rooms.publish,
                subscribe: rooms.subscribe,
                admin: rooms.admin,
                names: (!rooms.all_rooms).then_some(rooms.names),
            },
            cameras: CameraGrants {
                view: cameras.view,
                manage: cameras.manage,
            },
            services: ServiceGrants {
                attach: services.attach,
            },
            admin: g.admin,
        }
    }
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
    /// The auth service's keys could not be fetched.
    #[error("cannot fetch signing keys: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// Returns the HTTP status for this error: 503 when keys are unavailable, else 401.
    pub fn status(&self) -> StatusCode {
        match self {
            TokenError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Returns the stable machine-readable code used in JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Malformed(_) => "malformed_token",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Revoked => "token_revoked",
            TokenError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// Renders `{"error":{"code","message"}}` with `WWW-Authenticate: Bearer` on 401.
impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<TokenError> for tonic::Status {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::KeysUnavailable(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

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
    /// Stops the revocation listener when the last clone is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
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

    /// Returns the verifier a service normally wants: keys fetched from the auth service at
    /// `auth_url`, revocations loaded from `backends.kv` and followed on `backends.bus`.
    pub async fn for_service(
        auth_url: &str,
        options: VerifierOptions,
        backends: &crate::Backends,
    ) -> Result<Self, RevocationFeedError> {
        let verifier = Self::new(Arc::new(HttpJwks::new(auth_url)), options);
        verifier.follow_revocations(backends.bus.as_ref()).await?;
        verifier.load_revocations(backends.kv.as_ref()).await?;
        Ok(verifier)
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

    /// Reads the bearer token of an HTTP request (`Authorization: Bearer` or `?access_token=`)
    /// and verifies it.
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
        if exp + 300 > now {
            revoked.insert(jti.to_string(), exp);
        }
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
    /// so revocations published after this call are seen.
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

/// Returns the current time in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Returns the bearer token of a request: `Authorization: Bearer <token>`, else the
/// `access_token` query parameter (browsers cannot set headers on WebSocket upgrades).
pub fn bearer_from_parts(parts: &Parts) -> Option<&str> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        return value.to_str().ok().and_then(strip_bearer);
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

/// Axum extractor of verified claims: the handler runs only with a valid bearer token, otherwise
/// the request is answered with the [`TokenError`] as JSON. Needs a [`TokenVerifier`] reachable
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
    fn intersect_never_widens() {
        let key = Grants::from_str("rooms.join,rooms.subscribe,room=a,room=b").unwrap();
        let wanted = Grants::from_str("all").unwrap();
        let got = key.intersect(&wanted);
        assert!(got.is_subset_of(&key));
        assert!(!got.admin && !got.rooms.publish && got.rooms.join);
        assert_eq!(got.rooms.names, Some(vec!["a".into(), "b".into()]));
        let narrow = Grants::from_str("rooms.join,room=b,room=c").unwrap();
        assert_eq!(key.intersect(&narrow).rooms.names, Some(vec!["b".into()]));
        assert!(!Grants::all().is_subset_of(&key));
    }

    #[test]
    fn scopes_round_trip() {
        for text in [
            "user",
            "all",
            "none",
            "rooms.join,room=x",
            "services.attach,admin",
        ] {
            let g: Grants = text.parse().unwrap();
            assert_eq!(g.to_string().parse::<Grants>().unwrap(), g, "{text}");
        }
        assert!("rooms.fly".parse::<Grants>().is_err());
    }

    #[test]
    fn room_checks_respect_names() {
        let g: Grants = "rooms.join,rooms.publish,room=a".parse().unwrap();
        assert!(g.may_join("a") && g.may_publish("a") && !g.may_subscribe("a"));
        assert!(!g.may_join("b") && !g.may_admin_room("a"));
        assert!(Grants::all().may_admin_room("any"));
        let mut md = tonic::metadata::MetadataMap::new();
        insert_bearer(&mut md, "abc").unwrap();
        assert_eq!(bearer_from_metadata(&md), Some("abc"));
        assert!(insert_bearer(&mut md, "a\nb").is_err());
    }

    #[test]
    fn proto_round_trip() {
        for g in [
            Grants::all(),
            Grants::default(),
            "rooms.join,room=z".parse().unwrap(),
        ] {
            let p: pb::Grants = (&g).into();
            assert_eq!(Grants::from(&p), g);
        }
    }

    #[test]
    fn bearer_parsing() {
        let req = axum::http::Request::builder()
            .uri("/msg?x=1&access_token=abc")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(bearer_from_parts(&parts), Some("abc"));
        let req = axum::http::Request::builder()
            .uri("/me")
            .header("authorization", "bearer  tok ")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(bearer_from_parts(&parts), Some("tok"));
        assert_eq!(strip_bearer("Basic abc"), None);
        assert_eq!(strip_bearer("Bearer"), None);
    }

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
