//! Bounds on every listening socket: how many connections, from whom, and for how long a client
//! may take to say what it wants.
//!
//! Layout: [`ListenerLimits`] is the `[listener]` section every service's configuration carries;
//! [`Admission`] counts open connections globally and per client address and refuses those over
//! either limit; [`serve_http`] is the HTTP/1.1 server of every service (WebSocket upgrades
//! included) with a header-read timeout, a request timeout and admission; [`grpc_incoming`]
//! admits the connections of a gRPC listener the same way.
//!
//! Contracts: a connection over a limit is closed at once, before anything is read from it (and
//! counted in `rethink_connections_refused_total`); a client that does not finish its request
//! headers within `header_read_timeout_ms` is disconnected; a request whose handler has not
//! answered within `request_timeout_ms` gets 408 (WebSocket sessions live on after their
//! upgrade and are not bound by it); every plain error response gets the JSON error body
//! ([`crate::error::json_errors`]); when `shutdown` fires, the server stops accepting and open
//! connections get `drain` to finish.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tower::ServiceExt as _;

use crate::lifecycle::Shutdown;

/// Limits of one listening socket (the `[listener]` section of a service's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Time a client gets to send a request's headers, from connecting or from the end of its
    /// previous request.
    pub header_read_timeout_ms: u64,
    /// Time a handler gets to answer an HTTP request (408 after it).
    pub request_timeout_ms: u64,
    /// Open connections on this listener, from everyone.
    pub max_connections: usize,
    /// Open connections on this listener from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
        }
    }
}

impl ListenerLimits {
    /// Returns a description of the first value that makes no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_read_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err("listener timeouts must be at least 1 ms".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("listener connection limits must be at least 1".into());
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err("listener.max_connections_per_ip exceeds listener.max_connections".into());
        }
        Ok(())
    }

    fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Open-connection counts of one listener. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Arc<ListenerLimits>,
    open: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    ip: IpAddr,
    open: Arc<Mutex<Counts>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Returns admission control with nothing open.
    pub fn new(limits: &ListenerLimits) -> Self {
        Self {
            limits: Arc::new(limits.clone()),
            open: Arc::default(),
        }
    }

    /// Returns a permit for a new connection from `ip`, or `None` when it would exceed a limit.
    pub fn admit(&self, ip: IpAddr) -> Option<Permit> {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if counts.total >= self.limits.max_connections
            || from_ip >= self.limits.max_connections_per_ip
        {
            metrics::counter!("rethink_connections_refused_total").increment(1);
            return None;
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Some(Permit {
            ip,
            open: self.open.clone(),
        })
    }

    /// Returns the number of open connections.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// Serves `router` over HTTP/1.1 on `listener` within `limits` until `shutdown`, then lets open
/// connections finish for at most `drain`.
///
/// Handlers can extract `ConnectInfo<SocketAddr>`; WebSocket upgrades work. Nagle's algorithm is
/// off on every connection: signaling frames are small and latency-bound, and with Nagle each
/// could wait for the peer's delayed ACK (~40 ms).
pub fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: Duration,
    limits: &ListenerLimits,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    let admission = Admission::new(limits);
    let router = router.layer((
        axum::middleware::map_response(crate::error::json_errors),
        tower_http::timeout::RequestBodyTimeoutLayer::new(limits.request_timeout()),
        tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout(),
        ),
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout());
    accept_loop(listener, router, builder, admission, shutdown, drain)
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    admission: Admission,
    shutdown: Shutdown,
    drain: Duration,
) -> io::Result<()> {
    // Every connection's task; aborting them closes whatever outlives the drain.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: listener limit");
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not disable Nagle's algorithm");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        // The permit travels with the socket, so an upgraded WebSocket keeps its place.
        let stream = AdmittedStream {
            tcp,
            _permit: permit,
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.wait() => {
                    // Finish the request in flight, then close; idle connections close now.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?drain,
            "drain deadline reached; closing remaining connections"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Returns the connections of a gRPC `listener` that `admission` lets in, for tonic's
/// `serve_with_incoming_shutdown`; each holds its permit until it closes.
pub fn grpc_incoming(
    listener: TcpListener,
    admission: Admission,
) -> impl Stream<Item = io::Result<AdmittedStream>> + Send + 'static {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let Some(permit) = admission.admit(peer.ip()) else {
                        continue;
                    };
                    // gRPC streams carry small latency-bound messages too.
                    let _ = tcp.set_nodelay(true);
                    let stream = AdmittedStream {
                        tcp,
                        _permit: permit,
                    };
                    return Some((Ok(stream), (listener, admission)));
                }
                Err(error) => {
                    tracing::warn!(%error, "grpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// A TCP connection that holds its place in the listener's [`Admission`] while open (through
/// an HTTP upgrade too: the upgraded stream is this one).
#[derive(Debug)]
pub struct AdmittedStream {
    tcp: TcpStream,
    _permit: Permit,
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AdmittedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}
