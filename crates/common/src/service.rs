//! The one shape of every rethink service: what it gets ([`ServiceContext`]), what it hands
//! back ([`ServiceParts`]), and how a process serves one or several of them ([`serve`]).
//!
//! A service crate exposes `start(config, &ServiceContext) -> Result<ServiceParts, _>`: it
//! builds its state on the context's backends and verifier and returns its browser-facing
//! routes, its gRPC services, its background tasks and its drain and stop hooks. Its `run`
//! builds a context from its configuration ([`ServiceContext::standalone`]) and calls [`serve`]
//! with its one part; the all-in-one stack builds one shared context and serves every part on
//! one pair of ports. Each `main.rs` is the same few lines: parse, load, telemetry, bind, run.
//!
//! Contracts of [`serve`]: readiness is reported while serving and while every [`Health`]
//! condition holds; on `shutdown` readiness goes NOT_SERVING, every drain hook runs (the
//! servers still answer, so sessions can move away) for at most the drain deadline, then the
//! context's `shutdown` fires, the servers stop accepting and close within the deadline, and the
//! stop hooks run. A server that fails on its own ends the process with its error, after the
//! stop hooks.

use std::{convert::Infallible, fmt, future::Future, net::SocketAddr, time::Duration};

use axum::{Router, response::IntoResponse};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tonic::{body::Body, server::NamedService, service::RoutesBuilder};

use crate::{
    Backends,
    config::{ConfigError, RedisConfig},
    lifecycle::{Health, Listeners, Shutdown, grpc_health_and_reflection, ops_router},
    listener::{Admission, ListenerLimits, grpc_incoming},
    token::{TokenVerifier, VerifierOptions},
};

/// Most requests in flight on one gRPC connection (streams count).
const GRPC_CONCURRENCY_PER_CONNECTION: usize = 1024;
/// Keepalive pings find dead callers whose streams would otherwise stay open.
const GRPC_KEEPALIVE: Duration = Duration::from_secs(30);
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a service finds the auth service whose tokens it accepts (`[auth]` in every service's
/// configuration but auth's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthClientConfig {
    /// Base URL of the auth service's HTTP port, for its public keys.
    pub url: String,
    /// Accepted token audience.
    pub audience: String,
    /// Seconds of clock skew allowed on a token's `exp` and `nbf`; a session whose token
    /// expired ends this long after `exp` unless it renewed its token.
    pub leeway_secs: u64,
}

impl Default for AuthClientConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".into(),
            audience: crate::token::DEFAULT_AUDIENCE.into(),
            leeway_secs: 30,
        }
    }
}

impl AuthClientConfig {
    /// Returns a verifier of this auth service's tokens (keys over HTTP, this audience and
    /// leeway); its revocation feed is not started yet ([`TokenVerifier::follow`]).
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(
            std::sync::Arc::new(crate::token::HttpJwks::new(&self.url)),
            VerifierOptions {
                audience: self.audience.clone(),
                leeway: Duration::from_secs(self.leeway_secs),
                ..VerifierOptions::default()
            },
        )
    }

    /// Checks the URL's scheme and that the audience is set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid(format!(
                "auth.url {:?} must start with http:// or https://",
                self.url
            )));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid("auth.audience must not be empty"));
        }
        Ok(())
    }
}

/// What every service is started with.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// The event bus and key-value store (Redis, or in memory in one process).
    pub backends: Backends,
    /// Verifies tokens; its revocation feed holds `health` not ready while it cannot follow.
    pub verifier: TokenVerifier,
    /// Readiness of the process; services may add conditions.
    pub health: Health,
    /// Fires when the process stops serving (after the drain hooks); background tasks end on it.
    pub shutdown: Shutdown,
    /// Base URL of the process's HTTP port, e.g. `http://127.0.0.1:8080`.
    pub http_url: String,
    /// URL of the process's gRPC port.
    pub grpc_url: String,
}

/// Why a context could not be built or a service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Redis could not be reached at start.
    #[error("backends: {0}")]
    Backends(#[from] crate::BackendError),
    /// A socket could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// A server stopped on its own; says which and why.
    #[error("{0}")]
    Stopped(String),
}

impl ServiceContext {
    /// Builds the context of a service that runs alone: backends from `redis` (in memory when
    /// no URL is set), a verifier of `auth`'s tokens that follows revocations, readiness, and
    /// the URLs of `listeners`.
    pub async fn standalone(
        redis: &RedisConfig,
        auth: &AuthClientConfig,
        listeners: &Listeners,
    ) -> Result<Self, ServiceError> {
        let backends = crate::backends(redis.url.as_deref()).await?;
        Self::with_verifier(backends, auth.verifier(), listeners).await
    }

    /// Builds a context on given backends and verifier (the auth service verifies with its own
    /// keys; the stack shares one verifier between services). Starts the revocation feed.
    pub async fn with_verifier(
        backends: Backends,
        verifier: TokenVerifier,
        listeners: &Listeners,
    ) -> Result<Self, ServiceError> {
        let health = Health::new();
        let shutdown = Shutdown::new();
        verifier.follow(&backends, &health, &shutdown).await;
        Ok(Self {
            backends,
            verifier,
            health,
            shutdown,
            http_url: format!("http://{}", specified(listeners.http_addr()?)),
            grpc_url: format!("http://{}", specified(listeners.grpc_addr()?)),
        })
    }
}

