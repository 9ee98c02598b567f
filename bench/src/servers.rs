//! The systems under test, each started as a child process pinned to the
//! server core: Tidewater's release binary, the bare rumqttd of this
//! workspace (`bench-rumqttd`), Mosquitto, and nginx with Nchan.
//!
//! Every server listens on loopback ports picked free at start, writes its
//! configuration and logs into its own temporary directory, and is stopped
//! with SIGTERM (then SIGKILL) by its process id when the scenario ends.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::procstat::{self, Usage};

const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum System {
    Tidewater,
    Rumqttd,
    Mosquitto,
    Nchan,
}

impl System {
    /// What to install or build when this system cannot be started.
    pub fn missing(self, launch: &Launch) -> Option<String> {
        let exists = |p: &Path| p.exists();
        match self {
            System::Tidewater if !exists(&launch.tidewater) => Some(format!(
                "no binary at {} (cargo build --release -p tidewater)",
                launch.tidewater.display()
            )),
            System::Rumqttd if !exists(&launch.rumqttd) => Some(format!(
                "no binary at {} (cargo build --release -p bench)",
                launch.rumqttd.display()
            )),
            System::Mosquitto if which("mosquitto").is_none() => {
                Some("not installed (apt-get install mosquitto)".into())
            }
            System::Nchan if which("nginx").is_none() || !Path::new(NCHAN_MODULE).exists() => {
                Some("not installed (apt-get install nginx libnginx-mod-nchan)".into())
            }
            _ => None,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Tidewater => "Tidewater",
            System::Rumqttd => "rumqttd",
            System::Mosquitto => "Mosquitto",
            System::Nchan => "Nchan",
        })
    }
}

/// How to start servers.
#[derive(Debug, Clone)]
pub struct Launch {
    pub tidewater: PathBuf,
    pub rumqttd: PathBuf,
    /// The core servers are pinned to; `None` runs them unpinned.
    pub server_cpu: Option<usize>,
    /// TOML appended to Tidewater's configuration (`--tidewater-config`).
    pub tidewater_extra: String,
}

/// Where a running server listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addrs {
    pub mqtt: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
}

#[derive(Debug)]
pub struct Server {
    pub system: System,
    pub addrs: Addrs,
    /// The core the server is pinned to, if any.
    pub cpu: Option<usize>,
    child: Child,
    pid: u32,
    dir: PathBuf,
}

impl Server {
    /// Starts `system` and waits until every listener accepts connections.
    pub async fn start(system: System, launch: &Launch) -> anyhow::Result<Self> {
        Self::start_tuned(system, launch, "").await
    }

