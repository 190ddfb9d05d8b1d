//! The rethink auth service: identities, EdDSA access tokens, the JWK set, revocation and API
//! keys for server-side token minting.
//!
//! Layout:
//! - [`config`]: [`AuthConfig`] (see `auth.example.toml`).
//! - [`keys`]: Ed25519 signing keys with `kid`, rotation, the published JWK set.
//! - [`users`]: users (argon2id, stored grants) and API keys (subject patterns) in the
//!   key-value store.
//! - [`service`]: [`AuthService`], the core every surface calls: login, minting, the index of
//!   issued tokens, revocation with publish retries, user and key administration.
//! - [`http`]: the browser-facing routes under `/auth`; [`throttle`]: the login throttle
//!   (slots reserved before the password check, shared through the store) and the client
//!   address behind trusted proxies.
//! - [`grpc`]: `rethink.v1.Auth` for services.
//! - [`cli`]: the `rethink-auth` command line (serve, users, API keys, tokens).
//! - [`local`]: [`LocalAuth`], the service inside another process on loopback (benchmarks).
//! - [`error`]: [`AuthError`], mapped to HTTP and gRPC in one place.
//!
//! Contracts: tokens carry `sub`, `name`, `iat`, `nbf`, `exp`, `jti`, `aud` and `grants`
//! ([`rethink_common::token::Claims`]); a login token carries the user's stored grants
//! (default [`rethink_common::token::Grants::user`]: join rooms, view cameras, no media
//! rights); an API key mints only for the subjects its patterns allow, with grants no wider
//! than its own. A revoked token is stored until it expires and announced on
//! [`rethink_common::bus::topics::AUTH_REVOCATIONS`] (retried until published); deleting a user,
//! changing their password or grants revokes all their tokens; revoking an API key revokes the
//! tokens it minted. Every error maps to [`rethink_common::error::ApiError`] in one place
//! ([`error`]): HTTP `{"error":{"code","message"}}`, gRPC status.
//!
//! Shape: like every service, [`start`] builds it on a
//! [`rethink_common::service::ServiceContext`] and returns its
//! [`rethink_common::service::ServiceParts`]; [`parts`] does the second half for an already
//! built [`AuthService`] (the all-in-one stack builds it first: its verifier checks every other
//! service's tokens); [`run`] serves it alone.

pub mod cli;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod local;
pub mod service;
pub mod throttle;
pub mod users;

use std::time::Duration;

use rethink_common::{
    Backends, lifecycle,
    service::{ServeOptions, ServiceContext, ServiceParts},
};

pub use config::AuthConfig;
pub use error::AuthError;
pub use local::LocalAuth;
pub use service::AuthService;

/// The sockets the service serves on (HTTP: `/auth/*` and the ops endpoints; gRPC:
/// `rethink.v1.Auth`, health and reflection), bound by the caller (tests bind port 0).
pub type Listeners = lifecycle::Listeners;

/// Runs the auth service until `shutdown` resolves, then goes not-ready and drains.
pub async fn run(
    config: AuthConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    let backends = rethink_common::backends(config.redis.url.as_deref())
        .await
        .map_err(|e| AuthError::Internal(format!("connecting backends: {e}")))?;
    let service = AuthService::new(config.clone(), backends.kv, backends.bus).await?;
    serve(service, listeners, shutdown).await
}

/// Serves an already built [`AuthService`] (lets callers seed users first).
pub async fn serve(
    service: AuthService,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuthError> {
    let config = service.config().clone();
    // Auth verifies with its own keys; the context's feed keeps its revoked set current.
    let ctx = ServiceContext::with_verifier(service.backends(), service.verifier(), &listeners)
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    let options = ServeOptions {
        drain: Duration::from_millis(config.drain_timeout_ms),
        limits: config.listener.clone(),
    };
    tracing::info!("auth service ready");
    rethink_common::service::serve(
        vec![parts(service, &ctx)],
        listeners,
        &ctx,
        shutdown,
        options,
    )
    .await
    .map_err(|e| AuthError::Internal(e.to_string()))?;
    tracing::info!("auth service stopped");
    Ok(())
}

/// Starts the auth service on the context's backends and returns its parts.
pub async fn start(config: AuthConfig, ctx: &ServiceContext) -> Result<ServiceParts, AuthError> {
    let Backends { kv, bus } = ctx.backends.clone();
    let service = AuthService::new(config, kv, bus).await?;
    Ok(parts(service, ctx))
}

/// Returns the parts of a built service: `/auth/*`, `rethink.v1.Auth` and the key rotation.
/// The all-in-one stack builds the service first, because its verifier checks every other
/// service's tokens.
pub fn parts(service: AuthService, ctx: &ServiceContext) -> ServiceParts {
    ServiceParts::new("auth")
        .http(http::router(service.clone()))
        .grpc(grpc::server(service.clone()))
        .task({
            let (service, stop) = (service.clone(), ctx.shutdown.clone());
            async move { service.run_key_rotation(stop.wait()).await }
        })
        .link("login", "/auth/login")
        .link("public keys", "/auth/.well-known/jwks.json")
}
