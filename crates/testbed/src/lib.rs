//! One test bed for every rethink service: a real `redis-server`, the real auth service in
//! process, Message Node replicas and SFU nodes on loopback port 0 (in process, sharing that
//! Redis), and the tokens, URLs and connected clients tests need.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let bed = rethink_testbed::TestBed::start().await?;
//! let a = bed.default_msg_node("node-a").await?;
//! let (alice, me) = bed.user(&a, "alice").await?;
//! let sfu = bed.default_sfu("sfu-a").await?;
//! let control = bed.sfu_control(&sfu).await?;
//! control.create_room("r1").await?;
//! # let _ = (alice, me); Ok(()) }
//! ```
//!
//! Layout: everything is in this file: [`TestBed`] (Redis, auth, tokens, clients),
//! [`MsgReplica`] (one msg-node), [`RawWs`] (hand-made WebSocket frames), [`SfuReplica`]
//! (one SFU node).
//!
//! Contracts:
//! - Only loopback, only port 0: parallel tests never collide.
//! - Every service verifies tokens the production way: msg-node and SFU fetch the auth
//!   service's JWK set over HTTP and follow revocations on the shared Redis.
//! - Dropping the [`TestBed`] stops everything it started (replicas stop on their own drop
//!   too); Redis is killed with it.
//! - Every wait has a bound ([`WAIT`]); nothing sleeps to assert.
//!
//! Mapping from the per-crate harnesses (switching is mechanical):
//!
//! | services/msg-node/tests/common | here |
//! |---|---|
//! | `TestBed::start()` | [`TestBed::start`] (same fields: `redis`, `auth`, `auth_url`, `backends`) |
//! | `bed.config(id)` | [`TestBed::msg_config`] |
//! | `bed.replica(config)` | [`TestBed::msg_node`] |
//! | `bed.default_replica(id)` | [`TestBed::default_msg_node`] |
//! | `Replica { http, grpc, node }`, `ws_url`, `resume_url`, `stop` | [`MsgReplica`], same names; plus [`MsgReplica::ws`] / [`MsgReplica::attach_target`] |
//! | `bed.user_token(name)` | [`TestBed::user_token`] |
//! | `bed.service_token(name)` | [`TestBed::service_token`] |
//! | `bed.user(&replica, name)` → `(Client, String)` | [`TestBed::user`] → `(Client, Address)` |
//! | `Client::connect(&replica, token)` | [`TestBed::connect`] or `Client::connect(replica.ws(), token)` |
//! | `Client::resume(&replica, token, resume_token)` (new client) | `client.resume(token)` / `client.resume_at(other.ws(), token)` (same client, keeps routes), or `Client::connect_with(replica.ws(), token, Some(resume_token), opts)` for a second client (the first then ends with 4009) |
//! | `Client::refused_status(url)` | [`refused_status`] (or match `ClientError::Refused { status, .. }`) |
//! | `client.session["x"]`, `client.runtime`, `client.resume_token` | `client.welcome().x`, `client.runtime()`, `client.resume_token()` |
//! | `client.send(&json)` / `send_text` | `client.send(Message)` / `client.send_text` |
//! | `client.recv()` of the answer to a malformed frame (frames.rs) | `client.recv()` when its `from`/`to` are addresses, else `client.recv_unparsed()` (JSON text) |
//! | `client.recv()` | `client.recv()` (messages that are not responses to its requests) |
//! | `client.request(kind, from, to, body)` → reply `Value` | `client.request(Message::new(kind, &from, &to, body))` → `Message` (`.code()`, `.value()`), or `client.call(..)` → `value` |
//! | `client.send(..)` then `client.response_to(id)` | `client.request(message.with_id(id))` |
//! | `client.register()` | `client.register(json!({"name": "test"}))` |
//! | `client.lookup(from, resource)` → reply | `client.lookup(&from, resource)` → `Result<value>`; 404 is `Err(ClientError::Protocol { code: 404, .. })` |
//! | `client.wait_until_gone(from, addr, every, why)` | `client.wait_until_gone(&from, &addr, every, WAIT)` |
//! | `client.ended()` → `Ended::Closed(code, reason)` / `Ended::Dropped` | `client.closed()` → [`rethink_msg_client::Closed`] `{code, reason}`; dropped is code 1006 |
//! | `client.close()` / `client.drop_connection()` | same names |
//! | `code(&reply)` | `reply.code()` |
//! | `RawWs` (partial frames below the protocol client) | [`RawWs`] |
//! | `token_for(bed, sub, grants, ttl)` | `bed.auth.issue(sub, name, grants, ttl)`, or [`TestBed::short_user_token`] |
//! | attach.rs `attach(grpc, token)` / `Service::claim` / `next` | [`TestBed::attach`] or `Client::connect(replica.attach_target(), token)`; `client.register_well_known(..)`; `client.recv()` |
//!
//! | services/sfu/tests/common | here |
//! |---|---|
//! | `TestSfu::start()` / `start_with(config, kv, bus)` | [`TestBed::default_sfu`] (the bed's Redis) / [`TestBed::sfu`] (`config.redis`) or [`TestBed::sfu_with`] (`Backends { kv, bus }`, e.g. in-memory) |
//! | `test_config()` | [`TestBed::sfu_config`] (same short heartbeat and drain) |
//! | `sfu.grpc`, `sfu.http`, `sfu.udp` | [`SfuReplica`], same fields; `sfu.node_id` |
//! | `sfu.token`, `sfu.keys.mint(grants)` | [`TestBed::sfu_token`], [`TestBed::token`] (real auth service instead of a test key) |
//! | `sfu.keys.mint_as(sub, grants_json, ttl)`, `jti_and_exp(token)` | [`TestBed::token_for`] → `IssuedToken { token, claims }` (`claims.exp`, `claims.jti`) |
//! | `sfu.revoke(token)` | `bed.auth.revoke(&issued.claims)` (reaches the node over the bed's Redis) |
//! | `sfu.channel()` | [`SfuReplica::channel`] (no token: health checks, unauthenticated calls) |
//! | `sfu.client()` + `sfu.authed(..)` | [`TestBed::sfu_control`] → [`rethink_sfu_client::SfuControl`] (bearer added by interceptor) |
//! | `sfu.create_room / join / events / leave / room_stats` | `control.create_room / join / events / leave / room_stats` |
//! | `common::authed(msg, token)` | [`TestBed::sfu_control_as`] (`.raw()` for the generated client), or `Bearer::new(token)` + `SfuControl::with_channel` |
//! | `begin_drain`, `stopped`, `stop` | same names on [`SfuReplica`] |
//! | `publish_pattern(sfu, client, room, name)` | [`publish_pattern`] |
//! | `stream_ends(stream)` | [`stream_ends`] |
//! | `http_status(addr, path)` → `u16` | [`http_status`] → `Result<u16>` |
//! | `serve_page(html)`, `peer::TestPeer` (Chromium / str0m specifics) | stay in services/sfu/tests |
//! | `kv` / `bus` | `bed.backends.kv` / `bed.backends.bus` |
//! | three_peers/chromium `follow_events` / `relay` | [`rethink_sfu_client::Relay::start`] (`outcome()`: answered, first error) |
//! | registry.rs `nodes::least_loaded` | [`rethink_sfu_client::nodes::least_loaded`], [`rethink_sfu_client::place`] |

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use rethink_auth::{AuthConfig, AuthService, service::IssuedToken};
use rethink_common::{
    Backends,
    lifecycle::Shutdown,
    service::{ServeOptions, ServiceContext},
    testing::RedisServer,
    token::{Claims, Grants, RoomGrants, ServiceGrants},
};
use rethink_msg_client::{Address, Client, ClientError, Target};
use rethink_msg_node::{MsgNode, MsgNodeConfig};
use rethink_sfu::{Deps, SfuConfig, SfuError};
use rethink_sfu_client::{Bearer, SfuControl};
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

