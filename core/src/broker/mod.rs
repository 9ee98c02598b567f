//! The embedded MQTT broker (rumqttd) and the two local links that join it
//! to the router.
//!
//! rumqttd runs on its own threads. Its local links use blocking channels,
//! so each link gets a dedicated thread and no tokio worker ever blocks on
//! the broker:
//! - **egress** ([`egress`]) subscribes to `#` and feeds every message to
//!   [`Router::dispatch`], in the broker's order;
//! - **ingress** ([`ingress`]) only publishes, for web clients and plugins,
//!   confirms a publish once the broker has it, and gives the broker back
//!   the log's retained values at start. Its queue is fed by the handle,
//!   [`Broker`], the one way into the broker (see `handle`).
//!
//! Web subscribers get their retained values from the log's store, not the
//! broker's (see `crate::log`): exact at the position they subscribe at.
//!
//! The listeners bind loopback ports behind the MQTT gate ([`crate::gate`])
//! instead of the configured addresses, on every bridge, and admit only the
//! gate: rumqttd's `external_auth` hook, its one hook, asks [`MqttAuth`],
//! which wants the gate's per-start secret on every CONNECT (the gate has
//! checked the device's own password by then). The hook has nothing for
//! SUBSCRIBE or PUBLISH, which is why the gate exists. Every topic and
//! client id crosses into the broker in the form [`name`] gives it.

pub mod census;
mod egress;
mod handle;
pub mod health;
mod ingress;
pub mod name;
mod publish;
pub mod stamp;

pub use handle::{Broker, BrokerSettings};
pub use ingress::IngressRequest;
pub use publish::PublishError;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::health::BrokerHealth;
use crate::auth::password::MqttAuth;
use crate::config::MqttConfig;
use crate::router::Router;

