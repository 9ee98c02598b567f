//! The moving parts every scenario shares: who publishes (MQTT devices or
//! an HTTP publisher), who subscribes (SSE, WebSocket or MQTT readers), and
//! one paced, timed trial that measures delivery, latency and cost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::clients::{http, mqtt, sse, ws, Reading, Stall};
use crate::payload::{self, now_us};
use crate::procstat;
use crate::recorder::Recorder;
use crate::servers::{Server, System};

/// Connections opened at once while setting up, and when retrying.
const OPEN_CONCURRENCY: usize = 256;
const RETRY_CONCURRENCY: usize = 16;
/// Longest wait for late deliveries after a window closes.
const MAX_DRAIN: Duration = Duration::from_secs(3);
/// How much the median latency of a step's second half may exceed its
/// first half's before the step counts as not sustained: the server is
/// queueing faster than it delivers, and a longer step would lose. (A
/// 2 % overload over a 2 s step adds 20 ms.)
pub const KEEPING_UP_GROWTH_US: u64 = 25_000;
/// And the p99 no step may exceed, whatever its trend.
pub const KEEPING_UP_P99_US: u64 = 1_000_000;
/// Requests queued per HTTP publisher connection.
const HTTP_QUEUE: usize = 1024;

/// How subscribers receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Sse,
    Ws,
    Mqtt,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Sse => "SSE",
            Proto::Ws => "WebSocket",
            Proto::Mqtt => "MQTT",
        }
    }

    /// Whether `system` serves subscribers over this protocol in the
    /// benchmarks (Tidewater's MQTT side is rumqttd's, measured on its own).
    pub fn served_by(self, system: System) -> bool {
        matches!(
            (self, system),
            (Proto::Sse | Proto::Ws, System::Tidewater | System::Nchan)
                | (Proto::Mqtt, System::Rumqttd | System::Mosquitto)
        )
    }
}

/// Nchan has channels, not topics: slashes become dashes.
pub fn channel(topic: &str) -> String {
    topic.replace('/', "-")
}

/// One connected subscriber, not yet reading.
#[derive(Debug)]
pub enum Reader {
    Sse(sse::Stream),
    Ws(Box<ws::Session>),
    Mqtt(mqtt::Subscriber),
}

impl Reader {
    /// Subscribes to `topic` on `server` over `proto` from source `n`.
    pub async fn open(
        server: &Server,
        proto: Proto,
        topic: &str,
        n: usize,
    ) -> anyhow::Result<Self> {
        let addrs = server.addrs;
        let nchan = server.system == System::Nchan;
        match proto {
            Proto::Sse => {
                let addr = addrs.http.context("no HTTP listener")?;
                let path = if nchan {
                    format!("/sub/{}", channel(topic))
                } else {
                    format!("/events?topic={topic}")
                };
                Ok(Reader::Sse(
                    sse::Stream::open(&sse::Target { addr, path }, n, None).await?,
                ))
            }
            Proto::Ws => {
                let target = if nchan {
                    ws::Target::Nchan {
                        addr: addrs.http.context("no HTTP listener")?,
                        channel: channel(topic),
                    }
                } else {
                    ws::Target::Tidewater {
                        addr: addrs.ws.context("no WebSocket listener")?,
                        topic: topic.to_owned(),
                    }
                };
                Ok(Reader::Ws(Box::new(
                    ws::Session::open(&target, n, None).await?,
                )))
            }
            Proto::Mqtt => {
                let addr = addrs.mqtt.context("no MQTT listener")?;
                let id = format!("bench-sub-{n}-{}", now_us());
                Ok(Reader::Mqtt(
                    mqtt::Subscriber::open(addr, n, &id, topic).await?,
                ))
            }
        }
    }

    pub fn spawn(self, tasks: &mut JoinSet<()>, reading: Reading) {
        match self {
            Reader::Sse(s) => tasks.spawn(s.read(reading)),
            Reader::Ws(s) => tasks.spawn(s.read(reading)),
            Reader::Mqtt(s) => tasks.spawn(s.read(reading)),
        };
    }
}

