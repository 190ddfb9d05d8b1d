//! Shared harness: a real Redis, a real auth service and msg-node replicas on loopback, plus a
//! WebSocket client that speaks the protocol.

#![allow(dead_code)]

pub mod service;

use std::{collections::VecDeque, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use rethink_auth::{AuthConfig, AuthService};
use rethink_common::{
    Backends,
    lifecycle::Shutdown,
    testing::RedisServer,
    token::{Claims, Grants, ServiceGrants},
};
use rethink_msg_node::{Listeners, MsgNode, MsgNodeConfig};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, protocol::frame::coding::CloseCode},
};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// The registry's address in the test domain.
pub const REGISTRY: &str = "domain://registry.localhost";

/// Redis, auth and any number of msg-node replicas.
pub struct TestBed {
    pub redis: RedisServer,
    pub auth: AuthService,
    pub auth_url: String,
    pub backends: Backends,
    shutdown: Shutdown,
}

/// One running msg-node replica.
pub struct Replica {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub node: MsgNode,
    shutdown: Shutdown,
}

impl Replica {
    /// Returns `ws://<http>/msg?access_token=<token>`.
    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/msg?access_token={token}", self.http)
    }

    /// Returns the URL that resumes the session of `resume_token` with `token`.
    pub fn resume_url(&self, token: &str, resume_token: &str) -> String {
        format!("{}&resume={resume_token}", self.ws_url(token))
    }

    /// Stops the replica (its connections are closed, its sessions end).
    pub fn stop(&self) {
        self.shutdown.trigger();
    }
}