pub use rethink_msg_client as msg;
pub use rethink_sfu_client as sfu;

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Redis, auth, and the replicas started on them.
pub struct TestBed {
    /// The real `redis-server`.
    pub redis: RedisServer,
    /// The auth service (mint and revoke tokens directly).
    pub auth: AuthService,
    /// Its HTTP base URL (`http://127.0.0.1:<port>`: JWKS, login).
    pub auth_url: String,
    /// Store and bus on the bed's Redis.
    pub backends: Backends,
    shutdown: Shutdown,
}

impl Drop for TestBed {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl TestBed {
    /// Starts Redis and the auth service (on that Redis, so revocations reach every replica).
    pub async fn start() -> Result<Self> {
        let redis = RedisServer::start().await?;
        let backends = rethink_common::backends(Some(&redis.url())).await?;
        let config = AuthConfig {
            http_addr: "127.0.0.1:0".parse()?,
            grpc_addr: "127.0.0.1:0".parse()?,
            ..AuthConfig::default()
        };
        let auth = AuthService::new(config.clone(), backends.kv.clone(), backends.bus.clone())
            .await
            .map_err(|e| anyhow!("auth: {e}"))?;
        let listeners = rethink_auth::Listeners::bind(&config).await?;
        let auth_url = format!("http://{}", listeners.http_addr()?);
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let service = auth.clone();
        tokio::spawn(async move {
            if let Err(error) = rethink_auth::serve(service, listeners, stop.wait()).await {
                tracing::error!(%error, "test bed auth service failed");
            }
        });
        Ok(Self {
            redis,
            auth,
            auth_url,
            backends,
            shutdown,
        })
    }

