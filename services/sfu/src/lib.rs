//! `rethink-sfu`: the media server of group conferences, a selective forwarding unit.
//!
//! The media work happens in the sans-IO core (`rethink-sfu-core`, on str0m); this crate gives
//! it a socket, a clock and a control plane:
//!
//! - [`driver`]: the one task that owns the UDP socket (one port for every peer), the core and
//!   its timer. Everything else talks to it through a bounded command channel.
//! - [`service`]: gRPC `rethink.v1.Sfu` (create/close rooms, join with an SDP offer, trickle,
//!   leave, per-track subscriptions, stats, the per-participant event stream), token-checked by
//!   [`auth`], errors mapped in [`error`] (one mapping to the shared code table).
//! - [`heartbeat`]: this node's address and load under a TTL key ([`keys`]); [`nodes`] reads
//!   them back and picks the least loaded node.
//! - [`events`]: participant and track events on the bus (`topics::SFU_EVENTS`).
//! - [`http`]: the node's own HTTP routes; the ops endpoints (`/healthz`, `/readyz`,
//!   `/metrics` with the forwarding counters) come from `rethink-common`.
//! - [`Node`]: the node without its servers, so the all-in-one stack can mount its gRPC service
//!   and routes on shared ports ([`start`]).
//!
//! Contracts: every participant (gRPC `Join`, WHIP, WHEP) belongs to the subject of the token
//! that opened it and lives only as long as that token: when it is revoked or expires the
//! driver removes the participant (media stops, its `Events` stream ends with
//! UNAUTHENTICATED); a newer token of the same subject renews it. Revocations are followed
//! from the store and the bus ([`Deps::health`] is not ready while they cannot be). A room
//! with nobody in it for `empty_room_timeout_ms` is closed.
//!
//! Lifecycle ([`run`]): serve until `shutdown` completes, then drain: readiness goes
//! NOT_SERVING, the heartbeat says `draining`, new rooms are refused with UNAVAILABLE, and
//! existing rooms live on until the node has no participant left or `drain_timeout_ms` passes;
//! then every room is closed, the servers stop and the heartbeat key is deleted.

pub mod auth;
pub mod config;
pub mod cpu;
pub mod driver;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod http;
pub mod keys;
pub mod nodes;
pub mod service;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rethink_common::Backends;
use rethink_common::bus::EventBus;
use rethink_common::kv::KvStore;
use rethink_common::lifecycle::{Health, Shutdown};
use rethink_common::service::{ServeOptions, ServiceContext, ServiceParts};
use rethink_proto::v1::sfu_server::SfuServer;
use rethink_sfu_core::{CoreConfig, SfuCore};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

pub use crate::config::SfuConfig;
pub use crate::error::SfuError;

/// Largest gRPC message accepted (an SDP is at most 64 KiB).
const MAX_GRPC_MESSAGE: usize = 256 * 1024;
/// How long the servers get to finish open requests once the drain is over.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

/// The sockets the service serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Ops endpoints (and WHIP/WHEP).
    pub http: TcpListener,
    /// Media, for every peer.
    pub udp: UdpSocket,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &SfuConfig) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(config.grpc_addr).await?,
            http: TcpListener::bind(config.http_addr).await?,
            udp: UdpSocket::bind(config.udp_addr).await?,
        })
    }
}

/// The outside services the SFU uses.
pub struct Deps {
    /// Node registry.
    pub kv: Arc<dyn KvStore>,
    /// Event bus.
    pub bus: Arc<dyn EventBus>,
    /// Token checks of gRPC calls and WHIP/WHEP requests.
    pub auth: auth::Authorizer,
    /// The node's readiness; held not ready while revocations cannot be followed (the
    /// verifier's feed sets a condition on it), so a node that might miss a revocation takes
    /// no traffic.
    pub health: Health,
}