/// Latency probes among `count` readers: enough for a stable p99.9.
pub const PROBES: usize = 20;

/// The delay between a bulk reader's reads, growing with their number so
/// that all of them together wake the load generator about 100,000 times
/// a second at most.
pub fn coalesce_for(readers: usize) -> Duration {
    Duration::from_micros((readers as u64 * 10).clamp(1_000, 100_000))
}

/// Starts reading: `probes` readers spread evenly read at once and time
/// every message; the others read in bulk and only count.
pub fn spawn_readers(
    readers: Vec<Reader>,
    tasks: &mut JoinSet<()>,
    recorder: &Arc<Recorder>,
    probes: usize,
    stall: Option<&Stall>,
) {
    let count = readers.len();
    let every = (count / probes.max(1)).max(1);
    let coalesce = coalesce_for(count);
    for (i, reader) in readers.into_iter().enumerate() {
        let probe = i % every == 0 && i / every < probes;
        reader.spawn(
            tasks,
            Reading {
                recorder: recorder.clone(),
                stall: stall.cloned(),
                coalesce: (!probe).then_some(coalesce),
            },
        );
    }
}

/// Opens `count` readers, `topic_of(i)` each, a bounded number at a time.
/// Those that fail (a server busy accepting thousands at once may let a
/// handshake time out) are tried once more, a few at a time; the result is
/// all `count` readers or an error.
pub async fn open_readers(
    server: &Server,
    proto: Proto,
    count: usize,
    first_source: usize,
    topic_of: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Reader>> {
    let open = |i: usize| {
        let topic = topic_of(i);
        async move {
            (
                i,
                Reader::open(server, proto, &topic, first_source + i).await,
            )
        }
    };
    let mut readers = Vec::with_capacity(count);
    let mut retry = Vec::new();
    let first: Vec<_> = futures_util::stream::iter(0..count)
        .map(open)
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    for (i, result) in first {
        match result {
            Ok(reader) => readers.push(reader),
            Err(_) => retry.push(i),
        }
    }
    let retried: Vec<_> = futures_util::stream::iter(retry)
        .map(open)
        .buffer_unordered(RETRY_CONCURRENCY)
        .collect()
        .await;
    let mut failed = 0;
    let mut first_error = None;
    for (_, result) in retried {
        match result {
            Ok(reader) => readers.push(reader),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "{failed} of {count} {} subscribers failed to open, twice",
            proto.name()
        )));
    }
    Ok(readers)
}

/// Sends messages: MQTT devices (rumqttc) or HTTP POSTs (Nchan).
#[derive(Debug)]
pub enum Publisher {
    Devices {
        devices: Vec<mqtt::Device>,
        qos1: bool,
    },
    Http {
        queues: Vec<mpsc::Sender<(String, Vec<u8>)>>,
    },
}

