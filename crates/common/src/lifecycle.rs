//! Process lifecycle: shutdown, readiness, the ops endpoints and graceful serving.
//!
//! The shutdown contract of every service: the first SIGTERM/SIGINT triggers [`Shutdown`];
//! services then report not-ready (`/readyz` 503, gRPC health `NOT_SERVING`), stop accepting,
//! and drain open requests until a deadline. A second signal exits the process at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::listener::{Admission, ListenerLimits, grpc_incoming};
use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal; every clone sees the same trigger.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// Returns a signal that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers shutdown for every clone; idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Returns whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown is triggered; owns its state, so it can be passed to `run`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Returns a signal triggered with this one but also on its own (for one subsystem).
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    /// Returns the underlying cancellation token.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Self { token }
    }
}

/// Returns a [`Shutdown`] triggered by the first SIGTERM or SIGINT; the second one exits the
/// process with status 130. The handlers are installed before this returns. Must be called
/// inside a tokio runtime.
pub fn shutdown_on_signals() -> Shutdown {
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown signal received: draining (send it again to exit at once)");
        trigger.trigger();
        signals.recv().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(130);
    });
    shutdown
}

/// SIGTERM and SIGINT, listened to from the moment of installation.
#[cfg(unix)]
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            tracing::error!(error = %e, "cannot install signal handlers");
        }
        Self {
            term: term.ok(),
            int: int.ok(),
        }
    }

    async fn recv(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                // Without this handler the signal keeps its default action.
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = next(&mut self.term) => {}
            () = next(&mut self.int) => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Readiness of a service, shared by `/readyz` and the gRPC health service.
///
/// Starts not ready; a service calls `set_ready(true)` once it serves, `set_ready(false)` when
/// it begins to drain. Independently, parts of the service hold it not ready while a condition
/// they need is unmet ([`Health::set_condition`]; e.g. revocations cannot be followed), so a
/// service that cannot enforce its rules fails closed behind its load balancer.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    state: std::sync::Mutex<HealthState>,
    ready: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct HealthState {
    serving: bool,
    unmet: std::collections::BTreeSet<&'static str>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Returns a not-ready health state.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HealthInner {
                state: std::sync::Mutex::new(HealthState::default()),
                ready: watch::channel(false).0,
            }),
        }
    }

    /// Sets whether the service serves (false while starting and draining).
    pub fn set_ready(&self, ready: bool) {
        self.update(|state| state.serving = ready);
    }

    /// Records whether the condition `name` is met; the service is ready only while it serves
    /// and every condition is met.
    pub fn set_condition(&self, name: &'static str, met: bool) {
        self.update(|state| {
            if met {
                state.unmet.remove(name);
            } else {
                state.unmet.insert(name);
            }
        });
    }

    /// Returns the names of the unmet conditions.
    pub fn unmet_conditions(&self) -> Vec<&'static str> {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.unmet.iter().copied().collect()
    }

    fn update(&self, change: impl FnOnce(&mut HealthState)) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.inner.ready.send_if_modified(|ready| {
            let now = state.serving && state.unmet.is_empty();
            std::mem::replace(ready, now) != now
        });
    }

    /// Returns whether the service is ready.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Returns a receiver that sees every readiness change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }
}

/// Returns the process-wide Prometheus recorder handle, installing the recorder on first use.
///
/// Every `metrics::counter!`/`gauge!`/`histogram!` in the process is rendered by it. If another
/// recorder was installed first, the handle renders an empty (but valid) exposition.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Returns the ops routes: `GET /healthz` (200 while the process runs), `GET /readyz` (200 when
/// ready, 503 otherwise) and `GET /metrics` (Prometheus text format).
pub fn ops_router(health: Health) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = health.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                handle.run_upkeep();
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
                    .into_response()
            }),
        )
}

/// Returns the gRPC health service (its overall `""` status follows `health`) and the reflection
/// service for every rethink proto. Must be called inside a tokio runtime.
pub fn grpc_health_and_reflection(
    health: &Health,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut ready = health.subscribe();
    tokio::spawn(async move {
        loop {
            let status = if *ready.borrow_and_update() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            if ready.changed().await.is_err() {
                break;
            }
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rethink_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets compiled into the binary are valid");
    (health_service, reflection)
}

/// Serves `router` on `listener` until `shutdown`, then drains open requests for at most `drain`,
/// within the default [`ListenerLimits`]; see [`crate::listener::serve_http`].
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: Duration,
) -> io::Result<()> {
    crate::listener::serve_http(
        listener,
        router,
        shutdown,
        drain,
        &ListenerLimits::default(),
    )
    .await
}

/// The two addresses a service serves on, as its config names them.
pub trait ServeAddrs {
    /// The HTTP address (browser-facing routes and the ops endpoints).
    fn http_addr(&self) -> SocketAddr;
    /// The gRPC address (the service's API, health and reflection).
    fn grpc_addr(&self) -> SocketAddr;
}

/// A service's two sockets, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// HTTP: the service's routes and the ops endpoints.
    pub http: tokio::net::TcpListener,
    /// gRPC: the service's API, health and reflection.
    pub grpc: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &impl ServeAddrs) -> io::Result<Self> {
        Ok(Self {
            http: tokio::net::TcpListener::bind(config.http_addr()).await?,
            grpc: tokio::net::TcpListener::bind(config.grpc_addr()).await?,
        })
    }

    /// Returns the bound HTTP address.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Returns the bound gRPC address.
    pub fn grpc_addr(&self) -> io::Result<SocketAddr> {
        self.grpc.local_addr()
    }
}

/// Which server of [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Http(io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(tonic::transport::Error),
}

/// Serves `router` (plus the ops routes) and `grpc` (plus gRPC health and reflection) on
/// `listeners` until `shutdown` resolves.
///
/// Readiness (`health`) is set while serving; when `shutdown` resolves it goes not-ready, `stop`
/// is triggered (background tasks of the service watch it too) and both servers drain for at
/// most `drain`. Both listeners are bounded by `limits`. Returns once both have stopped.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listeners: Listeners,
    router: Router,
    grpc: tonic::transport::server::Router,
    health: Health,
    stop: Shutdown,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    limits: &ListenerLimits,
) -> Result<(), ServeError> {
    let (grpc_health, reflection) = grpc_health_and_reflection(&health);
    let grpc = grpc
        .add_service(grpc_health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            grpc_incoming(listeners.grpc, Admission::new(limits)),
            stop.wait(),
        );
    let router = router.merge(ops_router(health.clone()));
    let http = crate::listener::serve_http(listeners.http, router, stop.clone(), drain, limits);
    health.set_ready(true);
    let watcher = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            health.set_ready(false);
            stop.trigger();
        }
    };
    // Long-lived streams would hold a graceful gRPC shutdown open forever: bound it by the
    // same drain deadline as HTTP.
    let grpc = async move {
        tokio::pin!(grpc);
        tokio::select! {
            result = &mut grpc => result,
            () = async {
                stop.wait().await;
                tokio::time::sleep(drain).await;
            } => Ok(()),
        }
    };
    let (http, grpc, ()) = tokio::join!(http, grpc, watcher);
    http.map_err(ServeError::Http)?;
    grpc.map_err(ServeError::Grpc)?;
    Ok(())
}
