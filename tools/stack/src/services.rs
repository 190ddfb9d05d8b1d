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

/// Builds the auth service first: its verifier checks every other service's tokens. The
/// browser runtime logs users in from `runtime_origin`, so that origin may post logins.
pub async fn auth(backends: &Backends, runtime_origin: &str) -> Result<AuthService, StackError> {
    let Backends { kv, bus } = backends.clone();
    let mut config = AuthConfig::default();
    config.http.cors_origins = vec![runtime_origin.to_string()];
    AuthService::new(config, kv, bus)
        .await
        .map_err(|e| StackError::Service("auth", e.to_string()))
}

/// Starts every service but auth on `ctx` and returns their parts. Add yours here.
pub async fn start(ctx: &ServiceContext) -> Result<Vec<ServiceParts>, StackError> {
    let sfu = rethink_sfu::start(sfu_config(ctx)?, ctx)
        .await
        .map_err(|e| StackError::Service("sfu", e.to_string()))?;
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

/// Longest drain of the SFU inside the stack (the stack's own default deadline).
const SFU_DRAIN_MS: u64 = 5_000;

/// The SFU's settings come from the `RETHINK_*` environment like the standalone service's; its
/// media socket is `RETHINK_UDP_ADDR` if set, else a free port on the stack's HTTP address
/// (where local browsers reach it).
fn sfu_config(ctx: &ServiceContext) -> Result<rethink_sfu::SfuConfig, StackError> {
    let no_flags: Option<()> = None;
    let mut config: rethink_sfu::SfuConfig = rethink_common::config::load(None, &no_flags)
        .map_err(|e| StackError::Service("sfu", e.to_string()))?;
    config.drain_timeout_ms = config.drain_timeout_ms.min(SFU_DRAIN_MS);
    if std::env::var_os("RETHINK_UDP_ADDR").is_none() {
        let http: std::net::SocketAddr = ctx
            .http_url
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| StackError::Service("sfu", format!("stack address: {e}")))?;
        config.udp_addr = std::net::SocketAddr::new(http.ip(), 0);
    }
    Ok(config)
}