/// The addresses the broker's listeners are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerAddrs {
    pub mqtt: SocketAddr,
    pub mqtt_v5: Option<SocketAddr>,
    pub mqtt_ws: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{listener} listener cannot bind {addr}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{listener} listener on {addr} did not start accepting connections")]
    NotListening {
        listener: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot open the broker's `{link}` link: {reason}")]
    Link { link: &'static str, reason: String },
    #[error("cannot start the `{0}` thread: {1}")]
    Thread(&'static str, io::Error),
}

/// Starts the broker and its links, feeding `router` (and, through it, its
/// log) with everything the broker routes, and returns the handle that is
/// the one way in. `ingress_capacity` bounds the publishes queued for the
/// broker (`http.ingress_capacity`). The broker's threads run for the rest
/// of the process: rumqttd 0.20 has no way to stop them.
pub fn start(
    config: &MqttConfig,
    settings: BrokerSettings,
    auth: &Arc<MqttAuth>,
    router: &Router,
    ingress_capacity: usize,
) -> Result<Broker, BrokerError> {
    let health = BrokerHealth::new();
    let (ingress, requests) = mpsc::channel(ingress_capacity);
    // Held until all are reserved, so no two get the same port.
    let mut held = Vec::new();
    let mut hold = |listener, addr| {
        reserve(listener, addr).map(|(addr, bound)| {
            held.push(bound);
            addr
        })
    };
    let addrs = BrokerAddrs {
        mqtt: hold("mqtt", config.listen)?,
        mqtt_v5: config.listen_v5.map(|a| hold("mqtt_v5", a)).transpose()?,
        mqtt_ws: config
            .websocket_listen
            .map(|a| hold("mqtt_websocket", a))
            .transpose()?,
    };
    drop(held);
    let mut broker = rumqttd::Broker::new(rumqttd_config(config, auth, &addrs));

    let link = |name: &'static str| {
        broker
            .link(&format!("tidewater-{name}"))
            .map_err(|e| BrokerError::Link {
                link: name,
                reason: e.to_string(),
            })
    };
    let (egress_tx, egress_rx) = link("egress")?;
    let (ingress_tx, ingress_rx) = link("ingress")?;

    egress::spawn(egress_tx, egress_rx, router.clone(), health.clone())?;
    ingress::spawn(
        ingress_tx,
        ingress_rx,
        requests,
        router.stats().clone(),
        health.clone(),
    )?;

    let broker_health = health.clone();
    thread::Builder::new()
        .name("tidewater-broker".into())
        .spawn(move || {
            let cause = match broker.start() {
                Ok(()) => "the embedded broker's thread returned".to_owned(),
                Err(e) => format!("the embedded broker stopped: {e}"),
            };
            broker_health.fail(cause);
        })
        .map_err(|e| BrokerError::Thread("broker", e))?;

    let login = auth.broker_login();
    wait_listening("mqtt", addrs.mqtt, false, login)?;
    if let Some(addr) = addrs.mqtt_v5 {
        wait_listening("mqtt_v5", addr, true, login)?;
    }
    if let Some(addr) = addrs.mqtt_ws {
        wait_accepting("mqtt_websocket", addr)?;
    }
    let login = (login.0.to_owned(), login.1.to_owned());
    Ok(Broker::new(
        settings,
        (router.stats().clone(), router.log().clone()),
        ingress,
        (health, addrs, login),
    ))
}

/// Checks that `addr` can be bound, and resolves port 0 to a free port,
/// because rumqttd binds inside its own thread and only logs a failure.
///
/// The port is released again before rumqttd binds it. A port the system
/// picks for port 0 comes from its ephemeral range, which every outgoing
/// connection draws its local port from too: one of those could take it in
/// between (under a load of short connections it did, now and then). So
/// port 0 is resolved below that range first ([`INTERNAL_PORTS`]), where
/// only a listener bound to that very port could collide.
fn reserve(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(SocketAddr, TcpListener), BrokerError> {
    if addr.port() == 0 {
        let start = u32::from(internal_port_seed());
        let span = u32::from(INTERNAL_PORTS.end - INTERNAL_PORTS.start);
        for attempt in 0..u32::from(INTERNAL_PORT_ATTEMPTS) {
            let offset = (start + attempt * 7_919) % span;
            let port = INTERNAL_PORTS.start + u16::try_from(offset).unwrap_or(0);
            let candidate = SocketAddr::new(addr.ip(), port);
            if let Ok(bound) = TcpListener::bind(candidate) {
                if let Ok(local) = bound.local_addr() {
                    return Ok((local, bound));
                }
            }
        }
    }
    let bound = TcpListener::bind(addr).map_err(|source| BrokerError::Bind {
        listener,
        addr,
        source,
    })?;
    let local = bound.local_addr().map_err(|source| BrokerError::Bind {
        listener,
        addr,
        source,
    })?;
    Ok((local, bound))
}

/// Where the broker's internal ports are picked: below Linux's default
/// ephemeral range (32768-60999) and above the common fixed services.
const INTERNAL_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Ports tried in [`INTERNAL_PORTS`] before falling back to the system's
/// choice.
const INTERNAL_PORT_ATTEMPTS: u16 = 32;

/// A different starting point in [`INTERNAL_PORTS`] for each call, so
/// bridges starting at once (tests) do not try the same ports.
fn internal_port_seed() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    (hasher.finish() % u64::from(INTERNAL_PORTS.end - INTERNAL_PORTS.start)) as u16
}

/// Waits until rumqttd answers an MQTT CONNECT on `addr`. The probe is a
/// well-behaved client (CONNECT, CONNACK, DISCONNECT), so the broker logs
/// nothing alarming, and it proves the listener is rumqttd's and not
/// whatever might have taken the port after [`reserve`] released it.
fn wait_listening(
    listener: &'static str,
    addr: SocketAddr,
    v5: bool,
    login: (&str, &str),
) -> Result<(), BrokerError> {
    let probe = loopback(addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if probe_connect(probe, v5, login, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { listener, addr })
}

/// Waits until something accepts TCP connections on `addr` (the MQTT over
/// WebSocket listener, which a raw MQTT probe cannot talk to).
fn wait_accepting(listener: &'static str, addr: SocketAddr) -> Result<(), BrokerError> {
    let probe = loopback(addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { listener, addr })
}

/// `addr` with an unspecified IP replaced by loopback, for connecting.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    probe
}

/// One MQTT session: CONNECT (keep-alive 10 s, with the gate's login),
/// expect a successful CONNACK within `timeout`, DISCONNECT.
fn probe_connect(
    addr: SocketAddr,
    v5: bool,
    login: (&str, &str),
    timeout: Duration,
) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200).max(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    // A fresh client id per attempt: rumqttd 0.20's MQTT 5 handler panics
    // when a new connection takes over the id of one it is still tearing
    // down, and then refuses every later connection on that listener.
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client_id = format!("tidewater-probe-{}-{attempt}", std::process::id());
    let client_id = client_id.as_str();
    // Clean session, username and password.
    let flags = 0xc2;
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        if v5 { 5 } else { 4 },
        flags,
        0,
        10,
    ];
    if v5 {
        body.push(0); // no CONNECT properties
    }
    let mut string = |s: &str| {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    };
    string(client_id);
    string(login.0);
    string(login.1);
    let mut packet = vec![0x10];
    crate::gate::packet::put_varint(&mut packet, body.len());
    packet.extend(body);
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(io::Error::other("unexpected answer to CONNECT"));
    }
    let disconnect: &[u8] = if v5 {
        &[0xe0, 0x01, 0x00]
    } else {
        &[0xe0, 0x00]
    };
    stream.write_all(disconnect)
}

fn rumqttd_config(
    config: &MqttConfig,
    auth: &Arc<MqttAuth>,
    addrs: &BrokerAddrs,
) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: config.connection_timeout_ms,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: config.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    // The broker admits the gate alone: every connection must carry the
    // per-start secret only the gate knows (see `auth::password`), so a
    // local process that finds these loopback ports still cannot log in.
    let auth = auth.clone();
    connections.set_auth_handler(move |_client_id, username, password| {
        let admitted = auth.broker_admits(&username, &password);
        if !admitted {
            tracing::warn!(
                username,
                "The embedded broker refused a CONNECT that did not come from the gate."
            );
        }
        std::future::ready(admitted)
    });
    let server = |name: &str, listen: SocketAddr| {
        HashMap::from([(
            name.to_owned(),
            rumqttd::ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
        )])
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: config.max_retained,
            max_segment_size: config.log_segment_bytes,
            max_segment_count: config.log_segment_count,
            ..Default::default()
        },
        v4: Some(server("mqtt-v4", addrs.mqtt)),
        v5: addrs.mqtt_v5.map(|addr| server("mqtt-v5", addr)),
        ws: addrs.mqtt_ws.map(|addr| server("mqtt-ws", addr)),
        ..Default::default()
    }
}
