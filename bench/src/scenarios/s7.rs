//! S7: slow consumers. A fan-out to N SSE readers at half the capacity S2
//! found; 1 % of the readers stop reading for `stall_secs`. Measured: the
//! other readers' p99 before and during the stall, the server's memory
//! while the stalled streams back up, whether and when they are dropped,
//! and whether memory returns to its level before the stall.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Settings;
use crate::clients::Stall;
use crate::load::{
    fmt_kib, fmt_rate, fmt_us, open_readers, spawn_readers, trial, Pace, Proto, PROBES,
};
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Server, System};

/// Deliveries per second used when S2 did not run first.
const DEFAULT_CAPACITY: f64 = 350_000.0;
const BASELINE_SECS: f64 = 5.0;
/// Tidewater's default `sse.replay_capacity`, in messages.
const REPLAY_CAPACITY: f64 = 10_000.0;
const MAX_WARMUP_SECS: f64 = 30.0;
const RECOVERY: Duration = Duration::from_secs(5);

pub async fn run(system: System, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    if !Proto::Sse.served_by(system) {
        let rows = [
            ("S7", "others' p99: before → during the stall", "≤ +20 %"),
            (
                "S7",
                "stalled readers dropped and counted; memory held per stalled reader",
                "≤ 256 KiB",
            ),
            (
                "S7",
                "server RSS: before → peak during → after recovery",
                "returns to baseline",
            ),
        ];
        super::unavailable(report, &rows, system, "no SSE");
        return Ok(());
    }
    let server = Server::start(system, &settings.launch).await?;
    let result = measure(&server, settings, report).await;
    server.stop().await;
    result
}

async fn measure(server: &Server, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let system = server.system;
    let n = settings.s7_clients;
    let stalled_count = (n / 100).max(1);
    // Half of what S2 found this system sustains at this fan-out; if S2
    // did not run or found nothing sustained, half of S2's first step.
    let capacity = report
        .get(&format!("s2_{n}_{}", Proto::Sse.name()), system)
        .or_else(|| settings.s2_steps.first().copied())
        .unwrap_or(DEFAULT_CAPACITY);
    let rate = capacity / 2.0 / n as f64;
    let mut tasks = JoinSet::new();
    let others = Arc::new(Recorder::new());
    let stalled = Arc::new(Recorder::new());
    let stall = Stall::default();
    let mut readers = open_readers(server, Proto::Sse, n, 0, |_| super::s2::TOPIC.into()).await?;
    let stalling = readers.split_off(n - stalled_count);
    spawn_readers(readers, &mut tasks, &others, PROBES, None);
    spawn_readers(stalling, &mut tasks, &stalled, 0, Some(&stall));
    let publisher = super::s2::publisher(server, &mut tasks).await?;
    let label = format!("S7 {system:<9}");
    let topic = |_: u64| super::s2::TOPIC.to_owned();
    let pace = |secs: f64| Pace {
        rate,
        secs,
        fanout: (n - stalled_count) as u64,
        payload_bytes: settings.payload_bytes,
    };
    let warm = trial(
        server,
        &publisher,
        &others,
        // Long enough to fill Tidewater's replay ring, so its growth is not
        // counted as memory the stalled readers hold.
        pace(
            settings
                .warmup_secs
                .max((REPLAY_CAPACITY / rate).min(MAX_WARMUP_SECS)),
        ),
        &topic,
    )
    .await;
    report.detail(format!("{label} warm-up  {}", warm.line()));
    let before = trial(server, &publisher, &others, pace(BASELINE_SECS), &topic).await;
    report.detail(format!("{label} baseline {}", before.line()));
    let drops_before = server.stat("slow_consumer_disconnects").await;

    // The stall: sample memory and the server's drop counter meanwhile.
    stall.set(true);
    let stall_started = Instant::now();
    let port = server.addrs.http.map_or(0, |a| a.port());
    let sampler = async {
        let mut peak = 0;
        let mut kernel_peak = 0;
        let mut dropped_after = None;
        let mut samples = 0u64;
        while stall_started.elapsed().as_secs_f64() < settings.stall_secs {
            peak = peak.max(server.usage().rss_kib);
            if samples.is_multiple_of(4) {
                kernel_peak = kernel_peak.max(send_queued(port, stalled_count).await);
            }
            samples += 1;
            if dropped_after.is_none()
                && server.stat("slow_consumer_disconnects").await
                    >= drops_before + stalled_count as u64
            {
                dropped_after = Some(stall_started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (peak, kernel_peak, dropped_after)
    };
    let (during, (peak, kernel_peak, dropped_after)) = tokio::join!(
        trial(
            server,
            &publisher,
            &others,
            pace(settings.stall_secs),
            &topic
        ),
        sampler
    );
    report.detail(format!("{label} stalled  {}", during.line()));
    let server_drops = server.stat("slow_consumer_disconnects").await - drops_before;
    stall.set(false);

    // Recovery: the stalled readers read what is left, see their streams
    // ended (if they were) and reconnect with Last-Event-ID.
    let after = trial(
        server,
        &publisher,
        &others,
        pace(RECOVERY.as_secs_f64()),
        &topic,
    )
    .await;
    report.detail(format!("{label} recovery {}", after.line()));
    let ended = stalled.closed.load(std::sync::atomic::Ordering::Relaxed);
    let held = peak.saturating_sub(before.server_rss_kib) / stalled_count as u64;
    tasks.abort_all();

    let change = (during.p99_us as f64 / before.p99_us.max(1) as f64 - 1.0) * 100.0;
    report.set(
        "S7",
        "others' p99: before → during the stall",
        "≤ +20 %",
        system,
        format!(
            "{} → {} ({change:+.0} %) at {}/s deliveries, {:.2} % delivered",
            fmt_us(before.p99_us),
            fmt_us(during.p99_us),
            fmt_rate(rate * n as f64),
            during.ratio() * 100.0
        ),
    );
    let dropped = match (system, dropped_after) {
        (System::Tidewater, Some(after)) => format!(
            "{server_drops}/{stalled_count} dropped after {:.1} s (counted)",
            after.as_secs_f64()
        ),
        (System::Tidewater, None) => format!("{server_drops}/{stalled_count} dropped (counted)"),
        _ => format!("{ended}/{stalled_count} streams ended by the server"),
    };
    report.set(
        "S7",
        "stalled readers dropped and counted; memory held per stalled reader",
        "≤ 256 KiB",
        system,
        format!(
            "{dropped}; {held} KiB each in the process (peak RSS growth ÷ {stalled_count}), \
             {} KiB each in the server's socket send buffer",
            kernel_peak / 1024
        ),
    );
    report.set(
        "S7",
        "server RSS: before → peak during → after recovery",
        "returns to baseline",
        system,
        format!(
            "{} → {} → {}",
            fmt_kib(before.server_rss_kib),
            fmt_kib(peak),
            fmt_kib(after.server_rss_kib)
        ),
    );
    Ok(())
}

/// The average of the `count` largest server-side send queues on `port`
/// (the stalled streams' bytes the kernel holds for the server), from `ss`;
/// 0 if `ss` is unavailable.
async fn send_queued(port: u16, count: usize) -> u64 {
    let filter = format!("( sport = :{port} )");
    let Ok(output) = tokio::process::Command::new("ss")
        .args(["-tnH", "state", "established", &filter])
        .output()
        .await
    else {
        return 0;
    };
    let mut queued: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect();
    queued.sort_unstable_by(|a, b| b.cmp(a));
    queued.iter().take(count).sum::<u64>() / count.max(1) as u64
}
