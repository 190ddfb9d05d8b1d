//! Test harness: a real SFU service on loopback (gRPC, HTTP, UDP on port 0), tokens signed with a
//! test Ed25519 key and verified by the service's real verifier, and a str0m client peer.

#![allow(dead_code)]

pub mod peer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rethink_common::bus::{EventBus, MemoryBus};
use rethink_common::kv::{KvStore, MemoryKv};
use rethink_common::lifecycle::{Health, Shutdown};
use rethink_common::token::{TokenVerifier, VerifierOptions};
use rethink_proto::v1::sfu_client::SfuClient;
use rethink_proto::v1::{
    SfuCreateRoomRequest, SfuEventsRequest, SfuGetRoomStatsRequest, SfuJoinRequest,
    SfuLeaveRequest, SfuParticipantEvent, SfuRoomStats,
};
use rethink_sfu::auth::Authorizer;
use rethink_sfu::{Deps, Listeners, SfuConfig, SfuError};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::Channel;

/// Upper bound of every wait in these tests; reached only when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

const KID: &str = "sfu-test-key";

/// A test signing key and the JWK set that publishes it.
pub struct Keys {
    encoding: EncodingKey,
    pub jwks: JwkSet,
}

impl Keys {
    pub fn new(seed: u8) -> Self {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let der = signing.to_pkcs8_der().expect("pkcs8");
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({
            "keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KID, "alg": "EdDSA", "use": "sig"}]
        }))
        .expect("jwk set");
        Self { encoding, jwks }
    }

    /// Mints a token for `grants` (the scope list syntax of `Grants::from_str`, as JSON grants).
    pub fn mint(&self, grants: serde_json::Value) -> String {
        self.mint_as("service:conference", grants, Duration::from_secs(600))
    }

    /// Mints a token of subject `sub` for `grants`, valid for `ttl` (whole seconds).
    pub fn mint_as(&self, sub: &str, grants: serde_json::Value, ttl: Duration) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "sub": sub, "name": sub, "iat": now, "nbf": now,
            "exp": now + ttl.as_secs() as i64, "jti": format!("jti-{now}-{}", rand_suffix()),
            "aud": "rethink", "grants": grants,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("token")
    }

    /// A service token that may manage every room.
    pub fn service_token(&self) -> String {
        self.mint(serde_json::json!({"rooms": {"admin": true}}))
    }

    /// A verifier of these keys without clock leeway, so short-lived test tokens lapse at
    /// their `exp`.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(
            Arc::new(self.jwks.clone()),
            VerifierOptions {
                leeway: Duration::ZERO,
                ..VerifierOptions::default()
            },
        )
    }
}

/// What a login token carries: join rooms, view cameras, no media right.
pub fn login_grants() -> serde_json::Value {
    serde_json::json!({"rooms": {"join": true}, "cameras": {"view": true}})
}

