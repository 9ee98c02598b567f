//! The log on its own, in this process: how fast it appends (disk with each
//! fsync policy, and memory), how long a restart takes to read a million
//! messages back, how fast a resume replays from far back, and whether the
//! process's memory grows with the log's size.
//!
//! `cargo run --release -p bench --bin bench-log [-- --messages N --dir D]`
//! prints a markdown table. The directory (default: a fresh one under the
//! system's temp dir) is removed afterwards.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use tidewater::log::{self, Entry, Fsync, Kind, LogConfig};

#[derive(Debug, Parser)]
struct Cli {
    /// Messages appended for each measurement.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Messages per append, as the egress thread batches what the broker
    /// has routed (at most 256).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Payload bytes (120, as the load scenarios use).
    #[arg(long, default_value_t = 120)]
    payload: usize,
    /// Where the logs go (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn entries(cli: &Cli) -> Vec<Entry> {
    (0..cli.batch)
        .map(|i| Entry {
            time_ms: tidewater::router::now_ms(),
            qos: 0,
            retain: false,
            topic: format!("bench/sensor/{}", i % 100).into(),
            payload: Bytes::from(vec![b'x'; cli.payload]),
        })
        .collect()
}

/// Appends `cli.messages` and returns messages per second.
fn append_rate(log: &dyn log::Log, cli: &Cli) -> anyhow::Result<f64> {
    let batch = entries(cli);
    let started = Instant::now();
    let mut done = 0;
    while done < cli.messages {
        log.append(&batch)?;
        done += batch.len() as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = match &cli.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("tidewater-bench-log-{}", std::process::id())),
    };
    let config = |name: &str, fsync| LogConfig {
        kind: Kind::Disk,
        dir: root.join(name),
        fsync,
        ..LogConfig::default()
    };
    println!(
        "| measurement | result |\n| --- | --- |\n| messages, batch, payload | {}, {}, {} B |",
        cli.messages, cli.batch, cli.payload
    );
    let memory = log::open(&LogConfig {
        kind: Kind::Memory,
        ..LogConfig::default()
    })?;
    println!(
        "| append, memory log | {:.0} msg/s |",
        append_rate(&*memory, &cli)?
    );
    for (name, fsync) in [("never", Fsync::Never), ("interval", Fsync::Interval)] {
        let log = log::open(&config(name, fsync))?;
        println!(
            "| append, disk log, fsync = \"{name}\" | {:.0} msg/s |",
            append_rate(&*log, &cli)?
        );
        log.close()?;
    }
    // `always` syncs every batch: fewer messages, or it takes minutes.
    let always = Cli {
        messages: (cli.messages / 100).max(cli.batch as u64),
        batch: cli.batch,
        payload: cli.payload,
        dir: None,
    };
    let log = log::open(&config("always", Fsync::Always))?;
    println!(
        "| append, disk log, fsync = \"always\" ({} messages) | {:.0} msg/s |",
        always.messages,
        append_rate(&*log, &always)?
    );
    log.close()?;

    // A restart: open the interval log again, reading every segment back.
    let before = rss_kib();
    let started = Instant::now();
    let log = log::open(&config("interval", Fsync::Interval))?;
    let opened = started.elapsed();
    let status = log.status();
    println!(
        "| restart to ready, {} messages ({} MiB) on disk | {:.0} ms |",
        status.next - status.first,
        status.bytes / (1024 * 1024),
        opened.as_secs_f64() * 1000.0
    );
    println!(
        "| memory after reopening it | +{} KiB ({} KiB resident) |",
        rss_kib().saturating_sub(before),
        rss_kib()
    );

    // A resume from 100,000 messages back, a page at a time as a
    // subscriber reads it, every message matching.
    let back = 100_000.min(status.next - status.first);
    let mut from = status.next - back;
    let started = Instant::now();
    let mut read = 0;
    while from < status.next {
        let (records, next) = log.read(from, status.next, 1_024, &mut |_| true)?;
        read += records.len();
        from = next;
    }
    println!(
        "| resume from {back} back, all matching | {:.0} msg/s |",
        read as f64 / started.elapsed().as_secs_f64()
    );
    let mut from = status.next - back;
    let started = Instant::now();
    let mut read = 0;
    while from < status.next {
        let (records, next) = log.read(from, status.next, 1_024, &mut |t| t.ends_with("/7"))?;
        read += records.len();
        from = next;
    }
    println!(
        "| resume from {back} back, 1 topic in {} matching | {:.0} scanned msg/s ({read} delivered) |",
        cli.batch,
        back as f64 / started.elapsed().as_secs_f64()
    );
    log.close()?;
    drop(log);
    if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
