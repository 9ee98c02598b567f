//! The dashboard (`examples/dashboard`) end to end: its configuration parses
//! as shipped, and a real headless Chromium runs the page against a bridge
//! with the simulated drivers, through a restart of that bridge.
//!
//! The browser side is `js/dashboard.mjs` (Playwright driving Debian's
//! `/usr/bin/chromium`); this file starts and restarts the bridge, and checks
//! what the page charted against what its own SSE client received.

mod common;
mod plugin_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidewater::config::PluginConfig;
use tidewater::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use common::{start_with, SseClient, TestBridge};
use plugin_support::{rust_plugin, workspace_root};

/// The whole browser run (Chromium's start included) is bounded by this;
/// the script has its own, shorter, overall timeout.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(150);

/// What the page subscribes to, as the test's own SSE client.
const PAGE_STREAM: &str = "/events?topic=home/%2B/temperature&topic=home/%2B/humidity\
                           &topic=home/light/%2B/state&format=json";

fn example_config() -> Config {
    let path = workspace_root().join("examples/dashboard/bridge.toml");
    let text = std::fs::read_to_string(&path).expect("read examples/dashboard/bridge.toml");
    tidewater::config::from_toml_str(&text).expect("examples/dashboard/bridge.toml is valid")
}

/// `examples/dashboard/bridge.toml` parses as shipped, serves the dashboard
/// folder, has the root `bridge.toml`'s routes (the page's event names) and
/// loads both simulated drivers from the release build.
#[test]
fn example_config_parses_and_serves_the_dashboard() {
    let config = example_config();
    let static_dir = config.http.static_dir.as_deref();
    assert_eq!(static_dir, Some(Path::new("examples/dashboard")));
    assert!(workspace_root()
        .join("examples/dashboard/index.html")
        .is_file());
    let shipped = std::fs::read_to_string(workspace_root().join("bridge.toml"))
        .expect("read the root bridge.toml");
    let shipped = tidewater::config::from_toml_str(&shipped).expect("the root bridge.toml");
    assert_eq!(config.routes, shipped.routes);
    let plugins: Vec<(&str, &Path)> = config
        .plugins
        .iter()
        .map(|p| (p.name.as_str(), p.path.as_path()))
        .collect();
    assert_eq!(
        plugins,
        [
            ("thermo", Path::new("target/release/libsim_thermo.so")),
            ("lights", Path::new("target/release/libsim_light.so")),
        ]
    );
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser_tools(js: &Path) -> Option<&'static str> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Some("`node` is not installed");
    }
    if !Path::new("/usr/bin/chromium").is_file() {
        return Some("/usr/bin/chromium is missing (apt-get install chromium)");
    }
    if !js.join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is missing (npm ci --prefix core/tests/js)");
    }
    None
}

/// The example's drivers, loaded from the libraries built for this test
/// run instead of `target/release`.
fn drivers(config: &Config) -> Vec<PluginConfig> {
    config
        .plugins
        .iter()
        .map(|p| {
            let file = p.path.file_stem().and_then(|s| s.to_str()).expect("a name");
            let package = file.trim_start_matches("lib").replace('_', "-");
            PluginConfig {
                path: rust_plugin(&package),
                ..p.clone()
            }
        })
        .collect()
}

/// Starts the example's bridge on loopback: its routes, drivers and page,
/// with HTTP on `http` (port 0 for a fresh one) and its log on disk in
/// `log_dir`.
async fn start_dashboard(example: &Config, http: SocketAddr, log_dir: &Path) -> TestBridge {
    let plugins = drivers(example);
    start_with(|config| {
        config.log.kind = tidewater::log::Kind::Disk;
        config.log.dir = log_dir.to_path_buf();
        config.http.listen = http;
        config.http.static_dir = Some(workspace_root().join("examples/dashboard"));
        config.routes = example.routes.clone();
        config.plugins = plugins;
        // The page shows the lights' presence.
        config.presence.enabled = true;
    })
    .await
}

/// One event as the test's SSE client saw it.
#[derive(Debug)]
struct Seen {
    id: String,
    event: String,
    topic: String,
    payload: String,
}

/// Reads the page's stream from `bridge` until the bridge ends it; `last`
/// tells when the latest event arrived.
async fn record_stream(
    bridge: &TestBridge,
) -> (tokio::task::JoinHandle<Vec<Seen>>, watch::Receiver<Instant>) {
    // From the log's start too: the drivers publish before this connects.
    let path = format!("{PAGE_STREAM}&since=-5m");
    let mut sse = SseClient::connect(bridge.http, &path, &[]).await;
    let (arrived, last) = watch::channel(Instant::now());
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = sse.next_event().await {
            arrived.send_replace(Instant::now());
            let Some(id) = event.id else { continue }; // retained: no position
            let data: Value = serde_json::from_str(&event.data).expect("format=json");
            seen.push(Seen {
                id,
                event: event.event,
                topic: data["topic"].as_str().unwrap_or_default().to_owned(),
                payload: data["payload"].as_str().unwrap_or_default().to_owned(),
            });
        }
        seen
    });
    (task, last)
}

