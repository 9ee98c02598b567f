//! S6: commands over HTTP. 1,000 devices subscribe to `devices/<i>/cmd`;
//! keep-alive connections `POST /publish/devices/<i>/cmd` at a paced rate,
//! stepped up. Each request's latency runs from when it was due, so a slow
//! response delays the next one without hiding it (no coordinated
//! omission). On Nchan the devices are SSE subscribers of `devices-<i>-cmd`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::Settings;
use crate::clients::http;
use crate::load::{channel, fmt_rate, fmt_us, open_readers, spawn_readers, Proto};
use crate::payload::{self, now_us};
use crate::procstat;
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Server, System};

const SUSTAINED: &str = "sustained POST/s (≥ 99.9 % accepted and delivered)";
const SUSTAINED_GOAL: &str = "≥ 20k";

pub async fn run(system: System, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let latency = latency_name(settings.s6_reference);
    let proto = match system {
        System::Tidewater => Proto::Mqtt,
        System::Nchan => Proto::Sse,
        _ => {
            let rows = [
                ("S6", SUSTAINED, SUSTAINED_GOAL),
                ("S6", &*latency, "p99 ≤ 5 ms"),
            ];
            super::unavailable(report, &rows, system, "no HTTP publish");
            return Ok(());
        }
    };
    let server = Server::start(system, &settings.launch).await?;
    let result = measure(&server, proto, settings, report).await;
    server.stop().await;
    result
}

fn latency_name(reference: f64) -> String {
    format!(
        "HTTP latency at {}k POST/s: p50 / p99 / p99.9",
        reference / 1000.0
    )
}

/// One step's figures.
#[derive(Debug, Clone, Copy)]
struct Step {
    rate: f64,
    secs: f64,
    sent: u64,
    accepted: u64,
    delivered: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    cpu_per_request: f64,
    load_pct: f64,
}

impl Step {
    fn sustained(&self) -> bool {
        let due = self.rate * self.secs;
        self.sent as f64 >= 0.97 * due
            && self.accepted * 1000 >= self.sent * 999
            && self.delivered * 1000 >= self.sent * 999
    }

    fn line(&self) -> String {
        format!(
            "offered {:>6.0}/s sent {:>6.0}/s | accepted {:.3} % delivered {:.3} % | p50 {} p99 {} p99.9 {} | server {:.2} µs/request | load core {:.0} %",
            self.rate,
            self.sent as f64 / self.secs,
            self.accepted as f64 * 100.0 / self.sent.max(1) as f64,
            self.delivered as f64 * 100.0 / self.sent.max(1) as f64,
            fmt_us(self.p50),
            fmt_us(self.p99),
            fmt_us(self.p999),
            self.cpu_per_request,
            self.load_pct
        )
    }
}

async fn measure(
    server: &Server,
    proto: Proto,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let system = server.system;
    let devices = settings.devices;
    let mut tasks = JoinSet::new();
    let delivered = Arc::new(Recorder::new());
    let readers = open_readers(server, proto, devices, 0, |i| format!("devices/{i}/cmd")).await?;
    spawn_readers(readers, &mut tasks, &delivered, 0, None);
    let addr = server.addrs.http.context("no HTTP listener")?;
    let mut connections = Vec::new();
    for i in 0..settings.http_connections {
        connections.push(http::Connection::open(addr, devices + i).await?);
    }
    let label = format!("S6 {system:<9}");
    let mut best: Option<Step> = None;
    let mut reference = None;
    let mut failed = None;
    let warm = step(
        server,
        &mut connections,
        &delivered,
        settings.s6_steps[0],
        settings.warmup_secs,
        settings,
    )
    .await?;
    report.detail(format!("{label} warm-up {}", warm.line()));
    for &rate in &settings.s6_steps {
        let runs = if rate == settings.s6_reference {
            settings.reps.max(1)
        } else {
            1
        };
        let mut steps = Vec::new();
        for rep in 0..runs {
            let s = step(
                server,
                &mut connections,
                &delivered,
                rate,
                settings.step_secs,
                settings,
            )
            .await?;
            report.detail(format!("{label} step {}/{runs} {}", rep + 1, s.line()));
            steps.push(s);
        }
        steps.sort_by_key(|s| s.p99);
        let median = steps[steps.len() / 2];
        if rate == settings.s6_reference {
            reference = Some(median);
        }
        if median.sustained() {
            best = Some(median);
        } else {
            failed = Some(median);
            break;
        }
    }
    tasks.abort_all();
    let mut summary = match best {
        Some(b) => format!(
            "{}/s ({:.2} µs CPU per request)",
            fmt_rate(b.rate),
            b.cpu_per_request
        ),
        None => "below the first step".into(),
    };
    match failed {
        Some(f) => summary.push_str(&format!(
            "; at {}/s: sent {}/s, {:.2} % delivered",
            fmt_rate(f.rate),
            fmt_rate(f.sent as f64 / f.secs),
            f.delivered as f64 * 100.0 / f.sent.max(1) as f64
        )),
        None => summary.push_str(" (highest step tried)"),
    }
    report.set("S6", SUSTAINED, SUSTAINED_GOAL, system, summary);
    if let Some(r) = reference {
        report.set(
            "S6",
            &latency_name(settings.s6_reference),
            "p99 ≤ 5 ms",
            system,
            format!("{} / {} / {}", fmt_us(r.p50), fmt_us(r.p99), fmt_us(r.p999)),
        );
    }
    Ok(())
}