/// A bound wildcard address is reached on loopback from inside the process.
fn specified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;
type AddGrpc = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// What a started service hands to the process that serves it.
pub struct ServiceParts {
    name: &'static str,
    router: Router,
    grpc: Vec<AddGrpc>,
    grpc_names: Vec<&'static str>,
    tasks: Vec<BoxFuture<'static, ()>>,
    drain: Vec<Hook>,
    stop: Vec<Hook>,
    links: Vec<(String, String)>,
}

impl fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceParts")
            .field("name", &self.name)
            .field("grpc", &self.grpc_names)
            .field("tasks", &self.tasks.len())
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl ServiceParts {
    /// Returns empty parts of the service `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            router: Router::new(),
            grpc: Vec::new(),
            grpc_names: Vec::new(),
            tasks: Vec::new(),
            drain: Vec::new(),
            stop: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Returns the service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Adds browser-facing routes (the paths Traefik routes). No fallback: parts are merged.
    pub fn http(mut self, router: Router) -> Self {
        self.router = self.router.merge(router);
        self
    }

    /// Adds a gRPC service.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc_names.push(S::NAME);
        self.grpc.push(Box::new(move |routes: &mut RoutesBuilder| {
            routes.add_service(service);
        }));
        self
    }

    /// Adds a background task, run while the service is served; it must end on the context's
    /// `shutdown`.
    pub fn task(mut self, task: impl Future<Output = ()> + Send + 'static) -> Self {
        self.tasks.push(Box::pin(task));
        self
    }

    /// Adds a hook run when the process begins to drain, while the servers still answer.
    pub fn on_drain<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.drain.push(Box::new(move || Box::pin(hook())));
        self
    }

    /// Adds a hook run once the servers have stopped.
    pub fn on_stop<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.stop.push(Box::new(move || Box::pin(hook())));
        self
    }

    /// Adds a line to the start-up banner: `label` and a path on the HTTP port.
    pub fn link(mut self, label: &str, path: &str) -> Self {
        self.links.push((label.to_string(), path.to_string()));
        self
    }

    /// Returns the banner links.
    pub fn links(&self) -> &[(String, String)] {
        &self.links
    }

    /// Returns the names of the gRPC services.
    pub fn grpc_names(&self) -> &[&'static str] {
        &self.grpc_names
    }
}

/// How a process serves its parts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest time drain hooks, and then open connections, get.
    pub drain: Duration,
    /// Bounds of both listeners.
    pub limits: ListenerLimits,
}

/// Serves `parts` on `listeners` until `shutdown` resolves, as the module doc says.
pub async fn serve(
    parts: Vec<ServiceParts>,
    listeners: Listeners,
    ctx: &ServiceContext,
    shutdown: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> Result<(), ServiceError> {
    let mut router = Router::new();
    let mut grpc = RoutesBuilder::default();
    let (mut drain_hooks, mut stop_hooks, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
    for part in parts {
        router = router.merge(part.router);
        for add in part.grpc {
            add(&mut grpc);
        }
        drain_hooks.extend(part.drain);
        stop_hooks.extend(part.stop);
        tasks.extend(part.tasks.into_iter().map(tokio::spawn));
    }
    let stop = ctx.shutdown.clone();
    let (grpc_health, reflection) = grpc_health_and_reflection(&ctx.health);
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(GRPC_CONCURRENCY_PER_CONNECTION)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_routes(grpc.routes())
        .add_service(grpc_health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            grpc_incoming(listeners.grpc, Admission::new(&options.limits)),
            stop.wait(),
        );
    let router = router
        .merge(ops_router(ctx.health.clone()))
        .fallback(not_found);
    let http = crate::listener::serve_http(
        listeners.http,
        router,
        stop.clone(),
        options.drain,
        &options.limits,
    );
    let mut grpc = tokio::spawn(grpc);
    let mut http = tokio::spawn(http);
    ctx.health.set_ready(true);

    let failure = tokio::select! {
        () = shutdown => None,
        result = &mut grpc => Some(format!("grpc server stopped: {}", describe(result))),
        result = &mut http => Some(format!("http server stopped: {}", describe(result))),
    };
    if let Some(failure) = &failure {
        tracing::error!(%failure, "stopping");
    }
    ctx.health.set_ready(false);
    if failure.is_none() {
        let hooks = futures::future::join_all(drain_hooks.into_iter().map(|hook| hook()));
        if tokio::time::timeout(options.drain, hooks).await.is_err() {
            tracing::warn!(drain = ?options.drain, "drain deadline reached");
        }
    }
    stop.trigger();
    // The HTTP server bounds its own drain; a gRPC stream can hold a graceful stop open, so it
    // gets the same deadline and is then dropped.
    let servers = async {
        let _ = (&mut http).await;
        let _ = (&mut grpc).await;
    };
    if tokio::time::timeout(options.drain * 2, servers)
        .await
        .is_err()
    {
        tracing::warn!("servers did not stop in time; dropping their connections");
        grpc.abort();
        http.abort();
    }
    for hook in stop_hooks {
        hook().await;
    }
    for task in tasks {
        if tokio::time::timeout(options.drain, task).await.is_err() {
            tracing::warn!("a background task did not end on shutdown");
        }
    }
    failure.map_or(Ok(()), |failure| Err(ServiceError::Stopped(failure)))
}

fn describe<E: fmt::Display>(result: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => "without an error".into(),
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    }
}

/// The JSON 404 every process answers for paths no service serves.
pub async fn not_found(uri: http::Uri) -> crate::error::ApiError {
    crate::error::ApiError::new(
        crate::error::ErrorCode::NotFound,
        format!("no route for {}", uri.path()),
    )
}
