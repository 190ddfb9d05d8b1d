//! The all-in-one local stack: every rethink service in one process.
//!
//! Layout: [`config`] ([`StackConfig`]), [`services`] (every service started from one shared
//! context; the one file to touch when adding a service), and [`run`] here, which serves their
//! parts with `rethink_common::service::serve`, as each service's own binary does.
//!
//! Contracts: the embedded default is the in-memory bus and store (Redis with a URL); every
//! browser-facing route is served on one HTTP address with the paths Traefik routes in
//! production (`/auth/*`, and `/msg`, `/client/*`, `/whip/*`, `/whep/*` as services are added),
//! plus `/healthz`, `/readyz`, `/metrics`; the gRPC API of every service is on one port. A
//! third listener is the browser runtime's own origin ([`runtime`]), the one origin besides the
//! app's that auth lets log in cross-origin. Demo users exist only here, never in the services
//! themselves.

pub mod config;
pub mod runtime;
pub mod services;

use std::{net::SocketAddr, time::Duration};

use rethink_auth::AuthService;
use rethink_common::{
    lifecycle,
    service::{ServeOptions, ServiceContext, ServiceParts},
};

pub use config::StackConfig;

/// The demo users created at start: (login, display name).
pub const DEMO_USERS: [(&str, &str); 3] = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")];
/// The password of every demo user.
pub const DEMO_PASSWORD: &str = "rethink-demo";
/// What the demo users may do: a login token's defaults (join rooms, view cameras) plus media
/// in the demo rooms (`demo`, `demo-1`, ...); every other room stays closed to them.
pub const DEMO_GRANTS: &str = "user,rooms.publish,rooms.subscribe,room=demo*";

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

/// The stack's sockets, bound by the caller (tests bind port 0): HTTP (every browser-facing
/// route), gRPC (every service) and the runtime origin (web/runtime/ only).
#[derive(Debug)]
pub struct StackListeners {
    /// Every browser-facing route and the ops endpoints.
    pub http: tokio::net::TcpListener,
    /// Every service's gRPC API.
    pub grpc: tokio::net::TcpListener,
    /// The browser runtime's origin.
    pub runtime: tokio::net::TcpListener,
}

impl StackListeners {
    /// Binds the three addresses of `config`.
    pub async fn bind(config: &StackConfig) -> std::io::Result<Self> {
        let services = lifecycle::Listeners::bind(config).await?;
        Ok(Self {
            http: services.http,
            grpc: services.grpc,
            runtime: tokio::net::TcpListener::bind(config.runtime_addr()).await?,
        })
    }

    /// Binds all three on free ports of 127.0.0.1 (tests).
    pub async fn local() -> std::io::Result<Self> {
        let any = || tokio::net::TcpListener::bind("127.0.0.1:0");
        Ok(Self {
            http: any().await?,
            grpc: any().await?,
            runtime: any().await?,
        })
    }
}

/// Creates the demo users unless they exist (a Redis-backed stack keeps them across restarts).
pub async fn create_demo_users(auth: &AuthService) -> Result<(), StackError> {
    let grants: rethink_common::token::Grants = DEMO_GRANTS
        .parse()
        .map_err(|e| StackError::Service("auth", format!("demo grants: {e}")))?;
    for (name, display) in DEMO_USERS {
        match auth
            .create_user(name, DEMO_PASSWORD, Some(display), Some(grants.clone()))
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

fn banner(
    http: SocketAddr,
    grpc: SocketAddr,
    runtime_origin: &str,
    parts: &[ServiceParts],
    demo_users: bool,
) -> String {
    let base = format!("http://{http}");
    let mut out = format!("\nrethink stack is running\n\n  http  {base}\n");
    for (label, path) in parts.iter().flat_map(|p| p.links()) {
        out.push_str(&format!("    {label:<12} {base}{path}\n"));
    }
    out.push_str(&format!(
        "    {:<12} {base}/client/app/hello.html\n",
        "runtime app"
    ));
    out.push_str(&format!(
        "  runtime  {runtime_origin}  (the browser runtime's own origin, web/runtime/)\n"
    ));
    out.push_str(&format!(
        "    {:<12} {base}/healthz  /readyz  /metrics\n",
        "ops"
    ));
    let grpc_names: Vec<&str> = parts.iter().flat_map(|p| p.grpc_names()).copied().collect();
    out.push_str(&format!(
        "  grpc  {grpc}  ({}, health, reflection)\n",
        grpc_names.join(", ")
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
    let addr = |result: std::io::Result<SocketAddr>, what| {
        result.map_err(|e| StackError::Serve(what, e.to_string()))
    };
    let http_addr = addr(listeners.http.local_addr(), "http")?;
    let grpc_addr = addr(listeners.grpc.local_addr(), "grpc")?;
    let runtime_addr = addr(listeners.runtime.local_addr(), "runtime")?;
    let runtime_origin = config
        .runtime_origin
        .clone()
        .unwrap_or_else(|| format!("http://{runtime_addr}"));
    let backends = rethink_common::backends(config.redis.url.as_deref())
        .await
        .map_err(|e| StackError::Backends(e.to_string()))?;
    let auth = services::auth(&backends, &runtime_origin).await?;
    if config.demo_users {
        create_demo_users(&auth).await?;
    }
    let StackListeners {
        http,
        grpc,
        runtime,
    } = listeners;
    let listeners = lifecycle::Listeners { http, grpc };
    let ctx = ServiceContext::with_verifier(backends, auth.verifier(), &listeners)
        .await
        .map_err(|e| StackError::Backends(e.to_string()))?;
    let options = ServeOptions {
        drain: Duration::from_millis(config.drain_timeout_ms),
        limits: config.listener.clone(),
    };
    let mut parts = vec![rethink_auth::parts(auth, &ctx)];
    parts.extend(services::start(&ctx).await?);
    parts.push(runtime_parts(&config, runtime, &ctx, &options));
    let text = banner(
        http_addr,
        grpc_addr,
        &runtime_origin,
        &parts,
        config.demo_users,
    );
    println!("{text}");
    tracing::info!(%http_addr, %grpc_addr, %runtime_addr, "stack ready");
    rethink_common::service::serve(parts, listeners, &ctx, shutdown, options)
        .await
        .map_err(|e| StackError::Serve("stack", e.to_string()))
}

/// The runtime origin as a task of the stack: its own listener, served until the stack's
/// context shuts down.
fn runtime_parts(
    config: &StackConfig,
    listener: tokio::net::TcpListener,
    ctx: &ServiceContext,
    options: &ServeOptions,
) -> ServiceParts {
    let router = runtime::router(config.runtime_dir(), ctx.http_url.clone());
    let server = rethink_common::listener::serve_http(
        listener,
        router,
        ctx.shutdown.clone(),
        options.drain,
        &options.limits,
    );
    ServiceParts::new("runtime").task(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "runtime origin stopped");
        }
    })
}