/// POSTs at `rate` for `secs` over every connection, each paced on its own.
async fn step(
    server: &Server,
    connections: &mut [http::Connection],
    delivered: &Recorder,
    rate: f64,
    secs: f64,
    settings: &Settings,
) -> anyhow::Result<Step> {
    let nchan = server.system == System::Nchan;
    let responses = Recorder::new();
    let (sent, accepted) = (AtomicU64::new(0), AtomicU64::new(0));
    let per_connection = Duration::from_secs_f64(connections.len() as f64 / rate);
    let length = Duration::from_secs_f64(secs);
    let server_before = server.usage();
    let load_before = procstat::own();
    let start_us = now_us();
    responses.open(start_us);
    delivered.open(start_us);
    let started = Instant::now();
    let count = connections.len();
    let drivers = connections.iter_mut().enumerate().map(|(c, connection)| {
        let (responses, sent, accepted) = (&responses, &sent, &accepted);
        async move {
            let mut k = 0u64;
            let mut previous_done = started;
            loop {
                // Connections start staggered so requests are spread evenly.
                let due = started + per_connection.mul_f64(k as f64 + c as f64 / count as f64);
                if due >= started + length {
                    return Ok::<(), anyhow::Error>(());
                }
                tokio::time::sleep_until(due.into()).await;
                // Latency from when the request was due if the previous
                // response made it late, else from when it was sent (the
                // timer's millisecond granularity is not the server's).
                let from = if previous_done > due {
                    due
                } else {
                    Instant::now()
                };
                let from_us = start_us + from.duration_since(started).as_micros() as u64;
                let device = (k as usize * count + c) % settings.devices;
                let topic = format!("devices/{device}/cmd");
                let path = if nchan {
                    format!("/pub/{}", channel(&topic))
                } else {
                    format!("/publish/{topic}")
                };
                let body = payload::json(from_us, k, device as u32, settings.payload_bytes);
                let status = connection.post(&path, &body).await?;
                previous_done = Instant::now();
                sent.fetch_add(1, Ordering::Relaxed);
                if (200..300).contains(&status) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    responses.record(now_us(), &[from_us], true);
                }
                k += 1;
            }
        }
    });
    futures_util::future::try_join_all(drivers).await?;
    let end_us = now_us();
    responses.close(end_us);
    delivered.close(end_us);
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = responses.stats();
    let sent = sent.load(Ordering::Relaxed);
    let server_cpu = server.usage().cpu_since(&server_before);
    Ok(Step {
        rate,
        secs,
        sent,
        accepted: accepted.load(Ordering::Relaxed),
        delivered: delivered.stats().received,
        p50: r.p50_us,
        p99: r.p99_us,
        p999: r.p999_us,
        cpu_per_request: server_cpu as f64 / sent.max(1) as f64,
        load_pct: procstat::own().cpu_since(&load_before) as f64 / (secs * 1e4),
    })
}
