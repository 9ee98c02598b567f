//! A seconds-long end-to-end run for CI: a few devices publish to a
//! Tidewater release binary, SSE, WebSocket and MQTT readers receive, and a
//! few HTTP commands reach subscribed devices. No timing is asserted; it
//! fails only if nothing at all was delivered.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::task::JoinSet;

use super::Settings;
use crate::clients::http;
use crate::load::{open_readers, spawn_readers, trial, Pace, Proto, Publisher};
use crate::payload::{self, now_us};
use crate::recorder::Recorder;
use crate::servers::{Server, System};

const DEVICES: usize = 20;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let server = Server::start(System::Tidewater, &settings.launch).await?;
    let result = exercise(&server, settings).await;
    server.stop().await;
    result
}

async fn exercise(server: &Server, settings: &Settings) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let recorder = Arc::new(Recorder::new());
    let topic_of = |i: usize| format!("devices/{i}/telemetry");
    for proto in [Proto::Sse, Proto::Ws] {
        let readers = open_readers(server, proto, DEVICES, 0, topic_of).await?;
        spawn_readers(readers, &mut tasks, &recorder, usize::MAX, None);
    }
    let commands = Arc::new(Recorder::new());
    let readers = open_readers(server, Proto::Mqtt, 5, 100, |i| format!("devices/{i}/cmd")).await?;
    spawn_readers(readers, &mut tasks, &commands, usize::MAX, None);
    let mqtt = server.addrs.mqtt.context("no MQTT listener")?;
    let publisher = Publisher::devices(mqtt, DEVICES, false, &mut tasks).await?;
    let pace = Pace {
        rate: 1000.0,
        secs: 2.0,
        fanout: 2,
        payload_bytes: settings.payload_bytes,
    };
    let outcome = trial(server, &publisher, &recorder, pace, &|k| {
        topic_of(k as usize % DEVICES)
    })
    .await;
    println!("smoke: MQTT → SSE + WebSocket: {}", outcome.line());

    commands.open(now_us());
    let mut connection =
        http::Connection::open(server.addrs.http.context("no HTTP listener")?, 200).await?;
    let mut accepted = 0;
    for k in 0..50u64 {
        let body = payload::json(now_us(), k, 0, settings.payload_bytes);
        if connection
            .post(&format!("/publish/devices/{}/cmd", k % 5), &body)
            .await?
            == 202
        {
            accepted += 1;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let delivered = commands.stats();
    println!(
        "smoke: HTTP → MQTT: 50 POSTs, {accepted} accepted, {} delivered, p99 {} µs",
        delivered.received, delivered.p99_us
    );
    tasks.abort_all();
    if outcome.received == 0 || delivered.received == 0 {
        bail!("nothing was delivered: the load generator or the bridge is broken");
    }
    Ok(())
}
