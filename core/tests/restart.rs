//! The real binary killed and restarted on the same directory: SIGKILL
//! under load, then SIGTERM. A reader of every message checks that its
//! ids go on one by one across each restart (nothing lost, nothing twice),
//! and retained values come back.
//!
//! Each bridge runs in a fresh temporary directory (its log in `./data`
//! there), on free loopback ports; one still running when the test ends is
//! killed by its pid.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SseClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a bridge may take to answer `GET /healthz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(15);

struct Bridge {
    child: Child,
    http: SocketAddr,
}

impl Bridge {
    /// Starts the binary in `dir` on a free HTTP port and waits until it
    /// is healthy.
    async fn start(dir: &Path) -> Self {
        let ports: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let addr = |i: usize| ports[i].local_addr().expect("its address");
        let (http, mqtt, ws) = (addr(0), addr(1), addr(2));
        drop(ports);
        let log = std::fs::File::create(dir.join(format!("bridge-{}.log", http.port())))
            .expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidewater"));
        command.current_dir(dir).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDEWATER_") {
                command.env_remove(key);
            }
        }
        let child = command
            .env("TIDEWATER_HTTP__LISTEN", http.to_string())
            .env("TIDEWATER_MQTT__LISTEN", mqtt.to_string())
            .env("TIDEWATER_WEBSOCKET__LISTEN", ws.to_string())
            .env("TIDEWATER_AUTH__ANONYMOUS_WEB", "true")
            .env("TIDEWATER_AUTH__ANONYMOUS_MQTT", "true")
            // One publisher as fast as it can go: no rate limit.
            .env("TIDEWATER_LIMITS__PUBLISH_RATE", "0")
            .env("TIDEWATER_LIMITS__PUBLISH_BURST", "0")
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("spawn tidewater");
        let mut bridge = Self { child, http };
        let deadline = Instant::now() + STARTUP;
        loop {
            assert!(
                bridge.child.try_wait().expect("poll").is_none(),
                "the bridge exited during startup"
            );
            if status(http, "GET", "/healthz").await == Some(200) {
                return bridge;
            }
            assert!(Instant::now() < deadline, "the bridge never became healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll") {
                return status;
            }
            assert!(Instant::now() < deadline, "the bridge did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request on a fresh connection; its status, or `None` if the bridge
/// is not there to answer.
async fn status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Publishes on `load/n` as fast as one connection at a time allows, until
/// the bridge is gone or `stop` is set; returns how many were accepted.
fn load(http: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut accepted = 0;
        while !stop.load(Ordering::Relaxed) {
            match status(http, "POST", "/publish/load/n").await {
                Some(202) => accepted += 1,
                other => {
                    eprintln!("publisher ends on {other:?} after {accepted}");
                    break;
                }
            }
        }
        accepted
    })
}

fn position(id: &str) -> (u64, u64) {
    let (epoch, seq) = id.split_once('-').expect("<epoch>-<position>");
    (
        u64::from_str_radix(epoch, 16).expect("hex"),
        u64::from_str_radix(seq, 16).expect("hex"),
    )
}

/// Reads `load/#` from `resume` on, checking that each id follows the one
/// before, until `until` messages were read or the stream ends; returns
/// the last id.
async fn read_in_order(
    sse: &mut SseClient,
    mut last: Option<String>,
    until: u64,
    count: &AtomicU64,
) -> Option<String> {
    while count.load(Ordering::Relaxed) < until {
        let Some(event) = sse.next_event().await else {
            break;
        };
        assert_ne!(event.event, "gap", "no gap after {last:?}: {}", event.data);
        let id = event.id.expect("every live message has an id");
        if let Some(before) = &last {
            let (epoch, seq) = position(before);
            assert_eq!(
                position(&id),
                (epoch, seq + 1),
                "the message after {before} is the next one"
            );
        }
        last = Some(id);
        count.fetch_add(1, Ordering::Relaxed);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_go_on_one_by_one_across_sigkill_and_sigterm() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut bridge = Bridge::start(dir.path()).await;
    assert_eq!(
        status(
            bridge.http,
            "POST",
            "/publish/home/kitchen/temperature?retain=true"
        )
        .await,
        Some(202)
    );

    // A reader of everything on load/#, and a publisher that keeps going.
    let count = Arc::new(AtomicU64::new(0));
    let mut sse = SseClient::connect(bridge.http, "/events?topic=load/%23", &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = load(bridge.http, stop.clone());
    let last = read_in_order(&mut sse, None, 2_000, &count).await;
    // Killed in the middle of it all.
    bridge.signal("KILL");
    bridge.wait();
    let mut last = read_in_order(&mut sse, last, u64::MAX, &count).await;
    let accepted = publisher.await.expect("the publisher");
    assert!(accepted >= 2_000, "accepted {accepted}");

    for signal in ["TERM", "none"] {
        let restarted = Bridge::start(dir.path()).await;
        let resume = last.clone().expect("an id to resume from");
        let mut sse = SseClient::connect(
            restarted.http,
            "/events?topic=load/%23",
            &[("Last-Event-ID", &resume)],
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = load(restarted.http, stop.clone());
        let target = count.load(Ordering::Relaxed) + 1_000;
        let last_now = read_in_order(&mut sse, Some(resume), target, &count).await;
        stop.store(true, Ordering::Relaxed);
        publisher.await.expect("the publisher");
        // The retained value, as it was set before the first kill.
        let mut state =
            SseClient::connect(restarted.http, "/events?topic=home/kitchen/%23", &[]).await;
        let value = state.expect_event().await;
        assert_eq!((value.data.as_str(), value.id), ("x", None));
        drop(state);
        if signal == "TERM" {
            // Whatever arrives until the stream ends still follows on.
            let mut restarted = restarted;
            restarted.signal("TERM");
            let last_now = read_in_order(&mut sse, last_now, u64::MAX, &count).await;
            assert!(restarted.wait().success(), "SIGTERM exits with status 0");
            last = last_now;
        } else {
            drop(restarted);
        }
    }
}
