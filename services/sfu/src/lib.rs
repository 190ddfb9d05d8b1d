//! `rethink-sfu`: the media server of group conferences, a selective forwarding unit.
//!
//! The media work happens in the sans-IO core (`rethink-sfu-core`, on str0m); this crate gives
//! it a socket, a clock and a control plane:
//!
//! - [`driver`]: the one task that owns the UDP socket (one port for every peer), the core and
//!   its timer. Everything else talks to it through a bounded command channel.
//! - [`service`]: gRPC `rethink.v1.Sfu` (create/close rooms, join with an SDP offer, trickle,
//!   leave, per-track subscriptions, stats, the per-participant event stream), token-checked by
//!   [`auth`], errors mapped in [`error`].
//! - [`heartbeat`]: this node's address and load under a TTL key ([`keys`]); [`nodes`] reads
//!   them back and picks the least loaded node.
//! - [`events`]: participant and track events on the bus (`topics::SFU_EVENTS`).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics` on the HTTP port.
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
use rethink_common::lifecycle::{Health, Shutdown, grpc_health_and_reflection, serve_http};
use rethink_common::token::{HttpJwks, TokenVerifier, VerifierOptions};
use rethink_proto::v1::sfu_server::SfuServer;
use rethink_sfu_core::{CoreConfig, SfuCore};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;

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
    /// Token checks of gRPC calls.
    pub auth: auth::Authorizer,
}

impl Deps {
    /// Connects what `config` names: Redis when `redis.url` is set (else in-memory), and the
    /// auth service's keys (revocations followed on the bus).
    pub async fn from_config(config: &SfuConfig) -> Result<Self, SfuError> {
        let url = config.redis.url.as_deref();
        let backends = rethink_common::backends(url)
            .await
            .map_err(|e| SfuError::Internal(format!("redis {}: {e}", url.unwrap_or_default())))?;
        Ok(Self::with_backends(config, backends).await)
    }

    /// Uses the given backends (the all-in-one stack shares one in-memory pair between
    /// services) and the token checks `config.auth` asks for.
    pub async fn with_backends(config: &SfuConfig, backends: Backends) -> Self {
        let Backends { kv, bus } = backends;
        let auth = if config.auth.insecure_disable {
            tracing::warn!(
                "token checks are disabled (auth.insecure_disable); never do this in production"
            );
            auth::Authorizer::Disabled
        } else {
            let verifier = TokenVerifier::new(
                Arc::new(HttpJwks::new(&config.auth.url)),
                VerifierOptions {
                    audience: config.auth.audience.clone(),
                    ..VerifierOptions::default()
                },
            );
            if let Err(error) = verifier.follow_revocations(bus.as_ref()).await {
                tracing::warn!(%error, "cannot follow token revocations");
            }
            if let Err(error) = verifier.load_revocations(kv.as_ref()).await {
                tracing::warn!(%error, "cannot load token revocations");
            }
            auth::Authorizer::Tokens(verifier)
        };
        Self { kv, bus, auth }
    }
}

/// Runs the service on `listeners` with the backends of `config` until `shutdown` completes
/// and the drain is over.
pub async fn run(
    config: SfuConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SfuError> {
    let deps = Deps::from_config(&config).await?;
    run_with(config, listeners, deps, shutdown).await
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

/// Like [`run`], with the backends given (tests inject Redis and test keys here).
pub async fn run_with(
    config: SfuConfig,
    listeners: Listeners,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SfuError> {
    let io = |what: &str, e: std::io::Error| SfuError::Internal(format!("{what}: {e}"));
    let node_id = if config.node_id.is_empty() {
        format!("sfu-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    } else {
        config.node_id.clone()
    };
    let udp_addr = listeners.udp.local_addr().map_err(|e| io("udp", e))?;
    let grpc_addr = listeners.grpc.local_addr().map_err(|e| io("grpc", e))?;
    let http_addr = listeners.http.local_addr().map_err(|e| io("http", e))?;
    let candidates = advertised_candidates(&config.public_ips, udp_addr);
    let first_public = config.public_ips.first().copied();
    tracing::info!(%node_id, %grpc_addr, %http_addr, %udp_addr, ?candidates, "sfu starting");

    let core = SfuCore::new(CoreConfig {
        candidates: candidates.clone(),
        max_rooms: config.max_rooms,
        max_participants_per_room: config.max_participants_per_room,
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
        socket: listeners.udp,
        local: candidates[0],
        node_id: node_id.clone(),
        limits: driver::Limits {
            max_rooms: config.max_rooms,
            max_participants_per_room: config.max_participants_per_room,
        },
        bus: bus_tx,
    });

    let health = Health::new();
    let (draining_tx, draining_rx) = watch::channel(false);
    let stop_servers = Shutdown::new();
    let stop_heartbeat = Shutdown::new();

    let info = heartbeat::NodeInfo {
        node_id: node_id.clone(),
        grpc_addr: if config.advertise_grpc_addr.is_empty() {
            SocketAddr::new(specified(grpc_addr.ip(), first_public), grpc_addr.port()).to_string()
        } else {
            config.advertise_grpc_addr.clone()
        },
        udp_candidates: candidates.iter().map(ToString::to_string).collect(),
        http_addr: if config.advertise_http_url.is_empty() {
            let addr = SocketAddr::new(specified(http_addr.ip(), first_public), http_addr.port());
            format!("http://{addr}")
        } else {
            config.advertise_http_url.clone()
        },
    };
    let beat = tokio::spawn(heartbeat::run(
        deps.kv.clone(),
        info,
        heartbeat::Timing {
            interval: config.heartbeat_interval(),
            ttl: config.heartbeat_ttl(),
        },
        driver.clone(),
        draining_rx,
        stop_heartbeat.clone(),
    ));

    let (health_service, reflection) = grpc_health_and_reflection(&health);
    let sfu = SfuServer::new(service::SfuService::new(
        driver.clone(),
        deps.auth.clone(),
        node_id.clone(),
    ))
    .max_decoding_message_size(MAX_GRPC_MESSAGE);
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(sfu)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listeners.grpc),
                stop_servers.wait(),
            ),
    );
    let http = tokio::spawn(serve_http(
        listeners.http,
        http::router(health.clone()),
        stop_servers.clone(),
        SERVER_STOP_GRACE,
    ));
    health.set_ready(true);

    shutdown.await;

    tracing::info!(timeout = ?config.drain_timeout(), "draining: no new rooms");
    health.set_ready(false);
    draining_tx.send_replace(true);
    let _ = driver.drain().await;
    let mut participants = driver.participants();
    if tokio::time::timeout(
        config.drain_timeout(),
        participants.wait_for(|count| *count == 0),
    )
    .await
    .is_err()
    {
        tracing::warn!("drain deadline reached; closing the remaining rooms");
    }
    let _ = driver.close_all().await;

    stop_servers.trigger();
    let mut grpc = grpc;
    match tokio::time::timeout(SERVER_STOP_GRACE * 2, &mut grpc).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "grpc server"),
        Err(_) => {
            tracing::warn!("grpc server did not stop in time; dropping its connections");
            grpc.abort();
        }
        _ => {}
    }
    if let Ok(Err(error)) = http.await {
        tracing::warn!(%error, "http server task");
    }
    stop_heartbeat.trigger();
    let _ = beat.await;
    // The servers held the last handles; without them the driver ends, and with it the
    // publisher (its queue's sender lives in the driver).
    drop(driver);
    let _ = driver_task.await;
    let _ = publisher.await;
    tracing::info!(%node_id, "sfu stopped");
    Ok(())
}
