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
    /// Log lines as text for people or JSON for log collectors. RUST_LOG
    /// sets the filter (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Validate the configuration (and the key and certificate files it
    /// names) and print the effective values.
    Check,
    /// Work with device-driver plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Work with the log on disk (`[log] dir`).
    #[command(subcommand)]
    Log(LogCommand),
    /// Read a password on standard input and print its argon2 hash, for an
    /// `[[auth.users]]` entry's `password_hash`. One trailing newline is
    /// dropped: `printf %s "$PASSWORD" | tidewater hash-password`.
    HashPassword,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Load a plugin library and print its descriptor, or the exact reason
    /// it cannot be loaded.
    Inspect {
        /// The shared library (e.g. target/release/libsim_thermo.so).
        path: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Read every file of the log and say what it holds and where it is
    /// damaged; exits non-zero if damaged. Safe while a bridge runs.
    Check {
        /// The log directory (default: `[log] dir` of the configuration).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Cut the log back to everything before its first damage, and begin
    /// a new epoch (clients that saw what was cut get a gap). Refused
    /// while a bridge uses the directory.
    Repair {
        /// The log directory (default: `[log] dir` of the configuration).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::HashPassword) = &cli.command {
        return hash_password();
    }
    if let Some(Command::Plugins(PluginsCommand::Inspect { path })) = &cli.command {
        let info = tidewater::plugin::inspect(path)?;
        println!("driver       {}", info.driver);
        println!("version      {}", info.version);
        println!(
            "abi version  {} (this bridge speaks {})",
            info.abi_version,
            tidewater_plugin_api::ABI_VERSION
        );
        println!("descriptor   {} bytes", info.descriptor_size);
        return Ok(());
    }
    let (config, source) = config::load(cli.config.as_deref())?;
    if let Some(Command::Log(command)) = &cli.command {
        return log_command(command, &config.log.dir);
    }
    if let Some(Command::Check) = cli.command {
        // The files the configuration names: token keys and certificates.
        tidewater::auth::token::WebAuth::new(config.auth.anonymous_web, config.auth.jwt.as_ref())?;
        if config.uses_tls() {
            tidewater::tls::server_config(&config.tls)?;
        }
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
        // Signal handlers are installed before any listener opens, so a
        // signal during startup is a clean stop, not the default action.
        let signals = Signals::install()?;
        let bridge = Bridge::start(config, cancel.clone()).await?;
        summarise(&bridge, &source);
        tokio::spawn(signals.cancel_on_signal(cancel));
        let health = bridge.broker_health();
        tokio::spawn(exit_when_stuck(health.clone()));
        bridge.stopped().await;
        if let Some(cause) = health.cause() {
            anyhow::bail!("the embedded broker failed ({cause}); exiting so that a supervisor restarts the bridge");
        }
        anyhow::Ok(())
    })?;
    // rumqttd's threads never return; leave without waiting for them.
    runtime.shutdown_background();
    Ok(())
}

/// A failed broker makes the bridge stop on its own; should that shutdown
/// hang (a plugin that never returns from `stop`), the process still exits
/// non-zero, so its supervisor is never left with a bridge that routes
/// nothing.
async fn exit_when_stuck(health: std::sync::Arc<tidewater::broker::health::BrokerHealth>) {
    use std::io::Write;
    health.down().await;
    tokio::time::sleep(tidewater::broker::health::DOWN_GRACE + STUCK_SHUTDOWN).await;
    // Not eprintln!: it panics when stderr is a closed pipe.
    let _ = writeln!(
        std::io::stderr(),
        "error: the embedded broker failed ({}) and shutdown did not finish in time; exiting",
        health.cause().unwrap_or("unknown cause")
    );
    std::process::exit(EXIT_BROKER_STUCK);
}

/// How long a shutdown after a broker failure may take.
const STUCK_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// The exit status when shutdown after a broker failure hung (EX_SOFTWARE).
const EXIT_BROKER_STUCK: i32 = 70;

