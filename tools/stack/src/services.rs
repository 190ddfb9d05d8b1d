//! The services of the stack, and how each is plugged in.
//!
//! Adding a service takes a few lines in [`mount`]: build it from the [`StackContext`] (shared
//! bus and store, the in-process token verifier, the shutdown signal, the stack's own gRPC URL
//! for calling other services), then hand its pieces to [`Mount`]: `mount.http(router)` for its
//! browser-facing routes (the same paths Traefik routes), `mount.grpc(service)` for its gRPC
//! service, `mount.link(label, path)` for the start-up banner. Routers must not set a fallback
//! (axum refuses to merge two) and must not overlap other services' paths.

use std::convert::Infallible;

use axum::{Router, response::IntoResponse};
use rethink_auth::{AuthConfig, AuthService};
use rethink_common::{Backends, lifecycle::Shutdown, token::TokenVerifier};
use tonic::{body::Body, server::NamedService, service::RoutesBuilder};

use crate::StackError;

/// What every service gets from the stack.
#[derive(Debug, Clone)]
pub struct StackContext {
    /// The shared event bus and key-value store (memory, or Redis with `--redis-url`).
    pub backends: Backends,
    /// Verifies tokens with the in-process auth service's keys and revocations.
    pub verifier: TokenVerifier,
    /// The in-process auth service, e.g. to mint a service token with
    /// `auth.issue("service:conference", "conference", grants, None)`.
    pub auth: AuthService,
    /// Triggered when the stack shuts down; background tasks stop on it.
    pub shutdown: Shutdown,
    /// Base URL of the stack's HTTP address, e.g. `http://127.0.0.1:8080`.
    pub http_url: String,
    /// URL of the stack's gRPC port, where every service's gRPC API is served.
    pub grpc_url: String,
}

/// Collects what the services contribute: routes, gRPC services and banner links.
#[derive(Default)]
pub struct Mount {
    pub(crate) router: Router,
    pub(crate) grpc: RoutesBuilder,
    pub(crate) grpc_names: Vec<&'static str>,
    pub(crate) links: Vec<(String, String)>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("grpc", &self.grpc_names)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl Mount {
    /// Adds browser-facing routes.
    pub fn http(&mut self, router: Router) -> &mut Self {
        self.router = std::mem::take(&mut self.router).merge(router);
        self
    }

    /// Adds a gRPC service to the stack's gRPC port.
    pub fn grpc<S>(&mut self, service: S) -> &mut Self
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
        self.grpc.add_service(service);
        self
    }

    /// Adds a line "label: <http_url><path>" to the start-up banner.
    pub fn link(&mut self, label: &str, path: &str) -> &mut Self {
        self.links.push((label.to_string(), path.to_string()));
        self
    }
}

/// Builds the auth service (first: every other service verifies tokens with it).
pub async fn auth(backends: &Backends, mount: &mut Mount) -> Result<AuthService, StackError> {
    let auth = AuthService::new(
        AuthConfig::default(),
        backends.kv.clone(),
        backends.bus.clone(),
    )
    .await
    .map_err(|e| StackError::Service("auth", e.to_string()))?;
    mount
        .http(rethink_auth::http::router(auth.clone()))
        .grpc(rethink_auth::grpc::server(auth.clone()))
        .link("login", "/auth/login")
        .link("public keys", "/auth/.well-known/jwks.json");
    Ok(auth)
}

/// Builds every other service. Add yours here.
pub async fn mount(ctx: &StackContext, mount: &mut Mount) -> Result<(), StackError> {
    // Each service: build it from `ctx`, then `mount.http(..)`, `mount.grpc(..)`, `mount.link(..)`.
    let (sfu, sfu_routes) = rethink_sfu::start_in_stack(
        ctx.backends.clone(),
        ctx.verifier.clone(),
        &ctx.http_url,
        &ctx.grpc_url,
        ctx.shutdown.clone(),
    )
    .await
    .map_err(|e| StackError::Service("sfu", e.to_string()))?;
    mount
        .grpc(sfu)
        .http(sfu_routes)
        .link("whip ingest", "/whip/<room>");
    // The Message Node: /msg, the web client at /client/, and rethink.v1.MsgNode.
    let msg_node = rethink_msg_node::MsgNode::start(
        rethink_msg_node::MsgNodeConfig {
            web_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web"),
            ..rethink_msg_node::MsgNodeConfig::default()
        },
        ctx.backends.clone(),
        ctx.verifier.clone(),
        ctx.shutdown.clone(),
    )
    .await
    .map_err(|e| StackError::Service("msg-node", e.to_string()))?;
    mount
        .http(msg_node.router())
        .grpc(msg_node.grpc_service())
        .link("messages", "/msg")
        .link("web client", "/client/");
    Ok(())
}
