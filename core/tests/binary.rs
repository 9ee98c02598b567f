//! End-to-end tests of the real `tidewater` binary: `check`, startup
//! failures that name what to fix, and a clean exit on SIGTERM and SIGINT.
//!
//! Every bridge runs on free loopback ports, in a fresh temporary directory
//! (so no `bridge.toml` is picked up), with its listeners set through
//! `TIDEWATER_` environment variables. A bridge still running when a test
//! ends is killed with SIGKILL by its pid, so nothing outlives the tests.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a bridge may take to answer `GET /healthz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(10);
/// How long a bridge may take to exit after a signal or a startup failure.
const EXIT: Duration = Duration::from_secs(5);

/// A directory under the system's temp dir, unique to this process and call,
/// removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "tidewater-binary-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a temp config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, run in `dir`, with no `TIDEWATER_` variable inherited from
/// the test's own environment.
fn tidewater(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidewater"));
    command.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDEWATER_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `tidewater check` with `args` after it, in a fresh temp dir.
fn check(args: &[&str]) -> Output {
    let dir = TempDir::new("check");
    tidewater(dir.path())
        .arg("check")
        .args(args)
        .output()
        .expect("run tidewater check")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Loopback addresses with ports free at the time of the call: each is bound
/// to port 0, read back and released, all held together so they differ.
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("local address of a bound listener")
    })
}

/// A spawned bridge: killed with SIGKILL by its pid if still running when
/// dropped. Its output goes to files in its temp dir, read on failure.
struct Running {
    child: Child,
    dir: TempDir,
}

impl Running {
    /// Spawns `tidewater` (the `run` default) with its MQTT and HTTP
    /// listeners on `mqtt` and `http`.
    fn spawn(mqtt: SocketAddr, http: SocketAddr) -> Self {
        Self::spawn_with(mqtt, http, false)
    }

