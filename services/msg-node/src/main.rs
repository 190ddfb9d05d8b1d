//! `rethink-msg-node`: the Message Node (`rethink-msg-node --help`).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use rethink_common::{config, config::CommonArgs, lifecycle, telemetry};
use rethink_msg_node::{Listeners, MsgNodeConfig};
use serde::Serialize;

/// Command line; every flag overrides the config file and `RETHINK_*` variables.
#[derive(Debug, Parser, Serialize)]
#[command(name = "rethink-msg-node", version, about = "The rethink Message Node")]
struct Cli {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    /// HTTP address (`/msg`, `/client`, ops endpoints).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<SocketAddr>,
    /// gRPC address (`rethink.v1.MsgNode`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<SocketAddr>,
    /// Redis URL shared by every replica (unset: in memory, one replica).
    #[arg(long)]
    #[serde(skip)]
    redis_url: Option<String>,
    /// This replica's id (unset: random).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Domain of the addresses this node hands out.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    /// Auth service base URL (for its public keys); sets `auth.url`.
    #[arg(long)]
    #[serde(skip)]
    auth_url: Option<String>,
    /// Policy file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_file: Option<PathBuf>,
    /// Directory served at `/client`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    web_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = serde_json::to_value(&cli)?;
    overrides["redis"] = serde_json::json!({ "url": &cli.redis_url });
    overrides["auth"] = serde_json::json!({ "url": &cli.auth_url });
    let config: MsgNodeConfig = config::load(cli.common.config.as_deref(), &overrides)?;
    let _telemetry = telemetry::init("rethink-msg-node", cli.common.json_logs)?;
    let listeners = Listeners::bind(&config).await?;
    tracing::info!(http = %listeners.http_addr()?, grpc = %listeners.grpc_addr()?, "rethink-msg-node listening");
    let shutdown = lifecycle::shutdown_on_signals();
    rethink_msg_node::run(config, listeners, shutdown.wait()).await?;
    Ok(())
}
