//! The all-in-one local stack: every rethink service in one process.
//!
//! Layout: [`config`] ([`StackConfig`]), [`services`] (how each service is built and plugged in;
//! the one file to touch when adding a service), and [`run`] here.
//!
//! Contracts: the embedded default is the in-memory bus and store (Redis with a URL); every
//! browser-facing route is served on one HTTP address with the paths Traefik routes in
//! production (`/auth/*`, and `/msg`, `/client/*`, `/whip/*`, `/whep/*` as services are added),
//! plus `/healthz`, `/readyz`, `/metrics`; the gRPC API of every service is on one port. Demo
//! users exist only here, never in the services themselves.

pub mod config;
pub mod services;

use std::{net::SocketAddr, time::Duration};

use rethink_auth::AuthService;
use rethink_common::lifecycle::{self, Health, Shutdown};

pub use config::StackConfig;
pub use services::{Mount, StackContext};

/// The demo users created at start: (login, display name).
pub const DEMO_USERS: [(&str, &str); 3] = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")];
/// The password of every demo user.
pub const DEMO_PASSWORD: &str = "rethink-demo";

/// Why the stack could not run.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A service failed to start; names it.
    #[error("{0}: {1}")]
    Service(&'static str, String),
    /// Redis (or the in-memory backends) could not be set up.
    #[error("backends: {0}")]
    Backends(String),
    /// A server failed while running.
    #[error("{0} server: {1}")]
    Serve(&'static str, String),
}

/// The stack's two sockets (HTTP: every browser-facing route; gRPC: every service), bound by
/// the caller (tests bind port 0).
pub type StackListeners = lifecycle::Listeners;

/// Creates the demo users unless they exist (a Redis-backed stack keeps them across restarts).
pub async fn create_demo_users(auth: &AuthService) -> Result<(), StackError> {
    for (name, display) in DEMO_USERS {
        match auth
            .create_user(name, DEMO_PASSWORD, Some(display), None)
            .await
        {
            Ok(_) | Err(rethink_auth::AuthError::UserExists(_)) => {}
            Err(e) => {
                return Err(StackError::Service(
                    "auth",
                    format!("demo user {name}: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn banner(http: SocketAddr, grpc: SocketAddr, mount: &Mount, demo_users: bool) -> String {
    let base = format!("http://{http}");
    let mut out = format!("\nrethink stack is running\n\n  http  {base}\n");
    for (label, path) in &mount.links {
        out.push_str(&format!("    {label:<12} {base}{path}\n"));
    }
    out.push_str(&format!(
        "    {:<12} {base}/healthz  /readyz  /metrics\n",
        "ops"
    ));
    out.push_str(&format!(
        "  grpc  {grpc}  ({}, health, reflection)\n",
        mount.grpc_names.join(", ")
    ));
    if demo_users {
        let names: Vec<&str> = DEMO_USERS.iter().map(|(n, _)| *n).collect();
        out.push_str(&format!(
            "\n  demo users: {} (password {DEMO_PASSWORD})\n  try: curl -s -X POST {base}/auth/login \
             -d '{{\"username\":\"alice\",\"password\":\"{DEMO_PASSWORD}\"}}'\n",
            names.join(", ")
        ));
    }
    out
}

/// Runs every service until `shutdown` resolves, then goes not-ready and drains.
pub async fn run(
    config: StackConfig,
    listeners: StackListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StackError> {
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|e| StackError::Serve("http", e.to_string()))?;
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| StackError::Serve("grpc", e.to_string()))?;
    let backends = rethink_common::backends(config.redis.url.as_deref())
        .await
        .map_err(|e| StackError::Backends(e.to_string()))?;
    let stop = Shutdown::new();
    let health = Health::new();

    let mut mount = Mount::default();
    let auth = services::auth(&backends, &mut mount).await?;
    if config.demo_users {
        create_demo_users(&auth).await?;
    }
    let ctx = StackContext {
        backends,
        verifier: auth.verifier(),
        auth: auth.clone(),
        shutdown: stop.clone(),
        http_url: format!("http://{http_addr}"),
        grpc_url: format!("http://{grpc_addr}"),
    };
    services::mount(&ctx, &mut mount).await?;
    let text = banner(http_addr, grpc_addr, &mount, config.demo_users);

    let Mount { router, grpc, .. } = mount;
    let grpc = tonic::transport::Server::builder().add_routes(grpc.routes());
    let router = router.fallback(rethink_auth::http::not_found);
    let drain = Duration::from_secs(config.drain_secs);
    let rotation = auth.run_key_rotation(stop.wait());
    let shutdown = async move {
        shutdown.await;
        tracing::info!("stack shutting down");
    };
    let limits = rethink_common::listener::ListenerLimits::default();
    let serve = lifecycle::serve(
        listeners, router, grpc, health, stop, shutdown, drain, &limits,
    );
    println!("{text}");
    tracing::info!(%http_addr, %grpc_addr, "stack ready");
    let (served, ()) = tokio::join!(serve, rotation);
    served.map_err(|e| match e {
        lifecycle::ServeError::Http(e) => StackError::Serve("http", e.to_string()),
        lifecycle::ServeError::Grpc(e) => StackError::Serve("grpc", e.to_string()),
    })?;
    Ok(())
}