impl Publisher {
    /// `count` rumqttc devices connected to the server's MQTT listener.
    pub async fn devices(
        addr: SocketAddr,
        count: usize,
        qos1: bool,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Self> {
        let mut devices = Vec::with_capacity(count);
        let stamp = now_us();
        for i in 0..count {
            devices.push(mqtt::device(addr, format!("bench-dev-{i}-{stamp}"), tasks).await?);
        }
        Ok(Publisher::Devices { devices, qos1 })
    }

    /// `connections` keep-alive HTTP connections posting to Nchan.
    pub async fn http(
        addr: SocketAddr,
        connections: usize,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Self> {
        let mut queues = Vec::new();
        for i in 0..connections {
            let mut connection = http::Connection::open(addr, 1000 + i).await?;
            let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(HTTP_QUEUE);
            tasks.spawn(async move {
                while let Some((path, body)) = rx.recv().await {
                    if connection.post(&path, &body).await.is_err() {
                        return;
                    }
                }
            });
            queues.push(tx);
        }
        Ok(Publisher::Http { queues })
    }

    /// Sends message number `seq` on `topic`; false if it could not be queued.
    fn try_send(&self, seq: u64, topic: &str, payload: Vec<u8>) -> bool {
        match self {
            Publisher::Devices { devices, qos1 } => {
                let device = &devices[seq as usize % devices.len()];
                mqtt::try_publish(device, topic, *qos1, payload)
            }
            Publisher::Http { queues } => {
                let queue = &queues[seq as usize % queues.len()];
                queue
                    .try_send((format!("/pub/{}", channel(topic)), payload))
                    .is_ok()
            }
        }
    }
}

/// A paced run: `rate` messages per second for `secs`, message `k` on
/// `topic_of(k)`, each expected to reach `fanout` subscribers.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub rate: f64,
    pub secs: f64,
    pub fanout: u64,
    pub payload_bytes: usize,
}

/// What one trial measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub target_rate: f64,
    pub secs: f64,
    /// Messages the generator tried to send, and those it could not queue.
    pub attempted: u64,
    pub not_sent: u64,
    /// Deliveries expected (attempted × fan-out) and received.
    pub expected: u64,
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub early_p50_us: u64,
    pub late_p50_us: u64,
    pub server_cpu_us: u64,
    pub load_cpu_us: u64,
    pub server_rss_kib: u64,
    /// Trial and drain together, over which the load's CPU is measured.
    pub total_secs: f64,
    /// Streams the server ended during the trial.
    pub ended: u64,
    /// CPU time of other processes on the server's core (compilers, …),
    /// which makes a step's numbers worse than the server's own.
    pub other_on_server_core_us: u64,
}

impl Outcome {
    pub fn ratio(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.received as f64 / self.expected as f64
    }

    /// Whether latency stayed flat across the step.
    pub fn keeping_up(&self) -> bool {
        self.late_p50_us <= self.early_p50_us + KEEPING_UP_GROWTH_US
            && self.p99_us <= KEEPING_UP_P99_US
    }

    /// Messages per second actually sent.
    pub fn sent_rate(&self) -> f64 {
        (self.attempted - self.not_sent) as f64 / self.secs.max(1e-9)
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }

    /// Server CPU microseconds per delivered message.
    pub fn cpu_per_delivery(&self) -> f64 {
        self.server_cpu_us as f64 / (self.received.max(1)) as f64
    }

    /// Load-generator CPU use over the trial, in percent of one core.
    pub fn load_cpu_pct(&self) -> f64 {
        self.load_cpu_us as f64 / (self.total_secs * 1e6).max(1.0) * 100.0
    }

    /// At least 99.9 % delivered, the server kept up (latency not growing
    /// across the step, see [`KEEPING_UP_GROWTH_US`]: a growing backlog
    /// shows as latency before it shows as loss), and the generator kept up
    /// with the pace.
    pub fn sustained(&self) -> bool {
        self.ratio() >= 0.999
            && self.keeping_up()
            && self.attempted as f64 >= 0.97 * self.target_rate * self.secs
            && self.not_sent * 1000 <= self.attempted
    }

    /// One line for the details section.
    pub fn line(&self) -> String {
        format!(
            "offered {:>8.0}/s sent {:>8.0}/s | delivered {:>9.0}/s ({:>7.3} %) | p50 {} p99 {} p99.9 {}{} | server {:.2} µs/delivery, RSS {} | load core {:.0} %{}{}",
            self.target_rate,
            self.sent_rate(),
            self.deliveries_per_sec(),
            self.ratio() * 100.0,
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            if self.keeping_up() {
                String::new()
            } else {
                format!(
                    " (falling behind: p50 {} → {})",
                    fmt_us(self.early_p50_us),
                    fmt_us(self.late_p50_us)
                )
            },
            self.cpu_per_delivery(),
            fmt_kib(self.server_rss_kib),
            self.load_cpu_pct(),
            if self.other_on_server_core_us * 20 > (self.total_secs * 1e6) as u64 {
                format!(
                    " | other load on the server core {:.0} %",
                    self.other_on_server_core_us as f64 / (self.total_secs * 1e4)
                )
            } else {
                String::new()
            },
            if self.ended > 0 {
                format!(" | {} streams ended by the server", self.ended)
            } else {
                String::new()
            }
        )
    }
}

