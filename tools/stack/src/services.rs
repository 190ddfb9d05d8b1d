//! The services of the stack: each is started from the one shared
//! [`ServiceContext`] and hands back its [`ServiceParts`]; the stack serves them all on one pair
//! of ports.
//!
//! Adding a service takes one line in [`start`]: its `start(config, ctx)` (or, for a service
//! whose configuration the stack adjusts, a few more). Routers must not set a fallback and must
//! not overlap other services' paths.

use rethink_auth::{AuthConfig, AuthService};
use rethink_common::{Backends, service::ServiceContext, service::ServiceParts};

use crate::StackError;

/// Builds the auth service first: its verifier checks every other service's tokens.
pub async fn auth(backends: &Backends) -> Result<AuthService, StackError> {
    let Backends { kv, bus } = backends.clone();
    AuthService::new(AuthConfig::default(), kv, bus)
        .await
        .map_err(|e| StackError::Service("auth", e.to_string()))
}

/// Starts every service but auth on `ctx` and returns their parts. Add yours here.
pub async fn start(ctx: &ServiceContext) -> Result<Vec<ServiceParts>, StackError> {
    let sfu = rethink_sfu::start_in_stack(
        ctx.backends.clone(),
        ctx.verifier.clone(),
        &ctx.http_url,
        &ctx.grpc_url,
        ctx.shutdown.clone(),
    )
    .await
    .map_err(|e| StackError::Service("sfu", e.to_string()))?;
    let (sfu_grpc, sfu_routes) = sfu;
    let sfu = ServiceParts::new("sfu")
        .grpc(sfu_grpc)
        .http(sfu_routes)
        .link("whip ingest", "/whip/<room>");
    // The Message Node: /msg, the web client at /client/, and rethink.v1.MsgNode.
    let msg_node = rethink_msg_node::start(
        rethink_msg_node::MsgNodeConfig {
            web_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web"),
            ..rethink_msg_node::MsgNodeConfig::default()
        },
        ctx,
    )
    .await
    .map_err(|e| StackError::Service("msg-node", e.to_string()))?;
    Ok(vec![sfu, msg_node])
}