/// The `jti` and `exp` of a token minted here (read without verifying).
pub fn jti_and_exp(token: &str) -> (String, i64) {
    let payload = token.split('.').nth(1).expect("a jwt");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("json claims");
    (
        claims["jti"].as_str().expect("jti").to_owned(),
        claims["exp"].as_i64().expect("exp"),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A running SFU service.
pub struct TestSfu {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub keys: Keys,
    pub token: String,
    pub kv: Arc<dyn KvStore>,
    pub bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), SfuError>>>,
}

/// Test configuration: loopback addresses, short heartbeats.
pub fn test_config() -> SfuConfig {
    SfuConfig {
        node_id: "sfu-test".into(),
        heartbeat_interval_ms: 200,
        heartbeat_ttl_ms: 1_000,
        // Short, so tests that leave participants behind stop quickly; the drain tests set their own.
        drain_timeout_ms: 300,
        ..SfuConfig::default()
    }
}

impl TestSfu {
    /// Starts a service with in-memory backends.
    pub async fn start() -> Self {
        Self::start_with(
            test_config(),
            Arc::new(MemoryKv::new()),
            Arc::new(MemoryBus::new()),
        )
        .await
    }

    /// Starts a service with the given config and backends.
    pub async fn start_with(
        config: SfuConfig,
        kv: Arc<dyn KvStore>,
        bus: Arc<dyn EventBus>,
    ) -> Self {
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            udp: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        };
        let grpc = listeners.grpc.local_addr().unwrap();
        let http = listeners.http.local_addr().unwrap();
        let udp = listeners.udp.local_addr().unwrap();
        let keys = Keys::new(7);
        let token = keys.service_token();
        // Revocations reach the service's verifier over the bus, as from the auth service.
        let verifier = keys.verifier();
        let health = Health::new();
        let backends = rethink_common::Backends {
            kv: kv.clone(),
            bus: bus.clone(),
        };
        verifier.follow(&backends, &health, &Shutdown::new()).await;
        let deps = Deps {
            kv: kv.clone(),
            bus: bus.clone(),
            auth: Authorizer::new(verifier),
            health,
        };
        let shutdown = Shutdown::new();
        let task = tokio::spawn(rethink_sfu::run_with(
            config,
            listeners,
            deps,
            shutdown.wait(),
        ));
        Self {
            grpc,
            http,
            udp,
            keys,
            token,
            kv,
            bus,
            shutdown,
            task: Some(task),
        }
    }

    /// Returns a gRPC client; calls need [`authed`] requests.
    pub async fn client(&self) -> SfuClient<Channel> {
        SfuClient::new(self.channel().await)
    }

    /// Returns a gRPC channel to the service.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("grpc connect")
    }

    /// Wraps `message` with the service token.
    pub fn authed<T>(&self, message: T) -> tonic::Request<T> {
        authed(message, &self.token)
    }

    /// Creates `room`; panics on any error.
    pub async fn create_room(&self, client: &mut SfuClient<Channel>, room: &str) {
        client
            .create_room(self.authed(create(room)))
            .await
            .expect("create room");
    }

    /// Joins `participant` to `room` with `offer`; returns the answer SDP.
    pub async fn join(
        &self,
        client: &mut SfuClient<Channel>,
        room: &str,
        participant: &str,
        offer: &str,
    ) -> String {
        client
            .join(self.authed(join(room, participant, offer)))
            .await
            .expect("join")
            .into_inner()
            .answer_sdp
    }

    /// Opens the event stream of `participant` in `room`.
    pub async fn events(
        &self,
        client: &mut SfuClient<Channel>,
        room: &str,
        participant: &str,
    ) -> Streaming<SfuParticipantEvent> {
        client
            .events(self.authed(SfuEventsRequest {
                room: room.into(),
                participant: participant.into(),
            }))
            .await
            .expect("events")
            .into_inner()
    }

    /// Removes `participant` from `room`; panics on any error.
    pub async fn leave(&self, client: &mut SfuClient<Channel>, room: &str, participant: &str) {
        client
            .leave(self.authed(SfuLeaveRequest {
                room: room.into(),
                participant: participant.into(),
            }))
            .await
            .expect("leave");
    }

    /// Returns the stats of `room`; panics on any error.
    pub async fn room_stats(&self, client: &mut SfuClient<Channel>, room: &str) -> SfuRoomStats {
        client
            .get_room_stats(self.authed(SfuGetRoomStatsRequest { room: room.into() }))
            .await
            .expect("room stats")
            .into_inner()
    }

    /// Revokes `token` the way the auth service does: a `TokenRevoked` event on the bus,
    /// which the service's verifier follows.
    pub async fn revoke(&self, token: &str) {
        use rethink_common::bus;
        let (jti, exp) = jti_and_exp(token);
        let payload = rethink_common::token::TokenRevoked { jti, exp };
        let event = bus::new_event(
            rethink_common::token::TOKEN_REVOKED_EVENT,
            "auth/test",
            &payload,
        );
        bus::publish_event(self.bus.as_ref(), bus::topics::AUTH_REVOCATIONS, &event)
            .await
            .expect("publish revocation");
    }

    /// Starts the drain (the first SIGTERM).
    pub fn begin_drain(&self) {
        self.shutdown.trigger();
    }

    /// Waits until `run` returns.
    pub async fn stopped(&mut self) -> Result<(), SfuError> {
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("service stops in time")
            .expect("service task")
    }

    /// Drains and waits for the end.
    pub async fn stop(mut self) {
        self.begin_drain();
        self.stopped().await.expect("clean stop");
    }
}

impl Drop for TestSfu {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Returns a create request for `room`.
pub fn create(room: &str) -> SfuCreateRoomRequest {
    SfuCreateRoomRequest { room: room.into() }
}

/// Returns a join request of `participant` to `room` with `offer`.
pub fn join(room: &str, participant: &str, offer: &str) -> SfuJoinRequest {
    SfuJoinRequest {
        room: room.into(),
        participant: participant.into(),
        offer_sdp: offer.into(),
    }
}

/// Returns whether `stream` ends (cleanly or with an error) within [`WAIT`].
pub async fn stream_ends<T>(stream: &mut Streaming<T>) -> bool {
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await
    .is_ok()
}

/// Wraps `message` with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// Reads an error body `{"error":{"code","message"}}`; returns `(code, message)`. Panics when
/// the body has another shape.
pub fn error_body(text: &str) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("error body {text:?}: {e}"));
    let field = |name: &str| {
        json["error"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no error.{name} in {text}"))
            .to_owned()
    };
    (field("code"), field("message"))
}

/// Reads an error response: its status and the code and message of its JSON body.
pub async fn http_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let (code, message) = error_body(&text);
    (status, code, message)
}

/// GETs `path` on `addr` with a bare HTTP/1.1 request; returns the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A publisher of the H264 test pattern (`rethink-rtc-peer`), joined to `room` over gRPC and
/// connected.
pub async fn publish_pattern(
    sfu: &TestSfu,
    client: &mut SfuClient<Channel>,
    room: &str,
    name: &str,
) -> rethink_rtc_peer::Peer {
    use rethink_rtc_peer::{Peer, PeerConfig};
    let peer = Peer::new(PeerConfig::publisher(name)).await.unwrap();
    let offer = peer.create_offer_gathered(WAIT).await.unwrap();
    let answer = sfu.join(client, room, name, &offer).await;
    peer.apply_answer(&answer).await.unwrap();
    peer.wait_connected(WAIT).await.unwrap();
    peer
}

/// Serves one HTML page at `/` on a free loopback port (127.0.0.1 is a secure context, so
/// the page may use getUserMedia); returns its address.
pub async fn serve_page(html: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
