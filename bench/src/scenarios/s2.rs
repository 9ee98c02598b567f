//! S2 and S5: one topic fanned out to N readers (SSE, then WebSocket; MQTT
//! subscribers on the brokers), the publish rate stepped up until fewer
//! than 99.9 % of the deliveries arrive. Nchan's column is S5: the same
//! fan-out on the peer built for exactly this.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::{ascend, Settings};
use crate::load::{fmt_us, open_readers, spawn_readers, Proto, Publisher, PROBES};
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Server, System};

pub const TOPIC: &str = "fan/topic";

pub fn goal(n: usize) -> &'static str {
    match n {
        1000 => "≥ 350k/s (stretch 600k)",
        10_000 => "≥ 200k/s (stretch 400k)",
        _ => "—",
    }
}

pub fn measure_name(n: usize, proto: Proto) -> String {
    format!(
        "fan-out to {n} {} readers: sustained deliveries/s; p99, CPU µs at that rate",
        proto.name()
    )
}

pub async fn run(system: System, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    for proto in [Proto::Sse, Proto::Ws, Proto::Mqtt] {
        for &n in &settings.fanouts {
            let name = measure_name(n, proto);
            if !proto.served_by(system) {
                continue;
            }
            let server = Server::start(system, &settings.launch).await?;
            let result = cell(&server, proto, n, settings, report).await;
            server.stop().await;
            if let Err(e) = result {
                report.set("S2", &name, goal(n), system, format!("failed: {e:#}"));
                report.detail(format!("S2 {system} {} N={n}: {e:#}", proto.name()));
            }
        }
    }
    Ok(())
}

async fn cell(
    server: &Server,
    proto: Proto,
    n: usize,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let system = server.system;
    let mut tasks = JoinSet::new();
    let recorder = Arc::new(Recorder::new());
    let readers = open_readers(server, proto, n, 0, |_| TOPIC.into()).await?;
    spawn_readers(readers, &mut tasks, &recorder, PROBES, None);
    let publisher = publisher(server, &mut tasks).await?;
    let steps: Vec<f64> = settings.s2_steps.iter().map(|d| d / n as f64).collect();
    let label = format!("S2 {system:<9} {:<9} N={n:<5}", proto.name());
    let ascent = ascend(
        &label,
        server,
        &publisher,
        &recorder,
        &steps,
        None,
        n as u64,
        settings,
        &|_| TOPIC.into(),
        report,
    )
    .await;
    tasks.abort_all();
    let rate = |msgs: f64| crate::load::fmt_rate(msgs * n as f64);
    let mut summary = match ascent.best {
        Some(best) => {
            let deliveries = best.target_rate * n as f64;
            report.number(&format!("s2_{n}_{}", proto.name()), system, deliveries);
            report.number(
                &format!("s2cpu_{n}_{}", proto.name()),
                system,
                best.cpu_per_delivery(),
            );
            format!(
                "{}/s; p99 {}, {:.2} µs",
                rate(best.target_rate),
                fmt_us(best.p99_us),
                best.cpu_per_delivery()
            )
        }
        None => "below the first step".into(),
    };
    match ascent.failed {
        Some(f) => summary.push_str(&format!(
            " (at {}/s: {})",
            rate(f.target_rate),
            super::why_not(&f)
        )),
        None => summary.push_str(" (highest step tried)"),
    }
    report.set("S2", &measure_name(n, proto), goal(n), system, summary);
    Ok(())
}

/// One MQTT device, or HTTP POSTs for Nchan.
pub async fn publisher(server: &Server, tasks: &mut JoinSet<()>) -> anyhow::Result<Publisher> {
    if server.system == System::Nchan {
        let http = server.addrs.http.context("no HTTP listener")?;
        Publisher::http(http, 4, tasks).await
    } else {
        let mqtt = server.addrs.mqtt.context("no MQTT listener")?;
        Publisher::devices(mqtt, 1, false, tasks).await
    }
}

/// S5: Tidewater against Nchan on the fan-out, once both have run.
pub fn ratios(report: &mut Report, fanouts: &[usize]) {
    for &n in fanouts {
        for proto in [Proto::Sse, Proto::Ws] {
            let key = format!("s2_{n}_{}", proto.name());
            let cpu = format!("s2cpu_{n}_{}", proto.name());
            let (Some(t), Some(c)) = (
                report.get(&key, System::Tidewater),
                report.get(&key, System::Nchan),
            ) else {
                continue;
            };
            let (tc, cc) = (
                report.get(&cpu, System::Tidewater).unwrap_or(0.0),
                report.get(&cpu, System::Nchan).unwrap_or(0.0),
            );
            let measure = format!(
                "N={n} {}: Tidewater ÷ Nchan, deliveries/s and CPU µs per delivery",
                proto.name()
            );
            report.set(
                "S5",
                &measure,
                "deliveries ≥ 1×, µs ≤ 1×",
                System::Nchan,
                format!("{:.2}× deliveries/s, {:.2}× µs", t / c, tc / cc.max(1e-9)),
            );
        }
    }
}
