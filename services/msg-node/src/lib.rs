//! The rethink Message Node: the browser-facing signaling gateway.
//!
//! Browsers connect to the WebSocket `/msg`, server hyperties attach over gRPC
//! (`rethink.v1.MsgNode.Attach`); both speak the JSON envelope of docs/protocol.md. The node
//! registers hyperties, routes messages between them across replicas (Redis: an address map
//! with TTLs and one bus channel per replica), enforces the policy on every message and hosts
//! the server side of data-object sync. It also serves the web client at `/client`.
//!
//! Layout:
//! - [`config`]: [`MsgNodeConfig`] (see `msg-node.example.toml`).
//! - [`envelope`]: the JSON envelope and its parser (never panics; property-tested).
//! - [`address`]: address forms, key and channel names.
//! - [`session`]: sessions, bounded queues, attach/detach, resume.
//! - [`node`]: dispatch and routing; [`registry`]: the hyperty registry and address map;
//!   [`objects`]: the protocol side of sync.
//! - [`ws`]: the WebSocket gateway; [`grpc`]: `Attach`; [`handover`]: resume on another
//!   replica.
//! - [`policy`]: the policy enforcement point; [`sync`]: the Syncher.
//! - [`error`]: [`MsgNodeError`], mapped to protocol codes, HTTP and gRPC in one place.
//!
//! Contracts: every message from the network gets either routed or an error response; the
//! connection stays usable after any bad frame (but a bad frame costs a rate token like a
//! message); no message larger than `limits.max_message_bytes` is buffered (the WebSocket
//! closes with 1009 from the frame header); memory per connection is bounded by
//! `limits.queue_len` messages of at most that size. Every connection holds a
//! [`rethink_common::token::Credential`]: it closes within a second of its token's revocation,
//! at its expiry unless renewed in-band. Well-known addresses are claimed only by the subjects
//! `[[registry.reserved]]` allows; data objects are observed only by the identities their
//! reporter names, and are deleted when the reporter's session ends.

pub mod address;
pub mod config;
pub mod envelope;
pub mod error;
pub mod grpc;
pub mod handover;
pub mod node;
pub mod objects;
pub mod policy;
pub mod registry;
pub mod session;
pub mod sync;
pub mod ws;

use std::{sync::Arc, time::Duration};

use axum::{Router, response::Redirect, routing::get};
use rethink_common::{
    Backends,
    lifecycle::{self, Shutdown},
    service::{ServeOptions, ServiceContext, ServiceParts},
    token::TokenVerifier,
};
use tower_http::services::ServeDir;

pub use config::MsgNodeConfig;
pub use error::MsgNodeError;
pub use node::Node;

/// Bytes an Attach envelope may carry beyond `limits.max_message_bytes` (protobuf tags and
/// lengths; the JSON limit itself is checked on the rebuilt frame, with a 413).
const GRPC_ENVELOPE_OVERHEAD: usize = 4096;

/// The sockets the service serves on (HTTP: `/msg`, `/client` and the ops endpoints; gRPC:
/// `rethink.v1.MsgNode`, health and reflection), bound by the caller (tests bind port 0).
pub type Listeners = lifecycle::Listeners;

/// A running Message Node's parts, for embedding (the all-in-one stack mounts [`MsgNode::router`]
/// and [`MsgNode::grpc_service`] itself).
#[derive(Debug, Clone)]
pub struct MsgNode {
    node: Arc<Node>,
}

