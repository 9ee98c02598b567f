//! `bench`: Tidewater's load generator and benchmark harness (issue 6).
//!
//! One invocation starts each system under test in turn, pinned to one
//! core, drives it from this process pinned to the other, and writes a
//! markdown table of every scenario × system with the details behind it.
//! All traffic is on loopback; every run is bounded in count and time.
//!
//! # Layout
//! - [`servers`]: starting, measuring and stopping Tidewater, bare rumqttd,
//!   Mosquitto and nginx + Nchan.
//! - [`clients`]: MQTT devices and subscribers, SSE and WebSocket readers,
//!   the HTTP publisher.
//! - [`load`]: subscribers and publishers by protocol, and one paced trial.
//! - [`scenarios`]: S1–S7 and the CI smoke run.
//! - [`recorder`], [`payload`], [`procstat`]: latency histograms, the timed
//!   payload, and CPU and memory from `/proc`.
//! - [`report`]: the table.

mod clients;
mod load;
mod payload;
mod procstat;
mod recorder;
mod report;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use report::Report;
use scenarios::Settings;
use servers::{Launch, System};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks Tidewater against rumqttd, Mosquitto and Nchan"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Smaller counts, fewer steps, one repetition: the whole table in a
    /// few minutes.
    #[arg(long, global = true)]
    quick: bool,
    /// Systems to run, comma-separated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "tidewater,rumqttd,mosquitto,nchan"
    )]
    systems: Vec<System>,
    /// The Tidewater binary (default: `tidewater` next to this one).
    #[arg(long, global = true)]
    tidewater: Option<PathBuf>,
    /// A TOML file appended to Tidewater's configuration in every scenario,
    /// e.g. `[[auth.acl]]` rules, which put MQTT devices behind the gate.
    #[arg(long, global = true)]
    tidewater_config: Option<PathBuf>,
    /// Where to write the markdown table.
    #[arg(long, global = true, default_value = "bench-results.md")]
    out: PathBuf,
    /// Core the servers are pinned to, and core of the load generator.
    #[arg(long, global = true, default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, global = true, default_value_t = 1)]
    load_cpu: usize,
    /// Run without taskset.
    #[arg(long, global = true)]
    no_pin: bool,
    /// Seconds per measured step, and of the warm-up before each search.
    #[arg(long, global = true)]
    step_secs: Option<f64>,
    #[arg(long, global = true)]
    warmup_secs: Option<f64>,
    /// Repetitions of the reference and best steps (medians reported).
    #[arg(long, global = true)]
    reps: Option<usize>,
    /// Devices in S1 and S6.
    #[arg(long, global = true, default_value_t = 1000)]
    devices: usize,
    /// S1's offered loads, messages per second.
    #[arg(long, global = true, value_delimiter = ',')]
    s1_steps: Option<Vec<f64>>,
    /// S2's fan-outs, and its offered loads in deliveries per second.
    #[arg(long, global = true, value_delimiter = ',')]
    fanouts: Option<Vec<usize>>,
    #[arg(long, global = true, value_delimiter = ',')]
    s2_steps: Option<Vec<f64>>,
    /// S3's idle SSE, WebSocket and MQTT connections.
    #[arg(long, global = true)]
    idle_sse: Option<usize>,
    #[arg(long, global = true)]
    idle_ws: Option<usize>,
    #[arg(long, global = true)]
    idle_mqtt: Option<usize>,
    /// S6's offered POST rates, and its keep-alive connections.
    #[arg(long, global = true, value_delimiter = ',')]
    s6_steps: Option<Vec<f64>>,
    #[arg(long, global = true, default_value_t = 16)]
    http_connections: usize,
    /// S7's stall length in seconds.
    #[arg(long, global = true)]
    stall_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Command {
    /// Every scenario against every system.
    All,
    /// A seconds-long end-to-end check against Tidewater (for CI).
    Smoke,
    /// S1 (MQTT → SSE) and S4 (the same on the bare brokers).
    S1,
    /// S2 (fan-out) and S5 (against Nchan).
    S2,
    /// S3 (idle connections).
    S3,
    /// S6 (HTTP publish to devices).
    S6,
    /// S7 (slow consumers).
    S7,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let pin = !cli.no_pin && cli.command != Command::Smoke && cores() >= 2;
    if pin && std::env::var_os("BENCH_PINNED").is_none() {
        return match reexec_pinned(cli.load_cpu) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, pin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs this same command again under `taskset` on the load core, with the
/// highest file-descriptor limit allowed.
fn reexec_pinned(cpu: usize) -> anyhow::Result<ExitCode> {
    if servers::which("taskset").is_none() {
        anyhow::bail!("taskset not found (apt-get install util-linux), or pass --no-pin");
    }
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; cpu=$1; shift; exec taskset -c \"$cpu\" \"$@\"")
        .arg("sh")
        .arg(cpu.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BENCH_PINNED", "1")
        .status()
        .context("cannot run taskset")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

async fn run(cli: Cli, pinned: bool) -> anyhow::Result<()> {
    let settings = settings(&cli, pinned)?;
    if cli.command == Command::Smoke {
        return scenarios::smoke::run(&settings).await;
    }
    let started = std::time::Instant::now();
    let load_before = load_average();
    let mut report = Report::default();
    let systems = cli.systems.clone();
    for system in &systems {
        if let Some(missing) = system.missing(&settings.launch) {
            report.detail(format!("{system}: skipped, {missing}"));
        }
    }
    let available: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| s.missing(&settings.launch).is_none())
        .collect();
    let run_s = |c: Command| cli.command == Command::All || cli.command == c;
    macro_rules! each {
        ($command:expr, $name:expr, $module:path) => {
            if run_s($command) {
                for &system in &available {
                    use $module as m;
                    let result = m::run(system, &settings, &mut report).await;
                    if let Err(e) = result {
                        report.detail(format!("{} {system}: failed: {e:#}", $name));
                        report.set($name, "error", "—", system, format!("failed: {e:#}"));
                    }
                }
            }
        };
    }
    each!(Command::S1, "S1", scenarios::s1);
    each!(Command::S2, "S2", scenarios::s2);
    each!(Command::S3, "S3", scenarios::s3);
    each!(Command::S6, "S6", scenarios::s6);
    each!(Command::S7, "S7", scenarios::s7);
    scenarios::s1::ratios(&mut report);
    scenarios::s2::ratios(&mut report, &settings.fanouts);
    scenarios::s3::ratios(&mut report);

    let mut out = String::new();
    out.push_str(&machine(&cli, pinned, started.elapsed(), &load_before));
    out.push('\n');
    out.push_str(&report.markdown(&systems));
    std::fs::write(&cli.out, &out)
        .with_context(|| format!("cannot write {}", cli.out.display()))?;
    println!("{out}");
    eprintln!("Written to {}.", cli.out.display());
    Ok(())
}

fn settings(cli: &Cli, pinned: bool) -> anyhow::Result<Settings> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    let quick = cli.quick;
    let pick = |full: f64, fast: f64| if quick { fast } else { full };
    Ok(Settings {
        launch: Launch {
            tidewater: cli
                .tidewater
                .clone()
                .unwrap_or_else(|| dir.join("tidewater")),
            rumqttd: dir.join("bench-rumqttd"),
            server_cpu: pinned.then_some(cli.server_cpu),
            tidewater_extra: match &cli.tidewater_config {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => String::new(),
            },
        },
        step_secs: cli.step_secs.unwrap_or(pick(2.0, 1.0)),
        warmup_secs: cli.warmup_secs.unwrap_or(pick(1.0, 0.5)),
        reps: cli.reps.unwrap_or(if quick { 1 } else { 3 }),
        payload_bytes: 120,
        devices: cli.devices,
        s1_steps: cli.s1_steps.clone().unwrap_or_else(|| {
            if quick {
                vec![20e3, 50e3, 100e3]
            } else {
                vec![10e3, 20e3, 35e3, 50e3, 75e3, 100e3, 150e3]
            }
        }),
        s1_reference: 20e3,
        fanouts: cli.fanouts.clone().unwrap_or_else(|| {
            if quick {
                vec![1000]
            } else {
                vec![100, 1000, 10_000]
            }
        }),
        s2_steps: cli.s2_steps.clone().unwrap_or_else(|| {
            if quick {
                vec![200e3, 350e3, 600e3]
            } else {
                vec![100e3, 200e3, 350e3, 500e3, 600e3, 800e3]
            }
        }),
        idle_sse: cli.idle_sse.unwrap_or(if quick { 2000 } else { 10_000 }),
        idle_ws: cli.idle_ws.unwrap_or(if quick { 1000 } else { 5000 }),
        idle_mqtt: cli.idle_mqtt.unwrap_or(if quick { 500 } else { 2000 }),
        s6_steps: cli.s6_steps.clone().unwrap_or_else(|| {
            if quick {
                vec![10e3, 20e3, 40e3]
            } else {
                vec![5e3, 10e3, 20e3, 30e3, 40e3]
            }
        }),
        s6_reference: 20e3,
        http_connections: cli.http_connections,
        s7_clients: 1000,
        stall_secs: cli.stall_secs.unwrap_or(pick(30.0, 10.0)),
    })
}

/// Processors on the machine (not only those this process may use).
fn cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine and the command, for the top of the report.
fn machine(cli: &Cli, pinned: bool, took: std::time::Duration, load_before: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "- machine: {} cores, {model}, {memory} memory, Linux {}\n\
         - command: `bench {}`{}\n\
         - pinning: {}\n\
         - load average before / after: {load_before} / {}; run took {:.0} s\n",
        cores(),
        kernel.trim(),
        args.join(" "),
        if cli.quick { " (quick)" } else { "" },
        if pinned {
            format!(
                "servers on core {}, load generator on core {}",
                cli.server_cpu, cli.load_cpu
            )
        } else {
            "none".into()
        },
        load_average(),
        took.as_secs_f64()
    )
}
