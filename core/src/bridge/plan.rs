//! The startup plan: every listener the bridge opens, decided once from the
//! configuration, with what each one serves and how MQTT reaches the
//! broker; then bound, all of them, before anything starts.
//!
//! Binding every listener first makes a busy or forbidden port fail the
//! start before the log is given to a broker, a plugin runs, or anyone is
//! served; and the plan is the one place that says, for the log at start
//! and for [`Bridge`](super::Bridge)'s addresses, which port is which.

use std::net::{SocketAddr, TcpListener};

use super::StartError;
use crate::config::{Config, MqttConfig};

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serves {
    /// SSE, `POST /publish`, health, metrics, plugins, the dashboard.
    Http,
    /// The JSON WebSocket protocol.
    WebSocket,
    /// MQTT devices, through the gate, carried as given.
    Mqtt(MqttCarrier),
}

/// How MQTT reaches the gate on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MqttCarrier {
    Tcp,
    Tls,
    WebSocket,
    WebSocketTls,
}

/// One listener of the plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Listen {
    /// The configuration key's listener name, as errors and logs name it.
    pub name: &'static str,
    pub addr: SocketAddr,
    pub serves: Serves,
    /// Serves TLS with the bridge's certificate.
    pub tls: bool,
    /// The kernel send buffer of each connection; 0 keeps autotuning.
    pub send_buffer_bytes: usize,
}

/// How MQTT devices reach the embedded broker. Always through the gate
/// (see `crate::gate`), the broker's only door; what differs is whether
/// the gate holds devices to access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MqttPath {
    /// `[auth]` rules are enforced on every CONNECT, SUBSCRIBE, PUBLISH,
    /// will and delivery.
    Enforced,
    /// No rules: the gate still checks MQTT and the limits.
    Open,
}

impl MqttPath {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Enforced => "through the gate, access rules enforced",
            Self::Open => "through the gate, open",
        }
    }
}

/// Everything the bridge will listen on, and how.
#[derive(Debug)]
pub(super) struct Plan {
    pub listeners: Vec<Listen>,
    pub mqtt_path: MqttPath,
    /// The broker's own configuration, behind the gate.
    pub broker: MqttConfig,
}

/// A planned listener, bound (port 0 resolved).
#[derive(Debug)]
pub(super) struct Bound {
    pub listen: Listen,
    pub addr: SocketAddr,
    pub socket: TcpListener,
}

impl Plan {
    /// The plan `config` asks for; `enforced` when `[auth]` has rules in
    /// force.
    pub fn new(config: &Config, enforced: bool) -> Self {
        let mqtt = &config.mqtt;
        let mut listeners = vec![
            Listen {
                name: "http",
                addr: config.http.listen,
                serves: Serves::Http,
                tls: config.http.tls,
                send_buffer_bytes: config.http.send_buffer_bytes,
            },
            Listen {
                name: "websocket",
                addr: config.websocket.listen,
                serves: Serves::WebSocket,
                tls: config.websocket.tls,
                send_buffer_bytes: config.websocket.send_buffer_bytes,
            },
        ];
        let device = |name, addr, carrier, tls| Listen {
            name,
            addr,
            serves: Serves::Mqtt(carrier),
            tls,
            send_buffer_bytes: 0,
        };
        listeners.push(device("mqtt", mqtt.listen, MqttCarrier::Tcp, false));
        if let Some(addr) = mqtt.listen_v5 {
            listeners.push(device("mqtt_v5", addr, MqttCarrier::Tcp, false));
        }
        if let Some(addr) = mqtt.websocket_listen {
            let (carrier, tls) = if mqtt.websocket_tls {
                (MqttCarrier::WebSocketTls, true)
            } else {
                (MqttCarrier::WebSocket, false)
            };
            listeners.push(device("mqtt_websocket", addr, carrier, tls));
        }
        if let Some(addr) = mqtt.tls_listen {
            listeners.push(device("mqtt_tls", addr, MqttCarrier::Tls, true));
        }
        Self {
            listeners,
            mqtt_path: if enforced {
                MqttPath::Enforced
            } else {
                MqttPath::Open
            },
            broker: internal(mqtt),
        }
    }

    /// Whether any listener needs the bridge's certificate.
    pub fn uses_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.tls)
    }

    /// Binds every listener, in plan order; the first that cannot be bound
    /// fails the start, naming it.
    pub fn bind(&self) -> Result<Vec<Bound>, StartError> {
        self.listeners.iter().map(|listen| bind(*listen)).collect()
    }
}