    // ---- tokens ----

    /// Mints a token for `sub` / `name` with `grants`.
    pub fn token(&self, sub: &str, name: &str, grants: Grants) -> Result<IssuedToken> {
        self.auth
            .issue(sub, name, grants, None)
            .map_err(|e| anyhow!("issuing a token: {e}"))
    }

    /// Mints a user token (`sub` = `user:<name>`, the default user grants).
    pub fn user_token(&self, name: &str) -> (String, Claims) {
        let issued = self
            .token(&format!("user:{name}"), name, Grants::user())
            .expect("the auth service issues user tokens");
        (issued.token, issued.claims)
    }

    /// Mints a user token like [`TestBed::user_token`] that expires after `ttl` (whole
    /// seconds), for expiry and renewal tests.
    pub fn short_user_token(&self, name: &str, ttl: Duration) -> (String, Claims) {
        let issued = self
            .auth
            .issue(&format!("user:{name}"), name, Grants::user(), Some(ttl))
            .expect("the auth service issues user tokens");
        (issued.token, issued.claims)
    }

    /// Mints a service token with the `services.attach` grant (for msg-node `Attach`).
    pub fn service_token(&self, name: &str) -> String {
        let grants = Grants {
            services: ServiceGrants { attach: true },
            ..Grants::default()
        };
        self.token(name, name, grants)
            .expect("the auth service issues service tokens")
            .token
    }

    /// Mints a service token that may manage every room (`rooms.admin`), for SFU control.
    pub fn sfu_token(&self) -> String {
        let grants = Grants {
            rooms: RoomGrants {
                admin: true,
                ..RoomGrants::default()
            },
            ..Grants::default()
        };
        self.token("service:conference", "conference", grants)
            .expect("the auth service issues service tokens")
            .token
    }

    // ---- msg-node ----

    /// Returns a msg-node config for this bed; `node_id` names the replica.
    pub fn msg_config(&self, node_id: &str) -> MsgNodeConfig {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = MsgNodeConfig {
            http_addr: loopback,
            grpc_addr: loopback,
            node_id: Some(node_id.into()),
            web_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web"),
            ..MsgNodeConfig::default()
        };
        config.redis.url = Some(self.redis.url());
        config.auth.url = self.auth_url.clone();
        // Expiry tests use tokens of a few seconds.
        config.auth.leeway_secs = 0;
        // Short enough for a 408 test, long enough for a loaded machine.
        config.timing.delivery_timeout_ms = 3_000;
        config.drain_timeout_ms = 1_000;
        config
    }