impl Deps {
    /// Connects what `config` names: Redis when `redis.url` is set (else in-memory), and the
    /// auth service's keys (revocations followed from the store and the bus).
    pub async fn from_config(config: &SfuConfig) -> Result<Self, SfuError> {
        let url = config.redis.url.as_deref();
        let backends = rethink_common::backends(url)
            .await
            .map_err(|e| SfuError::Internal(format!("redis {}: {e}", url.unwrap_or_default())))?;
        Ok(Self::with_backends(config, backends).await)
    }

    /// Uses the given backends (the all-in-one stack shares one in-memory pair between
    /// services) and checks tokens with the keys of the auth service at `config.auth.url`.
    pub async fn with_backends(config: &SfuConfig, backends: Backends) -> Self {
        let Backends { kv, bus } = backends;
        let verifier = config.auth.verifier();
        let health = Health::new();
        // Runs until the last clone of the verifier is dropped.
        verifier
            .follow(
                &Backends {
                    kv: kv.clone(),
                    bus: bus.clone(),
                },
                &health,
                &Shutdown::new(),
            )
            .await;
        let auth = auth::Authorizer::new(verifier);
        Self {
            kv,
            bus,
            auth,
            health,
        }
    }
}

/// Runs the service on `listeners` with the backends of `config` until `shutdown` completes
/// and the drain is over.
pub async fn run(
    config: SfuConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SfuError> {
    let Listeners { grpc, http, udp } = listeners;
    let tcp = rethink_common::lifecycle::Listeners { http, grpc };
    let ctx = ServiceContext::standalone(&config.redis, &config.auth, &tcp)
        .await
        .map_err(|e| SfuError::Internal(e.to_string()))?;
    serve_node(config, tcp, udp, ctx, shutdown).await
}

/// Like [`run`], with the backends and token checks given (tests inject Redis and test keys).
pub async fn run_with(
    config: SfuConfig,
    listeners: Listeners,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SfuError> {
    let Listeners { grpc, http, udp } = listeners;
    let tcp = rethink_common::lifecycle::Listeners { http, grpc };
    let io = |e: std::io::Error| SfuError::Internal(format!("listener: {e}"));
    let ctx = ServiceContext {
        backends: Backends {
            kv: deps.kv,
            bus: deps.bus,
        },
        verifier: deps.auth.verifier().clone(),
        health: deps.health,
        shutdown: Shutdown::new(),
        http_url: format!("http://{}", tcp.http_addr().map_err(io)?),
        grpc_url: format!("http://{}", tcp.grpc_addr().map_err(io)?),
    };
    serve_node(config, tcp, udp, ctx, shutdown).await
}

async fn serve_node(
    config: SfuConfig,
    tcp: rethink_common::lifecycle::Listeners,
    udp: UdpSocket,
    ctx: ServiceContext,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SfuError> {
    let options = ServeOptions {
        // Rooms get `drain_timeout_ms` to empty; the servers a little more to close.
        drain: config.drain_timeout() + SERVER_STOP_GRACE,
        limits: config.listener.clone(),
    };
    let parts = start_on(&config, udp, &ctx)?;
    rethink_common::service::serve(vec![parts], tcp, &ctx, shutdown, options)
        .await
        .map_err(|e| SfuError::Internal(e.to_string()))
}

/// Starts an SFU node on the context (media on a UDP socket bound at `udp_addr`) and returns
/// its parts: `rethink.v1.Sfu`, WHIP and WHEP, the drain (no new rooms; rooms live until empty
/// or `drain_timeout_ms`) and the stop (heartbeat key deleted).
pub async fn start(config: SfuConfig, ctx: &ServiceContext) -> Result<ServiceParts, SfuError> {
    let udp = UdpSocket::bind(config.udp_addr)
        .await
        .map_err(|e| SfuError::Internal(format!("udp {}: {e}", config.udp_addr)))?;
    start_on(&config, udp, ctx)
}

fn start_on(
    config: &SfuConfig,
    udp: UdpSocket,
    ctx: &ServiceContext,
) -> Result<ServiceParts, SfuError> {
    let deps = Deps {
        kv: ctx.backends.kv.clone(),
        bus: ctx.backends.bus.clone(),
        auth: auth::Authorizer::new(ctx.verifier.clone()),
        health: ctx.health.clone(),
    };
    let node = Node::start(config, udp, deps, |public| Advertised {
        grpc: if config.advertise_grpc_addr.is_empty() {
            advertise(&ctx.grpc_url, public)
                .trim_start_matches("http://")
                .to_owned()
        } else {
            config.advertise_grpc_addr.clone()
        },
        http: if config.advertise_http_url.is_empty() {
            advertise(&ctx.http_url, public)
        } else {
            config.advertise_http_url.clone()
        },
    })?;
    let node = Arc::new(node);
    let (draining, stopping) = (node.clone(), node.clone());
    Ok(ServiceParts::new("sfu")
        .grpc(node.grpc_service())
        .http(node.router())
        .on_drain(move || async move { draining.drain().await })
        .on_stop(move || async move { stopping.stop().await })
        .link("whip ingest", "/whip/<room>")
        .link("whep viewer", "/whep/<room>"))
}

/// Returns `url` with its host replaced by `public` when the service listens on loopback only
/// because it was bound to every address (other nodes must not be told 127.0.0.1).
fn advertise(url: &str, public: Option<IpAddr>) -> String {
    let Some(public) = public else {
        return url.to_owned();
    };
    let addr = url.trim_start_matches("http://");
    match addr.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => {
            format!("http://{}", SocketAddr::new(public, addr.port()))
        }
        _ => url.to_owned(),
    }
}

/// Returns the ICE host candidates to advertise: each public IP with the UDP port, else the
/// bound address (127.0.0.1 when bound to an unspecified address).
pub fn advertised_candidates(public_ips: &[IpAddr], bound: SocketAddr) -> Vec<SocketAddr> {
    if public_ips.is_empty() {
        vec![SocketAddr::new(specified(bound.ip(), None), bound.port())]
    } else {
        public_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, bound.port()))
            .collect()
    }
}

