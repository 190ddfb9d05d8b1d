//! The rethink auth service: identities, EdDSA access tokens, the JWK set, revocation and API
//! keys for server-side token minting.
//!
//! Layout:
//! - [`config`]: [`AuthConfig`] (see `auth.example.toml`).
//! - [`keys`]: Ed25519 signing keys with `kid`, rotation, the published JWK set.
//! - [`users`]: users (argon2id) and API keys in the key-value store.
//! - [`service`]: [`AuthService`], the core every surface calls.
//! - [`http`]: the browser-facing routes under `/auth`; [`throttle`]: the failed-login layer.
//! - [`grpc`]: `rethink.v1.Auth` for services.
//! - [`cli`]: the `rethink-auth` command line (serve, users, API keys, tokens).
//! - [`local`]: [`LocalAuth`], the service inside another process on loopback (benchmarks).
//! - [`error`]: [`AuthError`], mapped to HTTP and gRPC in one place.
//!
//! Contracts: tokens carry `sub`, `name`, `iat`, `nbf`, `exp`, `jti`, `aud` and `grants`
//! ([`rethink_common::token::Claims`]); a revoked token is stored until it expires and announced
//! on [`rethink_common::bus::topics::AUTH_REVOCATIONS`]; every HTTP error is
//! `{"error":{"code","message"}}`. Embedders (the all-in-one stack) build an [`AuthService`] and
//! mount [`http::router`] and [`grpc::server`] themselves; [`run`] does that for the standalone
//! binary.

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

use rethink_common::lifecycle::{self, Health, Shutdown};

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
    let drain = Duration::from_secs(service.config().drain_secs);
    let stop = Shutdown::new();
    let http = http::router(service.clone()).fallback(http::not_found);
    let grpc = tonic::transport::Server::builder().add_service(grpc::server(service.clone()));
    let rotation = service.run_key_rotation(stop.wait());
    tracing::info!("auth service ready");
    let limits = rethink_common::listener::ListenerLimits::default();
    let serve = lifecycle::serve(
        listeners,
        http,
        grpc,
        Health::new(),
        stop,
        shutdown,
        drain,
        &limits,
    );
    let (served, ()) = tokio::join!(serve, rotation);
    served.map_err(|e| AuthError::Internal(e.to_string()))?;
    tracing::info!("auth service stopped");
    Ok(())
}