    /// Starts a msg-node replica with `config`, served as its binary serves it
    /// (`rethink_common::service::serve`), until the replica is stopped or dropped.
    pub async fn msg_node(&self, config: MsgNodeConfig) -> Result<MsgReplica> {
        let listeners = rethink_msg_node::Listeners::bind(&config).await?;
        let (http, grpc) = (listeners.http_addr()?, listeners.grpc_addr()?);
        let ctx = ServiceContext::standalone(&config.redis, &config.auth, &listeners).await?;
        let options = ServeOptions {
            drain: Duration::from_millis(config.drain_timeout_ms),
            limits: config.listener.clone(),
        };
        let node = MsgNode::on(config, &ctx).await?;
        let shutdown = self.shutdown.child();
        let parts = rethink_msg_node::parts(&node);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served =
                rethink_common::service::serve(vec![parts], listeners, &ctx, stop.wait(), options)
                    .await;
            if let Err(error) = served {
                tracing::warn!(%error, "test msg-node stopped with an error");
            }
        });
        Ok(MsgReplica {
            http,
            grpc,
            node,
            shutdown,
        })
    }

    /// Starts a msg-node replica with [`TestBed::msg_config`].
    pub async fn default_msg_node(&self, node_id: &str) -> Result<MsgReplica> {
        self.msg_node(self.msg_config(node_id)).await
    }

    /// Connects to `replica`'s WebSocket with `token`.
    pub async fn connect(&self, replica: &MsgReplica, token: &str) -> Result<Client, ClientError> {
        Client::connect(replica.ws(), token).await
    }

    /// Connects user `name` to `replica` with a fresh token and registers a hyperty; returns
    /// the client and the hyperty's address.
    pub async fn user(&self, replica: &MsgReplica, name: &str) -> Result<(Client, Address)> {
        let (token, _) = self.user_token(name);
        let client = self.connect(replica, &token).await?;
        let address = client
            .register(serde_json::json!({"name": "test"}))
            .await
            .context("registering a hyperty")?;
        Ok((client, address))
    }

    /// Attaches service `name` to `replica` over gRPC with a `services.attach` token.
    pub async fn attach(&self, replica: &MsgReplica, name: &str) -> Result<Client, ClientError> {
        Client::connect(replica.attach_target(), &self.service_token(name)).await
    }

    // ---- SFU ----

    /// Returns an SFU config for this bed: loopback port 0, the bed's Redis and auth, short
    /// heartbeats (200 ms, TTL 1 s) and a short drain (300 ms).
    pub fn sfu_config(&self, node_id: &str) -> SfuConfig {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = SfuConfig {
            node_id: node_id.into(),
            grpc_addr: loopback,
            http_addr: loopback,
            udp_addr: loopback,
            heartbeat_interval_ms: 200,
            heartbeat_ttl_ms: 1_000,
            drain_timeout_ms: 300,
            ..SfuConfig::default()
        };
        config.redis.url = Some(self.redis.url());
        config.auth.url = self.auth_url.clone();
        // Short-lived test tokens lapse at their `exp`, not half a minute later.
        config.auth.leeway_secs = 0;
        config
    }

    /// Mints a token of subject `sub` (also its name) for `grants` (JSON in the shape of
    /// [`Grants`], e.g. `{"rooms": {"subscribe": true, "names": ["stage"]}}`), valid for `ttl`
    /// (whole seconds; at most the auth service's maximum).
    pub fn token_for(
        &self,
        sub: &str,
        grants: serde_json::Value,
        ttl: Duration,
    ) -> Result<IssuedToken> {
        let grants: Grants = serde_json::from_value(grants).context("grants JSON")?;
        self.auth
            .issue(sub, sub, grants, Some(ttl))
            .map_err(|e| anyhow!("issuing a token: {e}"))
    }

    /// Starts an SFU node with `config` (its backends: `config.redis`).
    pub async fn sfu(&self, config: SfuConfig) -> Result<SfuReplica> {
        let backends = rethink_common::backends(config.redis.url.as_deref()).await?;
        self.sfu_with(config, backends).await
    }

    /// Starts an SFU node with `config` on `backends` (e.g. in-memory ones), verifying tokens
    /// with the bed's auth service.
    pub async fn sfu_with(&self, config: SfuConfig, backends: Backends) -> Result<SfuReplica> {
        let deps = Deps::with_backends(&config, backends).await;
        self.sfu_with_deps(config, deps).await
    }

    async fn sfu_with_deps(&self, config: SfuConfig, deps: Deps) -> Result<SfuReplica> {
        let listeners = rethink_sfu::Listeners {
            grpc: TcpListener::bind(config.grpc_addr).await?,
            http: TcpListener::bind(config.http_addr).await?,
            udp: UdpSocket::bind(config.udp_addr).await?,
        };
        let grpc = listeners.grpc.local_addr()?;
        let http = listeners.http.local_addr()?;
        let udp = listeners.udp.local_addr()?;
        let shutdown = self.shutdown.child();
        let node_id = config.node_id.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            rethink_sfu::run_with(config, listeners, deps, stop.wait()).await
        });
        Ok(SfuReplica {
            grpc,
            http,
            udp,
            node_id,
            shutdown,
            task: Some(task),
        })
    }

    /// Starts an SFU node with [`TestBed::sfu_config`].
    pub async fn default_sfu(&self, node_id: &str) -> Result<SfuReplica> {
        self.sfu(self.sfu_config(node_id)).await
    }

    /// Returns a bearer holding a fresh [`TestBed::sfu_token`].
    pub fn sfu_bearer(&self) -> Bearer {
        Bearer::new(&self.sfu_token()).expect("tokens are ASCII")
    }

    /// Connects an SFU control client to `sfu` with a `rooms.admin` token.
    pub async fn sfu_control(&self, sfu: &SfuReplica) -> Result<SfuControl> {
        Ok(SfuControl::connect(&sfu.grpc.to_string(), self.sfu_bearer(), WAIT).await?)
    }

    /// Connects an SFU control client to `sfu` that sends `token` (any grants, or none).
    pub async fn sfu_control_as(&self, sfu: &SfuReplica, token: &str) -> Result<SfuControl> {
        let bearer = Bearer::new(token).map_err(|e| anyhow!("{e}"))?;
        Ok(SfuControl::connect(&sfu.grpc.to_string(), bearer, WAIT).await?)
    }

    /// Returns the store as the trait object the SFU client reads.
    pub fn kv(&self) -> Arc<dyn rethink_common::kv::KvStore> {
        self.backends.kv.clone()
    }
}