/// Waits for a round of readings and then a quiet moment, so the bridge is
/// stopped between two rounds of the driver rather than in the middle of
/// one, when the page and the test's client have both received all of it.
async fn between_rounds(last: &mut watch::Receiver<Instant>) {
    const QUIET: Duration = Duration::from_millis(300);
    tokio::time::timeout(common::TIMEOUT, async {
        last.changed().await.expect("the stream is open");
        loop {
            let quiet = QUIET.saturating_sub(last.borrow().elapsed());
            if tokio::time::timeout(quiet, last.changed()).await.is_err() {
                return;
            }
        }
    })
    .await
    .expect("a round of readings, then a quiet moment");
}

/// The browser script's stdout, and the task printing its stderr.
struct Script {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    progress: tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
}

impl Script {
    /// The next line of output; if the script ends instead, fails once its
    /// last words (what it expected and saw) are printed.
    async fn line(&mut self) -> String {
        let line = tokio::time::timeout_at(self.deadline, self.lines.next_line())
            .await
            .expect("the browser script answers in time")
            .expect("read the script's output");
        match line {
            Some(line) => line,
            None => {
                let _ = tokio::time::timeout(common::TIMEOUT, &mut self.progress).await;
                panic!("the browser script ended early (its reason is printed above)");
            }
        }
    }
}

/// The sequence number of an `epoch-seq` id.
fn seq(id: &str) -> u64 {
    let (_, seq) = id.split_once('-').expect("an epoch-seq id");
    u64::from_str_radix(seq, 16).expect("a hex sequence number")
}

