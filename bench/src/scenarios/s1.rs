//! S1 and S4: 1,000 MQTT devices each publishing 120-byte JSON on
//! `devices/<i>/telemetry`; one reader per device plus one on
//! `devices/+/telemetry`, so every message is delivered twice. Tidewater's
//! readers are SSE streams; on bare rumqttd and Mosquitto they are MQTT
//! subscribers (S4, the cost of the bridge over the broker alone).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::{ascend, summarize, Settings};
use crate::load::{fmt_us, median, open_readers, spawn_readers, trial, Pace, Proto, Publisher};
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Server, System};

const SUSTAINED: &str = "sustained msg/s (≥ 99.9 % delivered)";
const SUSTAINED_GOAL: &str = "≥ 50k (stretch 100k)";

pub async fn run(system: System, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let reference = settings.s1_reference;
    let rows = [
        ("S1", SUSTAINED, SUSTAINED_GOAL),
        (
            "S1",
            &*latency_measure(reference),
            "p50 ≤ 0.5 ms, p99 ≤ 5 ms",
        ),
        (
            "S4",
            &*cpu_measure(reference),
            "Tidewater ÷ rumqttd ≤ 3.0 (stretch 2.0)",
        ),
    ];
    let proto = match system {
        System::Tidewater => Proto::Sse,
        System::Rumqttd | System::Mosquitto => Proto::Mqtt,
        System::Nchan => {
            super::unavailable(report, &rows, system, "no MQTT devices, no wildcard");
            return Ok(());
        }
    };
    let server = Server::start_tuned(system, &settings.launch, FIREHOSE).await?;
    let result = measure(&server, proto, settings, report).await;
    server.stop().await;
    result
}

/// The wildcard reader takes every message, up to 100k a second: it gets
/// the deeper queue README.md recommends for such a reader (the defaults,
/// 8,192 messages and 256 KiB, bound what a stalled browser holds, and
/// cover a dashboard's rates).
const FIREHOSE: &str = "[sse]\nqueue_capacity = 65536\nqueue_max_bytes = 16777216\n";

fn latency_measure(reference: f64) -> String {
    format!(
        "latency at {}k msg/s: p50 / p99 / p99.9",
        reference / 1000.0
    )
}

fn cpu_measure(reference: f64) -> String {
    format!(
        "server CPU µs per delivery at {}k msg/s",
        reference / 1000.0
    )
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
    let recorder = Arc::new(Recorder::new());
    let readers = open_readers(server, proto, devices, 0, |i| {
        format!("devices/{i}/telemetry")
    })
    .await?;
    // A tenth of the 1:1 readers time every message; the wildcard reader,
    // which receives every message, does too.
    spawn_readers(readers, &mut tasks, &recorder, (devices / 10).max(1), None);
    let wildcard =
        open_readers(server, proto, 1, devices, |_| "devices/+/telemetry".into()).await?;
    spawn_readers(wildcard, &mut tasks, &recorder, 1, None);
    let mqtt = server.addrs.mqtt.context("no MQTT listener")?;
    let publisher = Publisher::devices(mqtt, devices, false, &mut tasks).await?;
    let topic_of = move |k: u64| format!("devices/{}/telemetry", k as usize % devices);
    let label = format!("S1 {system:<9} {}", proto.name());
    // The reference rate with QoS 1 publishes first (the subscribers stay
    // at QoS 0, so only the device side changes), before the search below
    // pushes the server past what it sustains.
    let reference = settings.s1_reference;
    let mut qos1_outcome = None;
    if let Publisher::Devices { devices, .. } = &publisher {
        let qos1 = Publisher::Devices {
            devices: devices.clone(),
            qos1: true,
        };
        let pace = Pace {
            rate: reference,
            secs: settings.step_secs,
            fanout: 2,
            payload_bytes: settings.payload_bytes,
        };
        let warm = Pace {
            secs: settings.warmup_secs,
            ..pace
        };
        let o = trial(server, &qos1, &recorder, warm, &topic_of).await;
        report.detail(format!("{label} QoS 1 warm-up {}", o.line()));
        let mut outcomes = Vec::new();
        for rep in 0..settings.reps.max(1) {
            let o = trial(server, &qos1, &recorder, pace, &topic_of).await;
            report.detail(format!(
                "{label} QoS 1 {}/{} {}",
                rep + 1,
                settings.reps,
                o.line()
            ));
            outcomes.push(o);
        }
        qos1_outcome = Some(median(&outcomes));
    }
    let ascent = ascend(
        &label,
        server,
        &publisher,
        &recorder,
        &settings.s1_steps,
        Some(settings.s1_reference),
        2,
        settings,
        &topic_of,
        report,
    )
    .await;
    report.set(
        "S1",
        SUSTAINED,
        SUSTAINED_GOAL,
        system,
        summarize(&ascent, " msg/s"),
    );
    if let Some(best) = ascent.best {
        report.number("s1_sustained", system, best.target_rate);
    }
    if let Some(r) = ascent.reference {
        report.set(
            "S1",
            &latency_measure(reference),
            "p50 ≤ 0.5 ms, p99 ≤ 5 ms",
            system,
            format!(
                "{} / {} / {} ({:.2} % delivered)",
                fmt_us(r.p50_us),
                fmt_us(r.p99_us),
                fmt_us(r.p999_us),
                r.ratio() * 100.0
            ),
        );
        report.set(
            "S4",
            &cpu_measure(reference),
            "Tidewater ÷ rumqttd ≤ 3.0 (stretch 2.0)",
            system,
            format!("{:.2} µs", r.cpu_per_delivery()),
        );
        report.number("s4_cpu", system, r.cpu_per_delivery());
    }

    if let Some(o) = qos1_outcome {
        report.set(
            "S1",
            &format!(
                "QoS 1 publishes at {}k msg/s: delivered, p99, CPU µs",
                reference / 1000.0
            ),
            "—",
            system,
            format!(
                "{:.2} %, {}, {:.2} µs",
                o.ratio() * 100.0,
                fmt_us(o.p99_us),
                o.cpu_per_delivery()
            ),
        );
    }
    tasks.abort_all();
    Ok(())
}

/// S4's ratio, once Tidewater and rumqttd have both run.
pub fn ratios(report: &mut Report) {
    let measure = "CPU per delivery, Tidewater ÷ this system";
    let goal = "÷ rumqttd ≤ 3.0 (stretch 2.0)";
    let Some(tidewater) = report.get("s4_cpu", System::Tidewater) else {
        return;
    };
    for system in [System::Rumqttd, System::Mosquitto] {
        if let Some(other) = report.get("s4_cpu", system) {
            report.set(
                "S4",
                measure,
                goal,
                system,
                format!("{:.2}×", tidewater / other),
            );
        }
    }
}
