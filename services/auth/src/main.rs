//! `rethink-auth`: the auth service, and its admin commands (`rethink-auth --help`).

use clap::Parser;
use rethink_auth::{
    AuthConfig, Listeners,
    cli::{Cli, Command},
};
use rethink_common::{config, lifecycle, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config: AuthConfig = config::load(cli.config_file().as_deref(), &cli.overrides())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _telemetry = telemetry::init("rethink-auth", cli.common.json_logs)?;
            let listeners = Listeners::bind(&config).await?;
            tracing::info!(
                http = %listeners.http_addr()?,
                grpc = %listeners.grpc_addr()?,
                "rethink-auth listening"
            );
            let shutdown = lifecycle::shutdown_on_signals();
            rethink_auth::run(config, listeners, shutdown.wait()).await?;
        }
        command => rethink_auth::cli::execute(config, command).await?,
    }
    Ok(())
}