/// Runs one trial: paces the publisher, then waits for late deliveries.
pub async fn trial(
    server: &Server,
    publisher: &Publisher,
    recorder: &Recorder,
    pace: Pace,
    topic_of: &(dyn Fn(u64) -> String + Sync),
) -> Outcome {
    let server_before = server.usage();
    let load_before = procstat::own();
    let ended_before = recorder.closed.load(std::sync::atomic::Ordering::Relaxed);
    let core_before = server.cpu.map(procstat::core_busy_us);
    let start_us = now_us();
    recorder.open_halves(start_us, (pace.secs * 500_000.0) as u64);
    let started = Instant::now();
    let length = Duration::from_secs_f64(pace.secs);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut attempted, mut not_sent) = (0u64, 0u64);
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed().min(length);
        let due = (pace.rate * elapsed.as_secs_f64()) as u64;
        while attempted < due {
            let seq = attempted;
            let payload = payload::json(now_us(), seq, (seq % 100_000) as u32, pace.payload_bytes);
            if !publisher.try_send(seq, &topic_of(seq), payload) {
                not_sent += 1;
            }
            attempted += 1;
        }
        if elapsed >= length {
            break;
        }
    }
    recorder.close(now_us());
    let secs = started.elapsed().as_secs_f64();
    drain(recorder).await;
    let stats = recorder.stats();
    let server_after = server.usage();
    Outcome {
        target_rate: pace.rate,
        secs,
        attempted,
        not_sent,
        expected: attempted * pace.fanout,
        received: stats.received,
        p50_us: stats.p50_us,
        p99_us: stats.p99_us,
        p999_us: stats.p999_us,
        early_p50_us: stats.early_p50_us,
        late_p50_us: stats.late_p50_us,
        server_cpu_us: server_after.cpu_since(&server_before),
        load_cpu_us: procstat::own().cpu_since(&load_before),
        server_rss_kib: server_after.rss_kib,
        total_secs: started.elapsed().as_secs_f64(),
        ended: recorder.closed.load(std::sync::atomic::Ordering::Relaxed) - ended_before,
        other_on_server_core_us: match (server.cpu, core_before) {
            (Some(cpu), Some(before)) => procstat::core_busy_us(cpu)
                .saturating_sub(before)
                .saturating_sub(server_after.cpu_since(&server_before)),
            _ => 0,
        },
    }
}

/// Waits until deliveries stop arriving (100 ms without one), at most
/// [`MAX_DRAIN`].
async fn drain(recorder: &Recorder) {
    let deadline = Instant::now() + MAX_DRAIN;
    let mut last = recorder.stats().received;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = recorder.stats().received;
        if now == last {
            return;
        }
        last = now;
    }
}

/// The median of each figure over several trials of the same pace.
pub fn median(outcomes: &[Outcome]) -> Outcome {
    fn mid<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    let pick = |f: &dyn Fn(&Outcome) -> u64| mid(outcomes.iter().map(f).collect());
    // Delivery and throughput come from the trial with the median ratio,
    // so expected, received and attempted stay consistent with each other.
    let mut by_ratio = outcomes.to_vec();
    by_ratio.sort_by(|a, b| {
        a.ratio()
            .partial_cmp(&b.ratio())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = by_ratio[by_ratio.len() / 2];
    out.p50_us = pick(&|o| o.p50_us);
    out.p99_us = pick(&|o| o.p99_us);
    out.p999_us = pick(&|o| o.p999_us);
    let per_delivery = mid(outcomes.iter().map(Outcome::cpu_per_delivery).collect());
    out.server_cpu_us = (per_delivery * out.received.max(1) as f64) as u64;
    out.server_rss_kib = pick(&|o| o.server_rss_kib);
    out
}

pub fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

pub fn fmt_kib(kib: u64) -> String {
    if kib >= 10 * 1024 {
        format!("{:.0} MiB", kib as f64 / 1024.0)
    } else {
        format!("{kib} KiB")
    }
}

pub fn fmt_rate(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}k", rate / 1000.0)
    } else if rate >= 1000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}