    /// As [`Server::start`], with `tidewater_toml` appended to Tidewater's
    /// configuration (other systems ignore it): for a scenario that
    /// measures a documented tuning rather than the defaults.
    pub async fn start_tuned(
        system: System,
        launch: &Launch,
        tidewater_toml: &str,
    ) -> anyhow::Result<Self> {
        if let Some(missing) = system.missing(launch) {
            bail!("{system}: {missing}");
        }
        let dir = temp_dir(system)?;
        let (program, args, addrs) = match system {
            System::Tidewater => tidewater(launch, &dir, tidewater_toml)?,
            System::Rumqttd => {
                let mqtt = free_port()?;
                let args = vec!["--listen".into(), mqtt.to_string()];
                let addrs = Addrs {
                    mqtt: Some(mqtt),
                    ..Addrs::default()
                };
                (launch.rumqttd.display().to_string(), args, addrs)
            }
            System::Mosquitto => mosquitto(&dir)?,
            System::Nchan => nchan(&dir)?,
        };
        // Through a shell so the server gets the highest file-descriptor
        // limit allowed and is pinned before it starts any thread.
        let mut script = String::from("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec");
        if let Some(cpu) = launch.server_cpu {
            script.push_str(&format!(" taskset -c {cpu}"));
        }
        script.push_str(" \"$@\"");
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&program)
            .args(&args)
            .env("RUST_LOG", "warn,rumqttd=off")
            // Tidewater keeps its log in ./data: in this server's own
            // directory, removed when it stops.
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let pid = child.id().context("server exited at once")?;
        let mut server = Self {
            system,
            addrs,
            cpu: launch.server_cpu,
            child,
            pid,
            dir,
        };
        if let Err(e) = server.wait_ready().await {
            let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default();
            server.stop().await;
            bail!("{system} did not start: {e:#}\n{log}");
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let ports = [self.addrs.mqtt, self.addrs.http, self.addrs.ws];
        for addr in ports.into_iter().flatten() {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    bail!("exited with {status}");
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("{addr} not accepting connections after {READY_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// CPU time and resident memory of the server's processes now.
    pub fn usage(&self) -> Usage {
        procstat::tree(self.pid)
    }

    /// Tidewater's `/healthz` counters (`None` for other systems).
    pub async fn stats(&self) -> Option<serde_json::Value> {
        if self.system != System::Tidewater {
            return None;
        }
        let addr = self.addrs.http?;
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .map(|v| v["stats"].clone())
    }

    /// A counter from Tidewater's `/healthz`, 0 if unavailable.
    pub async fn stat(&self, name: &str) -> u64 {
        self.stats()
            .await
            .and_then(|s| s[name].as_u64())
            .unwrap_or(0)
    }

    /// Stops the server (SIGTERM, then SIGKILL) and removes its directory.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Spawn = (String, Vec<String>, Addrs);

fn tidewater(launch: &Launch, dir: &Path, extra_toml: &str) -> anyhow::Result<Spawn> {
    let addrs = Addrs {
        mqtt: Some(free_port()?),
        http: Some(free_port()?),
        ws: Some(free_port()?),
    };
    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    // One HTTP worker: the server has one core. The load clients carry no
    // credentials, so anonymous access is on, as in the shipped bridge.toml.
    // S6 posts everything from one address, as a trusted backend would: the
    // per-client publish rate (a guard against one abusive client) is off.
    let config = format!(
        "[mqtt]\nlisten = \"{}\"\nmax_connections = 20000\n\n\
         [http]\nlisten = \"{}\"\nworkers = 1\n\n\
         [websocket]\nlisten = \"{}\"\n\n\
         [auth]\nanonymous_web = true\nanonymous_mqtt = true\n\n\
         [limits]\npublish_rate = 0\n\n{extra_toml}\n{}",
        show(addrs.mqtt),
        show(addrs.http),
        show(addrs.ws),
        launch.tidewater_extra
    );
    let path = dir.join("bridge.toml");
    std::fs::write(&path, config)?;
    let args = vec!["--config".into(), path.display().to_string()];
    Ok((launch.tidewater.display().to_string(), args, addrs))
}

fn mosquitto(dir: &Path) -> anyhow::Result<Spawn> {
    let mqtt = free_port()?;
    let config = format!(
        "listener {} {}\nallow_anonymous true\nmax_connections -1\npersistence false\n\
         log_dest stderr\nlog_type error\nlog_type warning\nset_tcp_nodelay true\n",
        mqtt.port(),
        mqtt.ip()
    );
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, config)?;
    let program = which("mosquitto").context("mosquitto not found")?;
    let args = vec!["-c".into(), path.display().to_string()];
    let addrs = Addrs {
        mqtt: Some(mqtt),
        ..Addrs::default()
    };
    Ok((program.display().to_string(), args, addrs))
}

fn nchan(dir: &Path) -> anyhow::Result<Spawn> {
    let http = free_port()?;
    let d = dir.display();
    // One worker on one core; every Nchan default kept except that a new
    // subscriber starts at the newest message (like Tidewater, live only)
    // and the per-channel buffer is small, as a replay ring would be.
    let config = format!(
        r#"load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 600s;
  nchan_shared_memory_size 256m;
  server {{
    listen {http} backlog=4096;
    location ~ ^/pub/(.+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 16;
      nchan_message_timeout 60s;
    }}
    location ~ ^/sub/(.+)$ {{
      nchan_subscriber;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
    }}
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config)?;
    let program = which("nginx").context("nginx not found")?;
    let args = vec![
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        format!("{d}/error.log"),
        "-c".into(),
        path.display().to_string(),
    ];
    let addrs = Addrs {
        http: Some(http),
        ..Addrs::default()
    };
    Ok((program.display().to_string(), args, addrs))
}

/// A loopback port free now (the server binds it a moment later).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn temp_dir(system: System) -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "tidewater-bench-{}-{n}-{}",
        std::process::id(),
        system.to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The path of `program` on `PATH` or in the sbin directories.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file());
    found
}
