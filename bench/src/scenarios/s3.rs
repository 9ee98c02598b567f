//! S3: idle connections. Opens 10k SSE streams, then 5k WebSocket sessions,
//! then 2k MQTT connections (each subscribed to a topic of its own), and
//! reads the server's resident memory after each group settles: the growth
//! divided by the group's size is what one idle connection costs.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::Settings;
use crate::load::{fmt_kib, open_readers, spawn_readers, Proto};
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Server, System};

const SETTLE: Duration = Duration::from_secs(2);

fn measure_name(proto: Proto) -> String {
    format!("KiB per idle {} connection", proto.name())
}

fn goal(proto: Proto) -> &'static str {
    match proto {
        Proto::Mqtt => "—",
        _ => "≤ 8 (stretch 4)",
    }
}

pub async fn run(system: System, settings: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let groups: Vec<(Proto, usize)> = [
        (Proto::Sse, settings.idle_sse),
        (Proto::Ws, settings.idle_ws),
        (Proto::Mqtt, settings.idle_mqtt),
    ]
    .into_iter()
    .filter(|(proto, _)| match system {
        // Tidewater's devices connect to its embedded broker: part of the mix.
        System::Tidewater => true,
        _ => proto.served_by(system),
    })
    .collect();
    let server = Server::start(system, &settings.launch).await?;
    tokio::time::sleep(SETTLE).await;
    let baseline = server.usage().rss_kib;
    let mut tasks = JoinSet::new();
    let recorder = Arc::new(Recorder::new());
    let mut previous = baseline;
    let mut opened = 0;
    let mut mix = Vec::new();
    for (proto, count) in groups {
        let readers = match open_readers(&server, proto, count, opened, |i| {
            format!("idle/{}/{i}", proto.name())
        })
        .await
        {
            Ok(readers) => readers,
            Err(e) => {
                report.set(
                    "S3",
                    &measure_name(proto),
                    goal(proto),
                    system,
                    format!("failed: {e:#}"),
                );
                report.detail(format!("S3 {system} {}: {e:#}", proto.name()));
                continue;
            }
        };
        opened += count;
        spawn_readers(readers, &mut tasks, &recorder, 0, None);
        tokio::time::sleep(SETTLE).await;
        let rss = server.usage().rss_kib;
        let per = rss.saturating_sub(previous) as f64 / count as f64;
        report.detail(format!(
            "S3 {system:<9} +{count} idle {}: RSS {} -> {} ({per:.1} KiB each)",
            proto.name(),
            fmt_kib(previous),
            fmt_kib(rss)
        ));
        report.set(
            "S3",
            &measure_name(proto),
            goal(proto),
            system,
            format!("{per:.1}"),
        );
        report.number(&format!("s3_{}", proto.name()), system, per);
        mix.push(format!("{count} {}", proto.name()));
        previous = rss;
    }
    report.set(
        "S3",
        "RSS with the whole idle mix (baseline)",
        "≤ 250 MB",
        system,
        format!(
            "{} ({}; baseline {})",
            fmt_kib(previous),
            mix.join(" + "),
            fmt_kib(baseline)
        ),
    );
    tasks.abort_all();
    drop(tasks);
    server.stop().await;
    Ok(())
}

/// S5's memory comparison, once Tidewater and Nchan have both run.
pub fn ratios(report: &mut Report) {
    for proto in [Proto::Sse, Proto::Ws] {
        let key = format!("s3_{}", proto.name());
        if let (Some(t), Some(n)) = (
            report.get(&key, System::Tidewater),
            report.get(&key, System::Nchan),
        ) {
            report.set(
                "S5",
                &format!(
                    "KiB per idle {} subscriber, Tidewater ÷ Nchan",
                    proto.name()
                ),
                "≤ 1×",
                System::Nchan,
                format!("{:.2}×", t / n.max(1e-9)),
            );
        }
    }
}
