//! `rethink-sfu`: parses flags and config, starts telemetry, binds, runs until SIGTERM + drain.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use rethink_common::config::{self, CommonArgs};
use rethink_common::{lifecycle, telemetry};
use rethink_sfu::{Listeners, SfuConfig};
use serde::Serialize;

/// The rethink media server (SFU).
#[derive(Parser, Serialize)]
#[command(version)]
struct Args {
    #[command(flatten)]
    #[serde(skip)]
    common: CommonArgs,
    /// Address advertised to peers as an ICE candidate (repeat for several).
    #[arg(long = "public-ip", value_name = "IP")]
    #[serde(rename = "public_ips", skip_serializing_if = "Vec::is_empty")]
    public_ip: Vec<IpAddr>,
    /// UDP address of the media socket.
    #[arg(long)]
    udp_addr: Option<SocketAddr>,
    /// gRPC listen address.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (ops endpoints).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Send-side bandwidth estimation (TWCC) towards peers; paces each leg at its estimate.
    #[arg(long, value_name = "BOOL")]
    bandwidth_estimation: Option<bool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: SfuConfig = config::load(args.common.config.as_deref(), &args)?;
    let _telemetry = telemetry::init("rethink-sfu", args.common.json_logs)?;
    let listeners = Listeners::bind(&config).await?;
    tracing::info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        udp = %listeners.udp.local_addr()?,
        "rethink-sfu listening"
    );
    let shutdown = lifecycle::shutdown_on_signals();
    rethink_sfu::run(config, listeners, shutdown.wait()).await?;
    Ok(())
}