/// One running msg-node replica.
pub struct MsgReplica {
    /// The HTTP address (`/msg`, `/client`).
    pub http: SocketAddr,
    /// The gRPC address (`Attach`).
    pub grpc: SocketAddr,
    /// The node, for tests that look inside.
    pub node: MsgNode,
    shutdown: Shutdown,
}

impl MsgReplica {
    /// Returns `ws://<http>/msg`.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/msg", self.http)
    }

    /// Returns `ws://<http>/msg?access_token=<token>`.
    pub fn ws_url(&self, token: &str) -> String {
        rethink_msg_client::transport::ws_url(&self.ws_base(), token, None)
    }

    /// Returns the URL that resumes the session of `resume_token` with `token`.
    pub fn resume_url(&self, token: &str, resume_token: &str) -> String {
        rethink_msg_client::transport::ws_url(&self.ws_base(), token, Some(resume_token))
    }

    /// Returns the WebSocket target (token in the query).
    pub fn ws(&self) -> Target {
        Target::ws(self.ws_base())
    }

    /// Returns the gRPC `Attach` target.
    pub fn attach_target(&self) -> Target {
        Target::grpc(format!("http://{}", self.grpc))
    }

    /// Stops the replica (its connections are closed, its sessions end).
    pub fn stop(&self) {
        self.shutdown.trigger();
    }
}