fn bind(listen: Listen) -> Result<Bound, StartError> {
    let error = |source| StartError::Bind {
        listener: listen.name,
        addr: listen.addr,
        source,
    };
    let socket = TcpListener::bind(listen.addr).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    limit_send_buffer(&socket, listen.send_buffer_bytes).map_err(error)?;
    let addr = socket.local_addr().map_err(error)?;
    Ok(Bound {
        listen,
        addr,
        socket,
    })
}

/// Sets the kernel send buffer of every connection `listener` accepts
/// (Linux copies it from the listening socket); 0 keeps autotuning. A fixed
/// size bounds what a client that stops reading holds in the kernel, and
/// lets its queue in the router fill, so it is dropped and counted.
fn limit_send_buffer(listener: &TcpListener, bytes: usize) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    socket2::SockRef::from(listener).set_send_buffer_size(bytes)
}

/// Broker connections that are not devices: the two links and the
/// startup probes, with a margin for a connection rumqttd still tears down.
const BROKER_OWN_CONNECTIONS: usize = 16;

/// A loopback port chosen by the system: where rumqttd listens for the gate.
const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The broker's configuration behind the gate: its MQTT 3.1.1 and 5
/// listeners on loopback ports only the gate and the startup probe use
/// (MQTT 5 even when `mqtt.listen_v5` is unset, so every public port takes
/// both versions), and no WebSocket listener of its own. Its connection
/// limit leaves room above the gate's for the bridge's own links and the
/// startup probes, so the gate, not rumqttd, is where a device is refused.
fn internal(config: &MqttConfig) -> MqttConfig {
    let loopback = LOOPBACK_ANY_PORT;
    MqttConfig {
        max_connections: config
            .max_connections
            .saturating_add(BROKER_OWN_CONNECTIONS),
        listen: loopback,
        listen_v5: Some(loopback),
        websocket_listen: None,
        tls_listen: None,
        ..config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults: HTTP, WebSocket and one MQTT port, open; the broker
    /// itself only on loopback, with both MQTT versions.
    #[test]
    fn the_default_plan_serves_three_ports_and_hides_the_broker() {
        let plan = Plan::new(&Config::default(), false);
        let serves: Vec<_> = plan.listeners.iter().map(|l| l.serves).collect();
        assert_eq!(
            serves,
            [
                Serves::Http,
                Serves::WebSocket,
                Serves::Mqtt(MqttCarrier::Tcp)
            ]
        );
        assert_eq!(plan.mqtt_path, MqttPath::Open);
        assert!(!plan.uses_tls());
        assert!(plan.broker.listen.ip().is_loopback());
        assert!(plan.broker.listen_v5.is_some());
        assert!(plan.broker.websocket_listen.is_none());
        assert!(plan.broker.max_connections > Config::default().mqtt.max_connections);
    }

    /// MQTT over `wss://` and over TLS are the gate's, with the certificate.
    #[test]
    fn tls_listeners_are_planned_with_the_certificate() {
        let mut config = Config::default();
        config.mqtt.websocket_listen = Some(LOOPBACK_ANY_PORT);
        config.mqtt.websocket_tls = true;
        config.mqtt.tls_listen = Some(LOOPBACK_ANY_PORT);
        let plan = Plan::new(&config, true);
        let mqtt: Vec<_> = plan
            .listeners
            .iter()
            .filter(|l| matches!(l.serves, Serves::Mqtt(_)))
            .map(|l| (l.name, l.serves, l.tls))
            .collect();
        assert_eq!(
            mqtt,
            [
                ("mqtt", Serves::Mqtt(MqttCarrier::Tcp), false),
                (
                    "mqtt_websocket",
                    Serves::Mqtt(MqttCarrier::WebSocketTls),
                    true
                ),
                ("mqtt_tls", Serves::Mqtt(MqttCarrier::Tls), true),
            ]
        );
        assert!(plan.uses_tls());
        assert_eq!(plan.mqtt_path, MqttPath::Enforced);
    }

    /// A port already taken fails the bind, naming the listener.
    #[test]
    fn a_busy_port_names_its_listener() {
        let taken = TcpListener::bind(LOOPBACK_ANY_PORT).expect("bind");
        let mut config = Config::default();
        config.http.listen = LOOPBACK_ANY_PORT;
        config.websocket.listen = LOOPBACK_ANY_PORT;
        config.mqtt.listen = taken.local_addr().expect("addr");
        let error = Plan::new(&config, false).bind().expect_err("port taken");
        assert!(
            matches!(
                error,
                StartError::Bind {
                    listener: "mqtt",
                    ..
                }
            ),
            "{error}"
        );
    }
}
