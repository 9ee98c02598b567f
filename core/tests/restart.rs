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
    mqtt: SocketAddr,
}

impl Bridge {
    /// Starts the binary in `dir` on a free HTTP port and waits until it
    /// is healthy.
    async fn start(dir: &Path) -> Self {
        Self::start_under(dir, &[]).await
    }

    /// Like [`Bridge::start`], run by the command `wrapper` (which then
    /// runs the bridge in its own process, as `prlimit` does).
    async fn start_under(dir: &Path, wrapper: &[String]) -> Self {
        let ports: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let addr = |i: usize| ports[i].local_addr().expect("its address");
        let (http, mqtt, ws) = (addr(0), addr(1), addr(2));
        drop(ports);
        let log = std::fs::File::create(dir.join(format!("bridge-{}.log", http.port())))
            .expect("a log file");
        let binary = env!("CARGO_BIN_EXE_tidewater");
        let mut command = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
        };
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
            .stdout(if wrapper.is_empty() {
                Stdio::from(log.try_clone().expect("the log file"))
            } else {
                Stdio::null()
            })
            .stderr(if wrapper.is_empty() {
                Stdio::from(log)
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn tidewater");
        let mut bridge = Self { child, http, mqtt };
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

/// The retained presence of `client_id` on `bridge`, as JSON.
async fn presence_of(bridge: &Bridge, client_id: &str) -> serde_json::Value {
    let path = format!("/events?topic=%24tidewater%2Fpresence%2F{client_id}");
    let mut sse = SseClient::connect(bridge.http, &path, &[]).await;
    serde_json::from_str(&sse.expect_event().await.data).expect("presence is JSON")
}

/// A device online when the bridge is killed is not left online: the next
/// start marks it offline (`bridge-stopped`) before any device can come
/// in, and a clean stop does the same for the devices connected then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_is_left_online_by_a_bridge_that_stopped() {
    use common::raw::{Connect, RawMqtt};
    let dir = tempfile::tempdir().expect("a temporary directory");
    for signal in ["KILL", "TERM"] {
        let mut bridge = Bridge::start(dir.path()).await;
        let id = format!("lamp-{signal}");
        let options = Connect {
            level: 4,
            client_id: &id,
            login: None,
            will_topic: None,
        };
        let (_lamp, code) = RawMqtt::connect(bridge.mqtt, options).await;
        assert_eq!(code, Some(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        while presence_of(&bridge, &id).await["online"] != true {
            assert!(Instant::now() < deadline, "{id} never showed online");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bridge.signal(signal);
        bridge.wait();
        let restarted = Bridge::start(dir.path()).await;
        let state = presence_of(&restarted, &id).await;
        assert_eq!(
            (state["online"].as_bool(), state["reason"].as_str()),
            (Some(false), Some("bridge-stopped")),
            "after SIG{signal}: {state}"
        );
        drop(restarted);
    }
}

/// Posts a 1 KiB message; its status and the JSON `error`, if any.
async fn publish_kib(http: SocketAddr, topic: &str) -> (u16, String) {
    let body = "x".repeat(1024);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
        let head = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let error = text
            .split("\"error\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned();
        Some((status, error))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .expect("an answer")
}

/// The log's files may grow to 64 KiB (a file size limit, as `prlimit`
/// sets it: to the bridge, a full disk). Publishes past it are turned away
/// with 503 `storage-full`, counted, and `/healthz` says the log is
/// failing, while streams keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_publishes_away_while_streams_keep_serving() {
    let prlimit = Command::new("prlimit").arg("--version").output();
    if !prlimit.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but prlimit (util-linux) is missing"
        );
        println!("SKIPPED a_full_disk_turns_publishes_away_while_streams_keep_serving: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = Bridge::start_under(dir.path(), &["prlimit".into(), "--fsize=65536".into()]).await;
    assert_eq!(
        status(bridge.http, "POST", "/publish/state?retain=true").await,
        Some(202)
    );
    let mut sse = SseClient::connect(bridge.http, "/events?topic=t", &[]).await;
    let mut accepted = 0;
    let refusal = loop {
        let (code, error) = publish_kib(bridge.http, "t").await;
        if code != 202 {
            break (code, error);
        }
        accepted += 1;
        assert!(accepted < 200, "64 KiB of log should be full by now");
    };
    assert_eq!(refusal, (503, "storage-full".to_owned()));
    assert!(accepted >= 40, "accepted {accepted}");

    let health = common::get(bridge.http, "/healthz").await;
    let body = health.json();
    assert_eq!(
        (health.status, body["status"].as_str()),
        (200, Some("degraded"))
    );
    assert_eq!(body["log"]["state"], "failing");
    assert!(
        body["log"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(".seg")),
        "{body}"
    );
    // What was accepted but could not be stored is counted; the rest was
    // delivered.
    let lost = body["stats"]["log_append_failures"]
        .as_u64()
        .expect("a count");
    assert!(lost >= 1, "{body}");
    for _ in 0..accepted - lost {
        assert_eq!(sse.expect_event().await.data.len(), 1024);
    }
    let metrics = String::from_utf8(common::get(bridge.http, "/metrics").await.body).expect("text");
    assert!(metrics.contains("tidewater_log_failing 1"), "{metrics}");
    assert!(
        metrics.contains(r#"tidewater_limit_refusals_total{protocol="http",limit="storage"} 1"#),
        "{metrics}"
    );
    // Streams serve on: a new one gets the retained value.
    let mut state = SseClient::connect(bridge.http, "/events?topic=state", &[]).await;
    assert_eq!(state.expect_event().await.data, "x");
}

/// Runs `tidewater log <what>` in `dir`.
fn log_command(dir: &Path, what: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .args(["log", what])
        .current_dir(dir)
        .env_remove("TIDEWATER_LOG__DIR")
        .output()
        .expect("run tidewater log")
}

/// A byte flipped inside the log: the bridge will not start, naming the
/// file and offset; `log check` says the same; `log repair` keeps what
/// comes before, and the bridge starts again with a new epoch, so a
/// client that saw what was cut is told of a gap, and one from before the
/// damage resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_stops_the_start_and_repair_keeps_what_comes_before() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut bridge = Bridge::start(dir.path()).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=t", &[]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        assert_eq!(
            status(bridge.http, "POST", "/publish/t").await,
            Some(202),
            "{i}"
        );
        ids.push(sse.expect_event().await.id.expect("an id"));
    }
    drop(sse);
    bridge.signal("TERM");
    assert!(bridge.wait().success());

    // Each record here is the same size: damage the 11th.
    let segment = std::fs::read_dir(dir.path().join("data/segments"))
        .expect("segments")
        .map(|e| e.expect("an entry").path())
        .next()
        .expect("one segment");
    let mut bytes = std::fs::read(&segment).expect("read it");
    let record = bytes.len() / 20;
    bytes[record * 10 + 20] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write it back");

    let failed = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .current_dir(dir.path())
        .env("TIDEWATER_HTTP__LISTEN", "127.0.0.1:0")
        .env("TIDEWATER_MQTT__LISTEN", "127.0.0.1:0")
        .env("TIDEWATER_WEBSOCKET__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run tidewater");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    let name = segment
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let named = format!("data/segments/{name} is damaged at byte {}", record * 10);
    assert!(stderr.contains(&named), "{stderr}");

    let checked = log_command(dir.path(), "check");
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{report}");
    assert!(
        report.contains(&format!(
            "DAMAGED  {}: 10 records, then at byte {}",
            segment.file_name().expect("a name").to_string_lossy(),
            record * 10
        )),
        "{report}"
    );

    let repaired = log_command(dir.path(), "repair");
    let text = String::from_utf8_lossy(&repaired.stdout);
    assert!(repaired.status.success(), "{text}");
    assert!(text.contains("began epoch"), "{text}");
    let checked = log_command(dir.path(), "check");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    let bridge = Bridge::start(dir.path()).await;
    let mut before = SseClient::connect(
        bridge.http,
        "/events?topic=t",
        &[("Last-Event-ID", &ids[7])],
    )
    .await;
    // The same messages, under the new epoch.
    for id in &ids[8..10] {
        let resumed = before.expect_event().await.id.expect("an id");
        let ((new_epoch, seq), (old_epoch, old_seq)) = (position(&resumed), position(id));
        assert_eq!(seq, old_seq);
        assert_ne!(new_epoch, old_epoch);
    }
    let mut after = SseClient::connect(
        bridge.http,
        "/events?topic=t",
        &[("Last-Event-ID", &ids[15])],
    )
    .await;
    assert_eq!(after.expect_event().await.event, "gap");
}
