//! `rethink-stack`: every rethink service in one process (`rethink-stack --help`).

use std::net::SocketAddr;

use clap::Parser;
use rethink_common::{config, config::CommonArgs, lifecycle, telemetry};
use rethink_stack::{StackConfig, StackListeners};

/// Runs every rethink service in one process on one HTTP address.
#[derive(Debug, Parser)]
#[command(name = "rethink-stack", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Browser-facing HTTP address (default 127.0.0.1:8080).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// gRPC address of every service (default 127.0.0.1:9090).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// The browser runtime's own origin (default: the HTTP address with port+1).
    #[arg(long)]
    runtime_addr: Option<SocketAddr>,
    /// Use Redis instead of the in-memory bus and store.
    #[arg(long)]
    redis_url: Option<String>,
    /// Do not create the demo users.
    #[arg(long)]
    no_demo_users: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = serde_json::json!({
        "http_addr": cli.http_addr,
        "grpc_addr": cli.grpc_addr,
        "runtime_addr": cli.runtime_addr,
        "redis": { "url": cli.redis_url },
        "demo_users": cli.no_demo_users.then_some(false),
    });
    let config: StackConfig = config::load(cli.common.config.as_deref(), &overrides)?;
    let _telemetry = telemetry::init("rethink-stack", cli.common.json_logs)?;
    let listeners = StackListeners::bind(&config).await?;
    let shutdown = lifecycle::shutdown_on_signals();
    rethink_stack::run(config, listeners, shutdown.wait()).await?;
    Ok(())
}