/// In headless Chromium, the dashboard shows every room's readings, a
/// light's reported state after a click, and the explorer's error for a bad
/// filter; through a bridge restart on the same port it shows reconnecting,
/// live again, the gap notice and new readings; and every reading the first
/// bridge sent up to the page's last position is on the page's charts, once.
/// Skipped (with the reason) without node, Chromium or playwright-core,
/// unless CI is set.
#[tokio::test]
async fn the_dashboard_follows_the_bridge_through_a_restart() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if let Some(reason) = missing_browser_tools(&js) {
        assert!(std::env::var_os("CI").is_none(), "CI is set but {reason}");
        println!("SKIPPED the_dashboard_follows_the_bridge_through_a_restart: {reason}");
        return;
    }
    let example = example_config();
    let setting = |plugin: &str, key: &str| {
        let entry = example.plugins.iter().find(|p| p.name == plugin);
        entry.expect("the example's plugin").config[key].clone()
    };
    let (rooms, lights) = (setting("thermo", "rooms"), setting("lights", "lights"));
    let started = Instant::now();

    let log_dir = tempfile::tempdir().expect("a directory for the log");
    let first = start_dashboard(
        &example,
        "127.0.0.1:0".parse().expect("addr"),
        log_dir.path(),
    )
    .await;
    let http = first.http;
    let epoch = format!("{:x}", first.router.epoch());
    let (recorder, mut last_event) = record_stream(&first).await;
    // Readings before the page opens: it must find them in the log.
    for _ in 0..2 {
        between_rounds(&mut last_event).await;
    }

    // A light that reports its state and takes commands but never answers
    // them: a real MQTT device, for the page's "no answer".
    // Its client id says which light it is, for the page's presence.
    let mut silent = common::Device::connect(first.mqtt, "light-silent").await;
    silent.subscribe("home/light/silent/set").await;
    silent
        .publish(
            "home/light/silent/state",
            r#"{"on":false,"brightness":100}"#,
            true,
        )
        .await;

    let screenshot = screenshot_path();
    let mut node = tokio::process::Command::new("node")
        .arg(js.join("dashboard.mjs"))
        .arg(format!("http://{http}/"))
        .arg(&screenshot)
        .arg(json!({"rooms": rooms, "lights": lights, "silent": "silent"}).to_string())
        .current_dir(&js)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    // The script's progress and failure reasons, through the test's own
    // output: shown when the test fails (or with --nocapture).
    let mut progress = BufReader::new(node.stderr.take().expect("node's stderr")).lines();
    let progress = tokio::spawn(async move {
        while let Ok(Some(line)) = progress.next_line().await {
            eprintln!("{line}");
        }
    });
    let mut stdin = node.stdin.take().expect("node's stdin");
    let mut script = Script {
        lines: BufReader::new(node.stdout.take().expect("node's stdout")).lines(),
        progress,
        deadline: tokio::time::Instant::now() + BROWSER_TIMEOUT,
    };
    let deadline = script.deadline;

    assert_eq!(script.line().await, "drop-silent-light");
    drop(silent);
    stdin
        .write_all(b"dropped\n")
        .await
        .expect("tell the script");
    assert_eq!(script.line().await, "bring-back-silent-light");
    let mut silent = common::Device::connect(first.mqtt, "light-silent").await;
    silent.subscribe("home/light/silent/set").await;
    stdin.write_all(b"back\n").await.expect("tell the script");
    assert_eq!(script.line().await, "ready-for-restart");
    between_rounds(&mut last_event).await;
    let before_restart = started.elapsed();
    first.shutdown().await;
    let sent = tokio::time::timeout(common::TIMEOUT, recorder)
        .await
        .expect("the first bridge's stream ends with it")
        .expect("recorder");
    let second = start_dashboard(&example, http, log_dir.path()).await;
    let same_epoch = format!("{:x}", second.router.epoch());
    assert_eq!(same_epoch, epoch, "a clean restart keeps the log's epoch");
    let restart_took = started.elapsed() - before_restart;
    stdin
        .write_all(b"restarted\n")
        .await
        .expect("tell the script");
    let result = script.line().await;
    let status = tokio::time::timeout_at(deadline, node.wait())
        .await
        .expect("the script exits in time")
        .expect("the script's status");
    let _ = tokio::time::timeout(common::TIMEOUT, &mut script.progress).await;
    assert!(status.success(), "the browser script failed: {status}");
    let result: Value = serde_json::from_str(
        result
            .strip_prefix("result ")
            .unwrap_or_else(|| panic!("expected `result <json>`, got {result:?}")),
    )
    .expect("the result is JSON");
    second.shutdown().await;
    println!(
        "dashboard test: {:.1} s in all, {:.1} s until the restart, restart in {} ms; \
         screenshot at {}",
        started.elapsed().as_secs_f64(),
        before_restart.as_secs_f64(),
        restart_took.as_millis(),
        screenshot.display()
    );

    // The light clicked in the page came back from the driver.
    assert!(
        sent.iter().any(|s| s.event == "light"
            && s.topic.ends_with("/1/state")
            && s.payload.contains(r#""on":true"#)),
        "light 1 never reported on"
    );
    check_nothing_missing(&sent, &result, &epoch);

    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}

/// Every reading the first bridge sent (as the test's client saw it), from
/// its very first one (sent before the page opened: the page filled its
/// charts from the log) to its last, is on the page's charts exactly once,
/// and the page announced no gap across the restart.
fn check_nothing_missing(sent: &[Seen], result: &Value, epoch: &str) {
    assert_eq!(result["gaps"], json!([]), "no gap across the restart");
    let charted: Vec<&str> = result["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .filter(|id| id.starts_with(&format!("{epoch}-")))
        .collect();
    let unique: BTreeSet<u64> = charted.iter().map(|id| seq(id)).collect();
    assert_eq!(unique.len(), charted.len(), "a reading charted twice");
    let first_charted = *unique.first().expect("the page charted live readings");
    let first_sent = sent
        .iter()
        .filter(|s| s.event == "temperature" || s.event == "humidity")
        .map(|s| seq(&s.id))
        .min()
        .expect("the test's client saw readings");
    assert_eq!(
        first_charted, first_sent,
        "the page's charts start with the bridge's first reading, from before the page opened"
    );
    // The page resumed exactly after the restart, so it holds everything
    // the test's client saw of the first bridge.
    let sent_last = sent
        .last()
        .map(|s| seq(&s.id))
        .expect("the test's client saw messages");
    let until = sent_last;
    let expected: BTreeSet<u64> = sent
        .iter()
        .filter(|s| s.event == "temperature" || s.event == "humidity")
        .map(|s| seq(&s.id))
        .filter(|&n| n >= first_charted)
        .collect();
    let compared: BTreeSet<u64> = unique.iter().copied().filter(|&n| n <= until).collect();
    let expected: BTreeSet<u64> = expected.into_iter().filter(|&n| n <= until).collect();
    let missing: Vec<_> = expected.difference(&compared).collect();
    let extra: Vec<_> = compared.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "charted readings differ from the stream: missing seqs {missing:?}, extra {extra:?}"
    );
    assert!(
        compared.len() >= 12,
        "too few readings compared to mean much: {compared:?}"
    );
    println!(
        "dashboard test: {} readings of the first bridge compared (from seq {first_sent:x}, \
         the test's last seq {sent_last:x})",
        compared.len()
    );
}

/// `<target>/<profile>/dashboard/dashboard.png`.
fn screenshot_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let dir = profile.join("dashboard");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir.join("dashboard.png")
}
