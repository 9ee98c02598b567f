//! The `tidewater` binary: parse the command line, load the configuration,
//! run the bridge until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tidewater::config::{self, ConfigSource};
use tidewater::Bridge;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tidewater",
    version,
    about = "MQTT devices and web clients, one bridge"
)]
struct Cli {
    /// Configuration file (default: ./bridge.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Validate the configuration and print the effective values.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, source) = config::load(cli.config.as_deref())?;
    if let Some(Command::Check) = cli.command {
        print!(
            "{}",
            toml::to_string(&config).context("cannot print the configuration")?
        );
        eprintln!("configuration is valid ({})", describe(&source));
        return Ok(());
    }
    tracing::info!(config = %describe(&source), "Starting Tidewater {}.", env!("CARGO_PKG_VERSION"));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let bridge = Bridge::start(config, cancel.clone()).await?;
        tokio::spawn(stop_on_signal(cancel));
        bridge.stopped().await;
        anyhow::Ok(())
    })?;
    // rumqttd's threads never return; leave without waiting for them.
    runtime.shutdown_background();
    Ok(())
}

fn describe(source: &ConfigSource) -> String {
    match source {
        ConfigSource::File(path) => path.display().to_string(),
        ConfigSource::Defaults => "built-in defaults, no bridge.toml found".into(),
    }
}

async fn stop_on_signal(cancel: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down."),
        () = terminate => tracing::info!("SIGTERM received, shutting down."),
    }
    cancel.cancel();
}