/// `tidewater hash-password`: the password from standard input, its hash to
/// standard output, nothing else (so it can be captured by a script).
fn hash_password() -> anyhow::Result<()> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (shown as you type; pipe it in to hide it): ");
    }
    let mut input = String::new();
    stdin
        .lock()
        .read_to_string(&mut input)
        .context("cannot read the password from standard input (it must be UTF-8)")?;
    let password = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(&input);
    let hash = tidewater::auth::password::hash(password)?;
    println!("{hash}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    // rumqttd 0.20 logs every ordinary client disconnect as an ERROR from
    // these two modules; RUST_LOG brings them back.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,rumqttd=warn,rumqttd::router::routing=off,rumqttd::server::broker=off".into()
    });
    // A failed log write must never take a thread down: the default reports
    // it with eprintln!, which panics when stderr itself is a closed pipe
    // (a crashed log collector, `| head`), killing whichever thread logged.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// One line an operator can read at a glance once everything is up.
fn summarise(bridge: &Bridge, source: &ConfigSource) {
    let plugins: Vec<String> = bridge
        .plugins()
        .iter()
        .map(|p| {
            let p = p.snapshot();
            format!("{} ({:?})", p.name, p.state).to_lowercase()
        })
        .collect();
    let optional = |addr: Option<std::net::SocketAddr>| {
        addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
    };
    tracing::info!(
        config = %describe(source),
        mqtt = %bridge.mqtt_addr,
        mqtt_v5 = %optional(bridge.mqtt_v5_addr),
        mqtt_websocket = %optional(bridge.mqtt_ws_addr),
        mqtt_tls = %optional(bridge.mqtt_tls_addr),
        http = %bridge.http_addr,
        websocket = %bridge.ws_addr,
        plugins = %if plugins.is_empty() { "none".to_owned() } else { plugins.join(", ") },
        "Tidewater is ready."
    );
}

fn describe(source: &ConfigSource) -> String {
    match source {
        ConfigSource::File(path) => path.display().to_string(),
        ConfigSource::Defaults => "built-in defaults, no bridge.toml found".into(),
    }
}

fn log_command(command: &LogCommand, configured: &std::path::Path) -> anyhow::Result<()> {
    match command {
        LogCommand::Check { dir } => {
            let report = tidewater::log::check::check(dir.as_deref().unwrap_or(configured))?;
            println!("{report}");
            anyhow::ensure!(report.is_whole(), "the log is damaged");
        }
        LogCommand::Repair { dir } => {
            let (report, done) =
                tidewater::log::check::repair(dir.as_deref().unwrap_or(configured))?;
            println!("{report}");
            if done.is_empty() {
                println!("nothing to repair");
            }
            for line in done {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment they are installed;
/// and SIGXFSZ, taken so that a file size limit (`ulimit -f`) makes a log
/// write fail (EFBIG, a full disk to the log) instead of killing the
/// process.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(target_os = "linux")]
    file_size: tokio::signal::unix::Signal,
}

/// SIGXFSZ on Linux.
#[cfg(target_os = "linux")]
const SIGXFSZ: i32 = 25;

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                #[cfg(target_os = "linux")]
                file_size: signal(SignalKind::from_raw(SIGXFSZ))
                    .context("cannot listen for SIGXFSZ")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn cancel_on_signal(mut self, cancel: CancellationToken) {
        #[cfg(target_os = "linux")]
        let mut file_size = self.file_size;
        #[cfg(target_os = "linux")]
        tokio::spawn(async move {
            while file_size.recv().await.is_some() {
                tracing::debug!(
                    "SIGXFSZ: a write passed the file size limit (the log reports it)."
                );
            }
        });
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received, shutting down."),
            _ = self.terminate.recv() => tracing::info!("SIGTERM received, shutting down."),
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received, shutting down.");
            }
        }
        cancel.cancel();
    }
}
