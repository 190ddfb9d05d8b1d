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
pub mod service;
pub mod throttle;
pub mod users;

use std::{net::SocketAddr, time::Duration};

use rethink_common::lifecycle::{self, Health, Shutdown};
use tokio::net::TcpListener;

pub use config::AuthConfig;
pub use error::AuthError;
pub use service::AuthService;

/// The sockets the service serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// `/auth/*` and the ops endpoints.
    pub http: TcpListener,
    /// `rethink.v1.Auth`, gRPC health and reflection.
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &AuthConfig) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.http_addr).await?,
            grpc: TcpListener::bind(config.grpc_addr).await?,
        })
    }

    /// Returns the bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Returns the bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }
}

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
    let health = Health::new();
    let stop = Shutdown::new();
    let http = http::router(service.clone())
        .merge(lifecycle::ops_router(health.clone()))
        .fallback(http::not_found);
    let (grpc_health, reflection) = lifecycle::grpc_health_and_reflection(&health);
    let grpc = tonic::transport::Server::builder()
        .add_service(grpc_health)
        .add_service(reflection)
        .add_service(grpc::server(service.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
            stop.wait(),
        );
    let http = lifecycle::serve_http(listeners.http, http, stop.clone(), drain);
    let rotation = service.run_key_rotation(stop.wait());

    health.set_ready(true);
    tracing::info!("auth service ready");
    let watcher = {
        let health = health.clone();
        let stop = stop.clone();
        async move {
            shutdown.await;
            health.set_ready(false);
            stop.trigger();
        }
    };
    // Long-lived streams would hold a graceful gRPC shutdown open forever: bound it by the
    // same drain deadline as HTTP.
    let grpc = {
        let stop = stop.clone();
        async move {
            tokio::pin!(grpc);
            tokio::select! {
                result = &mut grpc => result,
                () = async {
                    stop.wait().await;
                    tokio::time::sleep(drain).await;
                } => Ok(()),
            }
        }
    };
    let (http, grpc, (), ()) = tokio::join!(http, grpc, rotation, watcher);
    http.map_err(|e| AuthError::Internal(format!("http server: {e}")))?;
    grpc.map_err(|e| AuthError::Internal(format!("grpc server: {e}")))?;
    tracing::info!("auth service stopped");
    Ok(())
}