impl MsgNode {
    /// Builds the node on `backends`, verifying tokens with `verifier`, and starts its background
    /// tasks (delivery channel, revocations, address refresh, policy reload) until `shutdown`.
    pub async fn start(
        config: MsgNodeConfig,
        backends: Backends,
        verifier: TokenVerifier,
        shutdown: Shutdown,
    ) -> Result<Self, MsgNodeError> {
        let policy = match &config.policy_file {
            Some(path) => policy::PolicyEngine::from_file(path)
                .map_err(|e| MsgNodeError::Internal(format!("policy file: {e}")))?,
            None => policy::PolicyEngine::default_policy(),
        };
        policy.spawn_reloader(backends.bus.clone(), shutdown.clone());
        let sync = sync::Syncher::new(
            backends.kv.clone(),
            backends.bus.clone(),
            sync::SyncConfig {
                domain: config.domain.clone(),
                max_value_bytes: config.limits.max_message_bytes,
                max_objects_per_reporter: config.limits.max_objects_per_identity,
                object_ttl: config.timing.object_ttl(),
                ..sync::SyncConfig::default()
            },
        );
        let node = Node::new(
            config,
            backends.kv,
            backends.bus,
            verifier,
            policy,
            sync,
            shutdown,
        )?;
        node.start().await?;
        // On shutdown every session ends, so its addresses leave the shared map at once and
        // other replicas answer 404 instead of waiting for the TTL.
        let closing = node.clone();
        tokio::spawn(async move {
            closing.shutdown.wait().await;
            closing.close_all().await;
        });
        tracing::info!(node = %node.node_id(), "msg-node started");
        Ok(Self { node })
    }

    /// Starts a node on the context's backends, verifier and shutdown ([`start`] without the
    /// parts; embedders that need the node itself call this, then [`parts`]).
    pub async fn on(config: MsgNodeConfig, ctx: &ServiceContext) -> Result<Self, MsgNodeError> {
        Self::start(
            config,
            ctx.backends.clone(),
            ctx.verifier.clone(),
            ctx.shutdown.clone(),
        )
        .await
    }

    /// Returns the node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Returns the HTTP routes: `/msg` and `/client`.
    pub fn router(&self) -> Router {
        let client =
            ServeDir::new(&self.node.config.web_dir).append_index_html_on_directories(true);
        Router::new()
            .route("/msg", get(ws::upgrade))
            .route("/client", get(|| async { Redirect::permanent("/client/") }))
            .nest_service("/client/", client)
            .with_state(self.node.clone())
    }

    /// Returns the gRPC service `rethink.v1.MsgNode`.
    pub fn grpc_service(
        &self,
    ) -> rethink_proto::v1::msg_node_server::MsgNodeServer<grpc::MsgNodeGrpc> {
        // An envelope is at most `max_message_bytes` of JSON plus its protobuf framing; a
        // larger one is refused while decoding instead of being buffered up to tonic's 4 MiB.
        let max = self.node.config.limits.max_message_bytes + GRPC_ENVELOPE_OVERHEAD;
        rethink_proto::v1::msg_node_server::MsgNodeServer::new(grpc::MsgNodeGrpc::new(
            self.node.clone(),
        ))
        .max_decoding_message_size(max)
    }
}

/// Starts a Message Node on the context's backends and verifier and returns its parts: `/msg`,
/// `/client`, and `rethink.v1.MsgNode`. Its sessions end when the context shuts down.
pub async fn start(
    config: MsgNodeConfig,
    ctx: &ServiceContext,
) -> Result<ServiceParts, MsgNodeError> {
    Ok(parts(&MsgNode::on(config, ctx).await?))
}

/// Returns the parts of a started node.
pub fn parts(node: &MsgNode) -> ServiceParts {
    ServiceParts::new("msg-node")
        .http(node.router())
        .grpc(node.grpc_service())
        .link("messages", "/msg")
        .link("web client", "/client/")
}

/// Runs the Message Node until `shutdown` resolves, then goes not-ready, closes every
/// connection (clients reconnect elsewhere) and drains.
pub async fn run(
    config: MsgNodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MsgNodeError> {
    let ctx = ServiceContext::standalone(&config.redis, &config.auth, &listeners)
        .await
        .map_err(|e| MsgNodeError::Store(e.to_string()))?;
    let options = ServeOptions {
        drain: Duration::from_millis(config.drain_timeout_ms),
        limits: config.listener.clone(),
    };
    let parts = start(config, &ctx).await?;
    rethink_common::service::serve(vec![parts], listeners, &ctx, shutdown, options)
        .await
        .map_err(|e| MsgNodeError::Internal(e.to_string()))?;
    tracing::info!("msg-node stopped");
    Ok(())
}

impl From<rethink_common::token::TokenError> for MsgNodeError {
    fn from(e: rethink_common::token::TokenError) -> Self {
        MsgNodeError::Token(e)
    }
}