fn specified(ip: IpAddr, public: Option<IpAddr>) -> IpAddr {
    if ip.is_unspecified() {
        public.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        ip
    }
}

/// Where other services reach this node, as written in its heartbeat.
#[derive(Debug, Clone)]
pub struct Advertised {
    /// gRPC address, "host:port".
    pub grpc: String,
    /// Base URL of the HTTP port.
    pub http: String,
}

/// A running SFU node without its servers: the media driver, the heartbeat and the event
/// publisher. [`run_with`] serves it on its own ports; the all-in-one stack mounts
/// [`Node::grpc_service`] and [`Node::router`] on its shared ones.
pub struct Node {
    node_id: String,
    driver: driver::DriverHandle,
    service: service::SfuService,
    auth: auth::Authorizer,
    health: Health,
    draining: watch::Sender<bool>,
    stop_heartbeat: Shutdown,
    drain_timeout: Duration,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the media driver on `udp`, the heartbeat and the event publisher. Readiness
    /// ([`Node::health`]) is set once the caller serves.
    pub fn start(
        config: &SfuConfig,
        udp: UdpSocket,
        deps: Deps,
        advertised: impl FnOnce(Option<IpAddr>) -> Advertised,
    ) -> Result<Self, SfuError> {
        // Metric handles bind to the recorder present when they are made: install it before the
        // driver takes its counters.
        rethink_common::lifecycle::metrics_handle();
        let node_id = if config.node_id.is_empty() {
            format!("sfu-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.node_id.clone()
        };
        let udp_addr = udp
            .local_addr()
            .map_err(|e| SfuError::Internal(format!("udp socket: {e}")))?;
        let candidates = advertised_candidates(&config.public_ips, udp_addr);
        let advertised = advertised(config.public_ips.first().copied());
        tracing::info!(%node_id, %udp_addr, ?candidates, grpc = %advertised.grpc, "sfu starting");

        let core = SfuCore::new(CoreConfig {
            candidates: candidates.clone(),
            max_rooms: config.max_rooms,
            max_participants_per_room: config.max_participants_per_room,
            bwe: config.bandwidth_estimation,
            ..CoreConfig::default()
        })
        .map_err(|e| SfuError::Internal(format!("media core: {e}")))?;
        let (bus_tx, bus_rx) = mpsc::channel(events::BUS_QUEUE);
        let publisher = tokio::spawn(events::publish_all(
            deps.bus.clone(),
            format!("sfu/{node_id}"),
            bus_rx,
        ));
        let (driver, driver_task) = driver::spawn(driver::DriverSetup {
            core,
            socket: udp,
            buffer_bytes: config.udp_buffer_bytes,
            candidates: candidates.clone(),
            node_id: node_id.clone(),
            limits: driver::Limits {
                max_rooms: config.max_rooms,
                max_participants_per_room: config.max_participants_per_room,
                empty_room_timeout: config.empty_room_timeout(),
            },
            bus: bus_tx,
        });
        let (draining, draining_rx) = watch::channel(false);
        let stop_heartbeat = Shutdown::new();
        let beat = tokio::spawn(heartbeat::run(
            deps.kv.clone(),
            heartbeat::NodeInfo {
                node_id: node_id.clone(),
                grpc_addr: advertised.grpc,
                udp_candidates: candidates.iter().map(ToString::to_string).collect(),
                http_addr: advertised.http,
            },
            heartbeat::Timing {
                interval: config.heartbeat_interval(),
                ttl: config.heartbeat_ttl(),
            },
            driver.clone(),
            draining_rx,
            stop_heartbeat.clone(),
        ));
        let service = service::SfuService::new(driver.clone(), deps.auth.clone(), node_id.clone());
        Ok(Self {
            node_id,
            driver,
            service,
            auth: deps.auth,
            health: deps.health,
            draining,
            stop_heartbeat,
            drain_timeout: config.drain_timeout(),
            // Order matters for `stop`: the heartbeat ends first (it deletes the key), the
            // driver next, the publisher last (its queue closes when the driver ends).
            tasks: std::sync::Mutex::new(vec![beat, driver_task, publisher]),
        })
    }

    /// Returns this node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Returns the readiness the node's servers report.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Returns the gRPC service `rethink.v1.Sfu`.
    pub fn grpc_service(&self) -> SfuServer<service::SfuService> {
        SfuServer::new(self.service.clone()).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }

    /// Returns the node's HTTP routes without the ops endpoints (WHIP and WHEP).
    pub fn router(&self) -> axum::Router {
        http::routes(self.driver.clone(), self.auth.clone())
    }

    /// Drains: not ready, `draining` in the heartbeat, no new rooms; returns once no
    /// participant is left or the drain timeout passed, with every room closed.
    pub async fn drain(&self) {
        tracing::info!(timeout = ?self.drain_timeout, "draining: no new rooms");
        self.health.set_ready(false);
        self.draining.send_replace(true);
        let _ = self.driver.drain().await;
        let mut participants = self.driver.participants();
        if tokio::time::timeout(
            self.drain_timeout,
            participants.wait_for(|count| *count == 0),
        )
        .await
        .is_err()
        {
            tracing::warn!("drain deadline reached; closing the remaining rooms");
        }
        let _ = self.driver.close_all().await;
    }

    /// Stops the heartbeat (deleting its key), the driver and the publisher.
    pub async fn stop(&self) {
        self.stop_heartbeat.trigger();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let mut tasks = tasks.into_iter();
        if let Some(beat) = tasks.next() {
            let _ = beat.await;
        }
        self.driver.stop().await;
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(node_id = %self.node_id, "sfu stopped");
    }
}