    /// Like [`Running::spawn`]; with `closed_stderr`, stderr is a pipe whose
    /// reading end is closed at once, as when a log collector has died.
    fn spawn_with(mqtt: SocketAddr, http: SocketAddr, closed_stderr: bool) -> Self {
        let dir = TempDir::new("run");
        let stdout = File::create(dir.path().join("stdout.log")).expect("create stdout log");
        let stderr = File::create(dir.path().join("stderr.log")).expect("create stderr log");
        let mut command = tidewater(dir.path());
        command
            .env("TIDEWATER_MQTT__LISTEN", mqtt.to_string())
            .env("TIDEWATER_HTTP__LISTEN", http.to_string())
            // Any free port: these tests never connect to it, and several run at once.
            .env("TIDEWATER_WEBSOCKET__LISTEN", "127.0.0.1:0")
            .stdout(stdout);
        if closed_stderr {
            command.stderr(std::process::Stdio::piped());
        } else {
            command.stderr(stderr);
        }
        let mut child = command.spawn().expect("spawn tidewater");
        drop(child.stderr.take());
        Self { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the bridge wrote so far, for assertion messages.
    fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The exit status, if the process ends within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the bridge's exit") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `GET /healthz` on `http` until it answers 200, a bounded number
    /// of times; panics with the bridge's logs if it exits or never does.
    fn wait_healthy(&mut self, http: SocketAddr) {
        let deadline = Instant::now() + STARTUP;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the bridge's exit") {
                panic!(
                    "bridge exited during startup with {status}\n{}",
                    self.logs()
                );
            }
            match http_get(http, "/healthz") {
                Ok((200, body)) => {
                    assert!(body.contains(r#""status":"ok""#), "healthz body: {body}");
                    return;
                }
                Ok((status, body)) => last = format!("status {status}: {body}"),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "GET /healthz on {http} never answered 200 (last: {last})\n{}",
            self.logs()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`: the status code and
/// the body (everything after the blank line).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// Starts a bridge, waits for it to be healthy, sends `signal`, and expects
/// exit status 0 within [`EXIT`].
fn exits_cleanly_on(signal: &str) {
    exits_cleanly_on_with(signal, false);
}

fn exits_cleanly_on_with(signal: &str, closed_stderr: bool) {
    let [mqtt, http] = free_addrs();
    let mut bridge = Running::spawn_with(mqtt, http, closed_stderr);
    bridge.wait_healthy(http);
    send_signal(bridge.pid(), signal);
    match bridge.wait_exit(EXIT) {
        Some(status) => assert!(
            status.success(),
            "SIG{signal} ended the bridge with {status}\n{}",
            bridge.logs()
        ),
        None => panic!(
            "bridge still running {EXIT:?} after SIG{signal}\n{}",
            bridge.logs()
        ),
    }
}

/// Starts a bridge on `mqtt` and `http`, one of which is `busy` (held by the
/// caller), and expects a non-zero exit within [`EXIT`] with a stderr line
/// naming `listener` (`http` or `mqtt`) and the busy address.
fn fails_on_busy_port(listener: &str, mqtt: SocketAddr, http: SocketAddr, busy: SocketAddr) {
    let mut bridge = Running::spawn(mqtt, http);
    let status = bridge
        .wait_exit(EXIT)
        .unwrap_or_else(|| panic!("bridge still running with {busy} taken\n{}", bridge.logs()));
    assert!(
        !status.success(),
        "bridge exited 0 with {busy} taken\n{}",
        bridge.logs()
    );
    let stderr = bridge.stderr();
    let addr = busy.to_string();
    assert!(
        stderr
            .lines()
            .any(|line| line.contains(listener) && line.contains(&addr)),
        "stderr does not name `{listener}` and {addr}:\n{stderr}"
    );
}

/// `check` refuses a file with an unknown key, and stderr names the key.
#[test]
fn check_names_an_unknown_key() {
    let dir = TempDir::new("unknown-key");
    let path = dir.write("bridge.toml", "[http]\nlisten_adress = \"127.0.0.1:1\"\n");
    let output = check(&["--config", path.to_str().expect("utf-8 temp path")]);
    assert!(!output.status.success(), "unknown key accepted");
    let stderr = stderr(&output);
    assert!(stderr.contains("listen_adress"), "{stderr}");
}

/// `check` accepts the shipped `bridge.toml`, exits 0 and prints the
/// effective configuration (every section, with the defaults it documents).
#[test]
fn check_accepts_the_shipped_config_and_prints_it() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge.toml");
    let output = check(&["--config", shipped.to_str().expect("utf-8 manifest path")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "shipped config refused: {}",
        stderr(&output)
    );
    for expected in [
        "[mqtt]",
        "listen = \"0.0.0.0:1883\"",
        "[http]",
        "listen = \"0.0.0.0:8080\"",
        "[sse]",
        "queue_capacity = 8192",
        "[[routes]]",
        "filter = \"home/+/temperature\"",
        "event = \"temperature\"",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    assert!(stderr(&output).contains("configuration is valid"));
}

/// `check` refuses a zero capacity, naming the key.
#[test]
fn check_names_a_zero_capacity() {
    let dir = TempDir::new("zero");
    let path = dir.write("bridge.toml", "[sse]\nqueue_capacity = 0\n");
    let output = check(&["--config", path.to_str().expect("utf-8 temp path")]);
    assert!(!output.status.success(), "zero capacity accepted");
    let stderr = stderr(&output);
    assert!(stderr.contains("sse.queue_capacity"), "{stderr}");
}

/// An explicit `--config` that does not exist is an error naming the path,
/// not a silent fall-back to the defaults.
#[test]
fn check_refuses_a_missing_config_file() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("nonexistent.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let output = check(&["--config", path]);
    assert!(!output.status.success(), "missing file accepted");
    let stderr = stderr(&output);
    assert!(stderr.contains(path), "{stderr}");
}

/// A running bridge exits with status 0 soon after SIGTERM.
#[test]
fn sigterm_stops_the_bridge_with_status_0() {
    exits_cleanly_on("TERM");
}

/// A running bridge exits with status 0 soon after SIGINT (Ctrl-C).
#[test]
fn sigint_stops_the_bridge_with_status_0() {
    exits_cleanly_on("INT");
}

/// A taken HTTP address stops startup with an error naming `http` and it.
#[test]
fn busy_http_port_fails_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let busy = taken.local_addr().expect("local address");
    let [mqtt] = free_addrs();
    fails_on_busy_port("http", mqtt, busy, busy);
    drop(taken); // held until the bridge has exited
}

/// A taken MQTT address stops startup with an error naming `mqtt` and it.
#[test]
fn busy_mqtt_port_fails_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let busy = taken.local_addr().expect("local address");
    let [http] = free_addrs();
    fails_on_busy_port("mqtt", busy, http, busy);
    drop(taken); // held until the bridge has exited
}

/// A closed stderr (a dead log collector) neither kills threads nor blocks
/// shutdown: the bridge keeps serving and SIGTERM still exits with 0.
#[test]
fn closed_stderr_does_not_break_the_bridge() {
    exits_cleanly_on_with("TERM", true);
}

/// Runs `tidewater hash-password` with `input` on its standard input.
fn hash_password(input: &[u8]) -> Output {
    use std::io::Write;
    let dir = TempDir::new("hash");
    let mut child = tidewater(dir.path())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tidewater hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write the password");
    child.wait_with_output().expect("hash-password exits")
}

/// `hash-password` prints, and only prints, an argon2id hash of the
/// password on stdin (one trailing newline dropped) that verifies it; an
/// empty password is refused.
#[test]
fn hash_password_prints_a_verifiable_hash() {
    let output = hash_password(b"correct horse\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let hash = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(tidewater::auth::password::verify(b"correct horse", hash));
    assert!(!tidewater::auth::password::verify(b"correct horse\n", hash));

    let empty = hash_password(b"\n");
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("empty"), "{}", stderr(&empty));
}