impl TestBed {
    /// Starts Redis and the auth service.
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
            let _ = rethink_auth::serve(service, listeners, stop.wait()).await;
        });
        Ok(Self {
            redis,
            auth,
            auth_url,
            backends,
            shutdown,
        })
    }

    /// Returns a msg-node config for this bed; `node_id` names the replica.
    pub fn config(&self, node_id: &str) -> MsgNodeConfig {
        let mut config = MsgNodeConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            node_id: Some(node_id.into()),
            web_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web"),
            ..MsgNodeConfig::default()
        };
        config.redis.url = Some(self.redis.url());
        // One clock for auth and node: expiry tests need no skew allowance.
        config.auth.leeway_secs = 0;
        config.auth.url = self.auth_url.clone();
        // Short enough for the 408 test, long enough for a loaded CI machine.
        config.timing.delivery_timeout_ms = 3_000;
        config
    }

    /// Starts a replica with `config`.
    pub async fn replica(&self, config: MsgNodeConfig) -> Result<Replica> {
        let listeners = Listeners::bind(&config).await?;
        let (http, grpc) = (listeners.http_addr()?, listeners.grpc_addr()?);
        let shutdown = self.shutdown.child();
        let ctx = rethink_common::service::ServiceContext::standalone(
            &config.redis,
            &config.auth,
            &listeners,
        )
        .await?;
        let node =
            MsgNode::start(config.clone(), ctx.backends, ctx.verifier, shutdown.clone()).await?;
        let router = node.router();
        let grpc_service = node.grpc_service();
        let stop = shutdown.clone();
        tokio::spawn(rethink_common::lifecycle::serve_http(
            listeners.http,
            router,
            stop.clone(),
            Duration::from_secs(1),
        ));
        let stop_grpc = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
                    async move { stop_grpc.wait().await },
                ),
        );
        Ok(Replica {
            http,
            grpc,
            node,
            shutdown,
        })
    }

    /// Starts a replica with the default test config.
    pub async fn default_replica(&self, node_id: &str) -> Result<Replica> {
        self.replica(self.config(node_id)).await
    }

    /// Mints a user token (`sub` = `user:<name>`).
    pub fn user_token(&self, name: &str) -> (String, Claims) {
        let issued = self
            .auth
            .issue(&format!("user:{name}"), name, Grants::user(), None)
            .unwrap();
        (issued.token, issued.claims)
    }

    /// Connects user `name` to `replica` with a fresh token and registers a hyperty; returns
    /// the client and the hyperty's address.
    pub async fn user(&self, replica: &Replica, name: &str) -> Result<(Client, String)> {
        let (token, _) = self.user_token(name);
        let mut client = Client::connect(replica, &token).await?;
        let address = client.register().await?;
        Ok((client, address))
    }

    /// Mints a service token with the `services.attach` grant.
    pub fn service_token(&self, name: &str) -> String {
        let grants = Grants {
            services: ServiceGrants { attach: true },
            ..Grants::default()
        };
        self.auth.issue(name, name, grants, None).unwrap().token
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: Ws,
    /// The welcome's value.
    pub session: Value,
    pub runtime: String,
    pub resume_token: String,
    buffered: VecDeque<Value>,
    next_id: i64,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Connects with `token` and reads the welcome.
    pub async fn connect(replica: &Replica, token: &str) -> Result<Self> {
        Self::connect_url(&replica.ws_url(token)).await
    }

    /// Connects with `token`, resuming the session of `resume_token`.
    pub async fn resume(replica: &Replica, token: &str, resume_token: &str) -> Result<Self> {
        Self::connect_url(&replica.resume_url(token, resume_token)).await
    }

    async fn connect_url(url: &str) -> Result<Self> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        let mut client = Client {
            ws,
            session: Value::Null,
            runtime: String::new(),
            resume_token: String::new(),
            buffered: VecDeque::new(),
            next_id: 1,
        };
        let welcome = client.recv().await?;
        if welcome["id"] != "session" || welcome["body"]["code"] != 200 {
            bail!("expected the welcome, got {welcome}");
        }
        client.session = welcome["body"]["value"].clone();
        client.runtime = client.session["runtime"]
            .as_str()
            .unwrap_or_default()
            .into();
        client.resume_token = client.session["resume_token"]
            .as_str()
            .unwrap_or_default()
            .into();
        Ok(client)
    }

    /// Returns the HTTP status a refused connection attempt got.
    pub async fn refused_status(url: &str) -> Result<u16> {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => bail!("connection was accepted"),
            Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
            Err(e) => bail!("unexpected error: {e}"),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::Text(text.into().into())).await?;
        Ok(())
    }

    /// Sends an envelope value.
    pub async fn send(&mut self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Receives the next envelope (buffered first).
    pub async fn recv(&mut self) -> Result<Value> {
        if let Some(v) = self.buffered.pop_front() {
            return Ok(v);
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("no message within the wait")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match message {
                Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Reads until the connection ends; returns how.
    pub async fn ended(&mut self) -> Result<Ended> {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("connection did not end within the wait")?;
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok(Ended::Closed(
                        u16::from(frame.code),
                        frame.reason.to_string(),
                    ));
                }
                Some(Ok(Message::Close(None))) => {
                    return Ok(Ended::Closed(u16::from(CloseCode::Status), String::new()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(Ended::Dropped),
            }
        }
    }

    /// Sends a request and waits for the response with its id (other messages are buffered).
    pub async fn request(
        &mut self,
        kind: &str,
        from: &str,
        to: &str,
        body: Value,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "type": kind, "from": from, "to": to, "body": body}))
            .await?;
        self.response_to(&json!(id)).await
    }

    /// Waits for the response with `id`, buffering everything else.
    pub async fn response_to(&mut self, id: &Value) -> Result<Value> {
        if let Some(pos) = self
            .buffered
            .iter()
            .position(|m| m["type"] == "response" && &m["id"] == id)
        {
            return Ok(self.buffered.remove(pos).unwrap_or_default());
        }
        loop {
            let m = self.recv_wire().await?;
            if m["type"] == "response" && &m["id"] == id {
                return Ok(m);
            }
            self.buffered.push_back(m);
        }
    }

    /// Registers a hyperty and returns its address.
    pub async fn register(&mut self) -> Result<String> {
        let runtime = self.runtime.clone();
        let registry = format!(
            "domain://registry.{}",
            self.session["domain"].as_str().unwrap_or("localhost")
        );
        let reply = self
            .request(
                "create",
                &runtime,
                &registry,
                json!({"resource": "hyperty", "descriptor": {"name": "test"}}),
            )
            .await?;
        reply["body"]["value"]["address"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("registration failed: {reply}"))
    }

    /// Asks the registry, as `from`, about `resource` (an address, a user or a path).
    pub async fn lookup(&mut self, from: &str, resource: &str) -> Result<Value> {
        self.request("read", from, REGISTRY, json!({"resource": resource}))
            .await
    }

    /// Polls the registry, as `from`, every `every` until `address` is gone (404); panics with
    /// `why` when it is still there after [`WAIT`].
    pub async fn wait_until_gone(
        &mut self,
        from: &str,
        address: &str,
        every: Duration,
        why: &str,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.lookup(from, address).await?;
            if code(&r) == 404 {
                return Ok(());
            }
            assert!(tokio::time::Instant::now() < deadline, "{why}");
            tokio::time::sleep(every).await;
        }
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close handshake.
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}

/// Returns the response code of a response envelope.
pub fn code(reply: &Value) -> u64 {
    reply["body"]["code"].as_u64().unwrap_or(0)
}

/// A WebSocket client below the protocol library, for what a well-behaved library never sends
/// (a frame header announcing more than it then sends).
pub struct RawWs {
    stream: TcpStream,
}

impl RawWs {
    /// Upgrades `/msg?access_token=<token>` by hand and returns once the 101 arrived.
    pub async fn connect(replica: &Replica, token: &str) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(replica.http).await?;
        let request = format!(
            "GET /msg?access_token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            replica.http
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte)).await??;
            if n == 0 {
                bail!("connection closed during the upgrade");
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
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
    /// connection ended without one.
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

/// Mints a token for any subject with the given grants, valid for `ttl` (None: the maximum).
pub fn token_for(
    bed: &TestBed,
    sub: &str,
    grants: Grants,
    ttl: Option<Duration>,
) -> (String, Claims) {
    let issued = bed.auth.issue(sub, sub, grants, ttl).unwrap();
    (issued.token, issued.claims)
}