impl Drop for MsgReplica {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A WebSocket client below the protocol client, for what a well-behaved client never sends
/// (a frame header announcing more than it then sends).
pub struct RawWs {
    stream: tokio::net::TcpStream,
}

impl RawWs {
    /// Upgrades `/msg?access_token=<token>` of `replica` by hand; returns once the 101 arrived.
    pub async fn connect(replica: &MsgReplica, token: &str) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(replica.http).await?;
        let path = rethink_msg_client::transport::ws_url("/msg", token, None);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            replica.http
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .context("no upgrade answer in time")??;
            anyhow::ensure!(n > 0, "connection closed during the upgrade");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        Ok(Self { stream })
    }

    /// Sends the header of a masked text frame of `len` bytes, then only `sent` of them.
    pub async fn send_partial_text(&mut self, len: u64, sent: usize) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend(std::iter::repeat_n(b'x' ^ 1, sent));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Reads server frames until a close frame; returns its code, or `None` when the
    /// connection ended without one. Waits at most [`WAIT`] per frame.
    pub async fn close_code(&mut self) -> Result<Option<u16>> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 2];
            let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut head))
                .await
                .context("no close within the wait")?;
            if read.is_err() {
                return Ok(None);
            }
            let len = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len)?];
            self.stream.read_exact(&mut payload).await?;
            if head[0] & 0x0f == 8 {
                return Ok(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])));
            }
        }
    }
}

/// One running SFU node.
pub struct SfuReplica {
    /// gRPC `rethink.v1.Sfu`.
    pub grpc: SocketAddr,
    /// HTTP (ops, WHIP/WHEP).
    pub http: SocketAddr,
    /// Media.
    pub udp: SocketAddr,
    /// Its id in the node registry.
    pub node_id: String,
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), SfuError>>>,
}

impl SfuReplica {
    /// Opens a plain gRPC channel to the node (health checks, calls without a token).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))?
                .connect_timeout(WAIT)
                .connect()
                .await?,
        )
    }

    /// Starts the drain (the first SIGTERM).
    pub fn begin_drain(&self) {
        self.shutdown.trigger();
    }

    /// Waits (at most [`WAIT`]) until the node's `run` returns.
    pub async fn stopped(&mut self) -> Result<()> {
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(WAIT, task)
            .await
            .context("the sfu did not stop in time")?
            .context("sfu task")?
            .map_err(|e| anyhow!("sfu: {e}"))
    }

    /// Drains and waits for the end.
    pub async fn stop(mut self) -> Result<()> {
        self.begin_drain();
        self.stopped().await
    }
}

impl Drop for SfuReplica {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Returns the HTTP status a refused WebSocket attempt at `url` (a full `ws://` URL with its
/// query) got.
pub async fn refused_status(url: &str) -> Result<u16> {
    let target = rethink_msg_client::WsTarget {
        url: url.to_owned(),
        token_in: rethink_msg_client::TokenIn::Url,
        config: None,
    };
    match rethink_msg_client::WsLink::connect(&target, "", None, WAIT).await {
        Ok(_) => anyhow::bail!("connection was accepted"),
        Err(ClientError::Refused { status, .. }) => Ok(status),
        Err(e) => anyhow::bail!("unexpected error: {e}"),
    }
}

/// A publisher of the H264 test pattern (`rethink-rtc-peer`), joined to `room` through
/// `control` and connected.
pub async fn publish_pattern(
    control: &SfuControl,
    room: &str,
    name: &str,
) -> Result<rethink_rtc_peer::Peer> {
    use rethink_rtc_peer::{Peer, PeerConfig};
    let peer = Peer::new(PeerConfig::publisher(name)).await?;
    let offer = peer.create_offer_gathered(WAIT).await?;
    let answer = control.join(room, name, &offer).await?;
    peer.apply_answer(&answer).await?;
    peer.wait_connected(WAIT).await?;
    Ok(peer)
}

/// GETs `path` on `addr` with a bare HTTP/1.1 request; returns the status code (0 when the
/// answer is not HTTP).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .context("no HTTP answer in time")??;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0))
}

/// Returns whether `stream` ends (cleanly or with an error) within [`WAIT`].
pub async fn stream_ends<T>(stream: &mut tonic::Streaming<T>) -> bool {
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await
    .is_ok()
}
