//! The bridge's configuration: every key, its default, and the rules a value
//! must obey.
//!
//! Values are layered by figment (see [`load`]): built-in defaults, then the
//! TOML file, then `TIDEWATER_`-prefixed environment variables. Each section is
//! a struct with `deny_unknown_fields`, so a misspelt key is a startup error
//! that names it instead of a setting silently ignored. Rules serde cannot
//! express (no zero capacities, valid filters) live in [`Config::validate`].

mod load;
mod security;

pub use load::{from_toml_str, load, ConfigError, ConfigSource, DEFAULT_PATH};
pub use security::{AclRuleConfig, AuthConfig, JwtConfig, LimitsConfig, TlsConfig, UserConfig};

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topic;

/// The whole configuration, one field per `bridge.toml` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub sse: SseConfig,
    pub websocket: WebSocketConfig,
    pub routes: Vec<Route>,
    pub plugins: Vec<PluginConfig>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    /// `[log]`: the log beneath the router (see `crate::log`).
    pub log: crate::log::LogConfig,
    /// `[presence]`: devices' online state as retained messages.
    pub presence: PresenceConfig,
}

/// `[presence]`: each MQTT device's state, published by the bridge on
/// `$tidewater/presence/<client id>` (see `crate::presence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub enabled: bool,
    /// Devices (distinct client ids) whose presence is kept; a device past
    /// it gets none (counted). Each is a retained topic the broker keeps
    /// for good, so this is presence's share of `mqtt.max_topics`, and it
    /// bounds what devices with ever-new client ids can take.
    pub max_devices: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_devices: 10_000,
        }
    }
}

/// `[mqtt]`: the embedded broker, and the MQTT gate in front of it (which
/// serves these addresses whenever access rules are enforced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// MQTT 3.1.1 listener (and MQTT 5 behind the gate).
    pub listen: SocketAddr,
    /// MQTT 5 listener (3.1.1 too); off when absent. Always served by the
    /// gate, which keeps packets that crash rumqttd 0.20's MQTT 5 reader
    /// away from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_v5: Option<SocketAddr>,
    /// MQTT over WebSocket (subprotocol `mqtt`; MQTT 3.1.1, and 5 behind
    /// the gate) for browser MQTT clients; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_listen: Option<SocketAddr>,
    /// Serve `wss://` on `websocket_listen` with the `[tls]` certificate,
    /// always through the gate.
    pub websocket_tls: bool,
    /// MQTT over TLS (the `[tls]` certificate), always through the gate;
    /// off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Topic filters one MQTT connection may hold; past it a SUBSCRIBE
    /// gets a failure code for the extra filters (counted). Enforced by
    /// the gate, so on the listeners it serves.
    pub max_subscriptions: usize,
    /// Largest PUBLISH payload a device may send, in bytes.
    pub max_payload_bytes: usize,
    /// Device connections at once, over every MQTT listener together (the
    /// gate's limit; the broker's own is set a little above it).
    pub max_connections: usize,
    /// How long a new connection has to send CONNECT, in milliseconds.
    pub connection_timeout_ms: u16,
    /// CONNECTs waiting for a password check at once; past it a CONNECT is
    /// refused as "server busy" (counted). Protects the CPU and memory a
    /// flood of logins would take (each argon2 check is slow on purpose).
    pub max_pending_logins: usize,
    /// Of those, how many one address (an IPv6 /64) may have waiting;
    /// past it its next CONNECT is refused as "server busy" (counted), so
    /// a flood of logins from one place cannot delay devices elsewhere.
    pub max_pending_logins_per_address: usize,
    /// Device connect and disconnect events a listener (presence, the log)
    /// may fall behind by before it loses the oldest (counted). Protects
    /// memory from a listener that stalls while devices come and go.
    pub device_events_capacity: usize,
    /// Longest topic or filter a device, web client or plugin may use, in
    /// bytes (MQTT allows 65,535). The broker keeps every topic it is given
    /// forever, so this and `max_topics` bound what names cost it.
    pub max_topic_bytes: usize,
    /// Most levels in a topic or filter, from any entry point, as
    /// `max_topic_bytes` is (MQTT counts empty ones: `a//b` has three).
    /// Each level of a filter is a node in the router's and the broker's
    /// indexes, so this bounds what one filter costs whatever its bytes.
    pub max_topic_levels: usize,
    /// Distinct topics the broker may hold; past it a publish on a new
    /// topic is refused (MQTT 5: 0x97 quota exceeded; counted), and known
    /// topics go on working. rumqttd keeps a log per topic, forever.
    pub max_topics: usize,
    /// Distinct subscription filters the broker may hold, the same way.
    pub max_filters: usize,
    /// Unacknowledged QoS 1/2 messages in flight per device.
    pub max_inflight: usize,
    /// Most retained messages one subscription can receive. rumqttd reads at
    /// most this many messages per scheduling round for any connection.
    pub max_retained: u64,
    /// Size of one segment of the broker's in-memory message log, in bytes.
    pub log_segment_bytes: usize,
    /// Segments kept per subscribed filter; with `log_segment_bytes` this
    /// bounds the broker's memory.
    pub log_segment_count: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            listen_v5: None,
            websocket_listen: None,
            websocket_tls: false,
            tls_listen: None,
            max_subscriptions: 256,
            max_payload_bytes: 256 * 1024,
            max_connections: 10_000,
            connection_timeout_ms: 5_000,
            max_pending_logins: 256,
            max_pending_logins_per_address: 8,
            device_events_capacity: 4_096,
            max_topic_bytes: 1_024,
            max_topic_levels: 32,
            max_topics: 100_000,
            max_filters: 100_000,
            max_inflight: 100,
            max_retained: 10_000,
            log_segment_bytes: 4 * 1024 * 1024,
            log_segment_count: 4,
        }
    }
}

/// `[http]`: SSE streams, HTTP publish and the health endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Serve HTTPS with the `[tls]` certificate instead of plain HTTP.
    pub tls: bool,
    /// Origins allowed to call the API from a browser; `["*"]` allows any.
    pub cors_allowed_origins: Vec<String>,
    /// Let those origins send credentials (cookies, `Authorization`); the
    /// origins must then be exact, never `*`.
    pub cors_allow_credentials: bool,
    /// Largest `POST /publish` body, in bytes.
    pub max_publish_bytes: usize,
    /// How long a `POST /publish` body may take to arrive, from the end of
    /// its headers; a slower one is cut with 408 (counted), so a client
    /// trickling a byte at a time cannot hold a connection and its buffer.
    pub body_timeout_secs: u64,
    /// Body bytes all `POST /publish` requests may be receiving at once
    /// (each reserves its `Content-Length`, or `max_publish_bytes` when it
    /// has none); past it a request gets 503 `busy` at once (counted).
    /// Bounds the memory half-sent bodies hold.
    pub max_body_bytes_in_flight: usize,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Publishes waiting to enter the broker; when full, `POST /publish`
    /// answers 503 instead of queueing without bound.
    pub ingress_capacity: usize,
    /// Kernel send buffer of each HTTP connection's socket, in bytes (Linux
    /// doubles it for bookkeeping); 0 leaves the kernel's autotuning, which
    /// lets a stalled SSE reader hold megabytes before its queue even starts
    /// to fill. Small keeps what a stalled reader holds small and gets it
    /// dropped sooner; raise it for fast streams over long round trips.
    pub send_buffer_bytes: usize,
    /// A directory served as static files at `/` (e.g. the dashboard);
    /// relative to the working directory. Off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_dir: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: false,
            cors_allowed_origins: Vec::new(),
            cors_allow_credentials: false,
            max_publish_bytes: 256 * 1024,
            body_timeout_secs: 10,
            max_body_bytes_in_flight: 32 * 1024 * 1024,
            workers: 0,
            ingress_capacity: 4_096,
            send_buffer_bytes: 64 * 1024,
            static_dir: None,
        }
    }
}

/// `[sse]`: Server-Sent Event streams and the replay history they resume from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// Reconnection delay sent to browsers in the `retry:` line.
    pub retry_ms: u64,
    /// Idle time after which a comment line keeps the connection open.
    pub heartbeat_secs: u64,
    /// Messages queued per stream; a stream that falls this far behind is
    /// ended (and counted) so the client reconnects and replays.
    pub queue_capacity: usize,
    /// Topic and payload bytes queued per stream; past this the stream is
    /// ended the same way, so large messages cannot pile up either.
    pub queue_max_bytes: usize,
    /// Messages kept for `Last-Event-ID` resume.
    pub replay_capacity: usize,
    /// Payload bytes kept for resume; the oldest go first past this.
    pub replay_max_bytes: usize,
    /// Messages of the whole stream a `since` (SSE, WebSocket) may reach
    /// back; a time further back is refused with 400 `replay-too-long`.
    /// Bounds the log reading one request can ask for.
    pub max_replay: usize,
    /// Topic filters one stream may ask for.
    pub max_filters: usize,
    /// Longest topic filter accepted, in bytes (at most
    /// `mqtt.max_topic_bytes`, which applies as well).
    pub max_filter_bytes: usize,
    /// What one stream's filters may cost the router, in bytes: twice a
    /// filter's length plus 640 per level (what a trie node costs where
    /// no other subscriber shares it). Bounds a stream's share of memory
    /// whatever mix of filters it asks for; see the memory budget in
    /// `bridge.toml`.
    pub filter_budget_bytes: usize,
    /// Streams open at once; past this a new one gets 503.
    pub max_streams: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            retry_ms: 2_000,
            heartbeat_secs: 15,
            queue_capacity: 8_192,
            queue_max_bytes: 256 * 1024,
            replay_capacity: 10_000,
            replay_max_bytes: 16 * 1024 * 1024,
            max_replay: 100_000,
            max_filters: 16,
            max_filter_bytes: 1_024,
            // 16 filters of four levels (`home/kitchen/light/1`) fit.
            filter_budget_bytes: 48 * 1024,
            max_streams: 10_000,
        }
    }
}

/// `[websocket]`: JSON-over-WebSocket sessions, both directions on one
/// connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub listen: SocketAddr,
    /// Serve `wss://` with the `[tls]` certificate instead of `ws://`.
    pub tls: bool,
    /// Sessions open at once; past this an upgrade gets 503. A slot is
    /// taken once the client has proved who it is, so connections that
    /// never do cannot keep a real client out.
    pub max_connections: usize,
    /// Connections still in their upgrade request (no credentials checked
    /// yet) at once; past this the oldest of them is dropped to make room
    /// (counted), so a client sending half a request on every slot holds
    /// nobody out: a real upgrade takes milliseconds, theirs never ends.
    pub max_handshakes: usize,
    /// How long a connection has to send its whole upgrade request.
    pub handshake_timeout_secs: u64,
    /// The only path upgraded to a WebSocket; others get 404.
    pub path: String,
    /// Largest frame or message a client may send, in bytes; larger closes
    /// the session with 1009.
    pub max_message_bytes: usize,
    /// Messages queued per session; a session this far behind is closed
    /// with 1013 (counted) and resumes with `since`.
    pub queue_capacity: usize,
    /// Topic and payload bytes queued per session; past this it is closed
    /// the same way.
    pub queue_max_bytes: usize,
    /// Kernel send buffer of each session's socket, in bytes (Linux
    /// doubles it for bookkeeping); 0 leaves the kernel's autotuning, which
    /// lets a stalled client hold megabytes. Small keeps what a stalled
    /// client holds small and gets it closed sooner.
    pub send_buffer_bytes: usize,
    /// Topic filters one session may hold.
    pub max_filters: usize,
    /// What one session's filters may cost the router, in bytes, counted
    /// as for `sse.filter_budget_bytes`.
    pub filter_budget_bytes: usize,
    /// A WebSocket ping is sent this often.
    pub ping_interval_secs: u64,
    /// A session that sends nothing (not even a pong) for this long is
    /// closed; also the longest a write may wait on a client.
    pub idle_timeout_secs: u64,
    /// Origins allowed to open a session; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Bytes of outgoing frames gathered before a socket write.
    pub write_buffer_bytes: usize,
    /// Bytes read from the socket at a time. Every idle session holds
    /// this much (its first page touched); clients send small requests, so
    /// 2 KiB keeps an idle session near 7.5 KiB (measured in BENCHMARKS.md;
    /// 4 KiB cost 2 KiB more) and a large publish just takes more reads.
    pub read_buffer_bytes: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            tls: false,
            max_connections: 10_000,
            max_handshakes: 256,
            handshake_timeout_secs: 5,
            path: "/ws".into(),
            max_message_bytes: 64 * 1024,
            queue_capacity: 8_192,
            queue_max_bytes: 256 * 1024,
            send_buffer_bytes: 64 * 1024,
            max_filters: 64,
            // 64 filters of four levels fit.
            filter_budget_bytes: 176 * 1024,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            allowed_origins: Vec::new(),
            write_buffer_bytes: 16 * 1024,
            read_buffer_bytes: 2 * 1024,
        }
    }
}

/// `[[routes]]`: the SSE event name for topics matching a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub filter: String,
    pub event: String,
}

/// `[[plugins]]`: a device-driver plugin library loaded at startup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name: in logs, `GET /plugins`, its thread (`plugin-<name>`)
    /// and its principal. Letters, digits, `-` and `_`, at most 64.
    pub name: String,
    /// The shared library (`.so`); a relative path is relative to the
    /// working directory.
    pub path: PathBuf,
    /// A required plugin that fails to load stops startup; an optional one
    /// is reported (log and `GET /plugins`) and skipped.
    #[serde(default = "required_default")]
    pub required: bool,
    /// Messages queued for the plugin. A plugin that falls this far behind
    /// is re-subscribed from its last message, replaying from the ring.
    #[serde(default = "inbox_default")]
    pub inbox_capacity: usize,
    /// Passed to the plugin's `create` as a JSON object.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

fn required_default() -> bool {
    true
}

fn inbox_default() -> usize {
    1_024
}

/// Longest plugin name: it becomes part of a thread name and log fields.
pub const MAX_PLUGIN_NAME: usize = 64;

impl Config {
    /// The limits every entry point applies to topics and filters.
    pub fn topic_limits(&self) -> crate::topic::Limits {
        crate::topic::Limits {
            max_bytes: self.mqtt.max_topic_bytes,
            max_levels: self.mqtt.max_topic_levels,
        }
    }

    /// Checks what types alone cannot: capacities above zero, valid filters,
    /// event names that fit on an SSE line. The error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ws = &self.websocket;
        let positive: [(&str, u64); 48] = [
            ("log.segment_bytes", self.log.segment_bytes),
            ("log.max_bytes", self.log.max_bytes),
            ("log.fsync_interval_ms", self.log.fsync_interval_ms),
            ("log.read_page", self.log.read_page as u64),
            ("mqtt.max_payload_bytes", self.mqtt.max_payload_bytes as u64),
            ("mqtt.max_topic_bytes", self.mqtt.max_topic_bytes as u64),
            ("mqtt.max_topic_levels", self.mqtt.max_topic_levels as u64),
            ("mqtt.max_topics", self.mqtt.max_topics as u64),
            ("mqtt.max_filters", self.mqtt.max_filters as u64),
            (
                "mqtt.max_pending_logins",
                self.mqtt.max_pending_logins as u64,
            ),
            (
                "mqtt.max_pending_logins_per_address",
                self.mqtt.max_pending_logins_per_address as u64,
            ),
            (
                "mqtt.device_events_capacity",
                self.mqtt.device_events_capacity as u64,
            ),
            ("mqtt.max_connections", self.mqtt.max_connections as u64),
            ("mqtt.max_subscriptions", self.mqtt.max_subscriptions as u64),
            (
                "mqtt.connection_timeout_ms",
                self.mqtt.connection_timeout_ms.into(),
            ),
            ("mqtt.max_inflight", self.mqtt.max_inflight as u64),
            ("mqtt.max_retained", self.mqtt.max_retained),
            ("mqtt.log_segment_bytes", self.mqtt.log_segment_bytes as u64),
            ("mqtt.log_segment_count", self.mqtt.log_segment_count as u64),
            ("http.max_publish_bytes", self.http.max_publish_bytes as u64),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("limits.command_timeout_ms", self.limits.command_timeout_ms),
            ("presence.max_devices", self.presence.max_devices as u64),
            (
                "limits.max_pending_commands",
                self.limits.max_pending_commands as u64,
            ),
            (
                "limits.max_pending_commands_per_client",
                self.limits.max_pending_commands_per_client as u64,
            ),
            (
                "http.max_body_bytes_in_flight",
                self.http.max_body_bytes_in_flight as u64,
            ),
            ("http.ingress_capacity", self.http.ingress_capacity as u64),
            ("sse.heartbeat_secs", self.sse.heartbeat_secs),
            ("sse.queue_capacity", self.sse.queue_capacity as u64),
            ("sse.queue_max_bytes", self.sse.queue_max_bytes as u64),
            ("sse.replay_capacity", self.sse.replay_capacity as u64),
            ("sse.replay_max_bytes", self.sse.replay_max_bytes as u64),
            ("sse.max_replay", self.sse.max_replay as u64),
            ("sse.max_filters", self.sse.max_filters as u64),
            (
                "sse.filter_budget_bytes",
                self.sse.filter_budget_bytes as u64,
            ),
            ("sse.max_streams", self.sse.max_streams as u64),
            ("websocket.max_connections", ws.max_connections as u64),
            ("websocket.max_message_bytes", ws.max_message_bytes as u64),
            ("websocket.queue_capacity", ws.queue_capacity as u64),
            ("websocket.queue_max_bytes", ws.queue_max_bytes as u64),
            ("websocket.max_filters", ws.max_filters as u64),
            ("websocket.max_handshakes", ws.max_handshakes as u64),
            (
                "websocket.handshake_timeout_secs",
                ws.handshake_timeout_secs,
            ),
            (
                "websocket.filter_budget_bytes",
                ws.filter_budget_bytes as u64,
            ),
            ("websocket.ping_interval_secs", ws.ping_interval_secs),
            ("websocket.idle_timeout_secs", ws.idle_timeout_secs),
            ("websocket.write_buffer_bytes", ws.write_buffer_bytes as u64),
            ("websocket.read_buffer_bytes", ws.read_buffer_bytes as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.limits.max_command_timeout_ms < self.limits.command_timeout_ms {
            return Err(ConfigError::invalid(
                "limits.max_command_timeout_ms",
                "must be at least limits.command_timeout_ms",
            ));
        }
        if self.http.max_body_bytes_in_flight < self.http.max_publish_bytes
            || u32::try_from(self.http.max_publish_bytes).is_err()
        {
            return Err(ConfigError::invalid(
                "http.max_body_bytes_in_flight",
                "must be at least http.max_publish_bytes (below 4 GiB), or the largest body could never be read",
            ));
        }
        if self.mqtt.max_topic_bytes > crate::topic::MAX_TOPIC_BYTES {
            return Err(ConfigError::invalid(
                "mqtt.max_topic_bytes",
                format!(
                    "must be at most {} (MQTT's longest topic)",
                    crate::topic::MAX_TOPIC_BYTES
                ),
            ));
        }
        // Timers are deadlines on the monotonic clock: an absurd period
        // would overflow it (and is a typo anyway).
        let periods = [
            ("sse.heartbeat_secs", self.sse.heartbeat_secs),
            ("websocket.ping_interval_secs", ws.ping_interval_secs),
            ("websocket.idle_timeout_secs", ws.idle_timeout_secs),
        ];
        for (key, secs) in periods {
            if secs > MAX_PERIOD_SECS {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be at most {MAX_PERIOD_SECS} (a day)"),
                ));
            }
        }
        if self.sse.max_filter_bytes == 0 || self.sse.max_filter_bytes > topic::MAX_TOPIC_BYTES {
            return Err(ConfigError::invalid(
                "sse.max_filter_bytes",
                format!("must be between 1 and {}", topic::MAX_TOPIC_BYTES),
            ));
        }
        // MQTT's remaining length tops out at 268,435,455 bytes, and the
        // gate may write a packet back out with its topic and properties
        // (up to 64 KiB more): the payload must leave room for both.
        if self.mqtt.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(ConfigError::invalid(
                "mqtt.max_payload_bytes",
                format!("must be at most {MAX_PAYLOAD_BYTES} (MQTT's own limit, less room for a topic and properties)"),
            ));
        }
        check_origins(
            "http.cors_allowed_origins",
            &self.http.cors_allowed_origins,
            true,
        )?;
        if self.http.cors_allow_credentials
            && self.http.cors_allowed_origins.iter().any(|o| o == "*")
        {
            return Err(ConfigError::invalid(
                "http.cors_allowed_origins",
                "cannot hold \"*\" while http.cors_allow_credentials is on: list the exact origins allowed to send credentials",
            ));
        }
        check_origins("websocket.allowed_origins", &ws.allowed_origins, false)?;
        if !ws.path.starts_with('/') || ws.path.contains(['?', '#', ' ']) {
            return Err(ConfigError::invalid(
                "websocket.path",
                format!(
                    "`{}` is not a path: it must start with / and hold no query",
                    ws.path
                ),
            ));
        }
        if ws.ping_interval_secs >= ws.idle_timeout_secs {
            return Err(ConfigError::invalid(
                "websocket.ping_interval_secs",
                "must be shorter than websocket.idle_timeout_secs, or idle clients that answer pings are closed",
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Err(e) = topic::validate_filter(&route.filter, topic::MAX_TOPIC_BYTES) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].filter"),
                    format!("`{}` is not a valid topic filter: {e}", route.filter),
                ));
            }
            if route.event.is_empty() || route.event.contains(['\r', '\n']) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].event"),
                    "must be a non-empty name without line breaks",
                ));
            }
        }
        if self.log.kind == crate::log::Kind::Disk && self.log.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "log.dir",
                "must name a directory (\"data\" by default)",
            ));
        }
        self.validate_plugins()?;
        self.auth.validate()?;
        self.validate_tls()
    }

    /// Whether any listener serves TLS, and so needs `[tls]`.
    pub fn uses_tls(&self) -> bool {
        self.http.tls
            || self.websocket.tls
            || self.mqtt.tls_listen.is_some()
            || self.mqtt.websocket_tls
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        if self.mqtt.websocket_tls && self.mqtt.websocket_listen.is_none() {
            return Err(ConfigError::invalid(
                "mqtt.websocket_tls",
                "needs mqtt.websocket_listen, the listener it secures",
            ));
        }
        if !self.uses_tls() {
            return Ok(());
        }
        let using = if self.http.tls {
            "http.tls"
        } else if self.websocket.tls {
            "websocket.tls"
        } else if self.mqtt.websocket_tls {
            "mqtt.websocket_tls"
        } else {
            "mqtt.tls_listen"
        };
        for (key, value) in [
            ("tls.cert_path", &self.tls.cert_path),
            ("tls.key_path", &self.tls.key_path),
        ] {
            if value.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::invalid(
                    key,
                    format!("is required: {using} serves TLS"),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        for (i, plugin) in self.plugins.iter().enumerate() {
            let name = &plugin.name;
            if name.is_empty()
                || name.len() > MAX_PLUGIN_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].name"),
                    format!("`{name}` must be 1 to {MAX_PLUGIN_NAME} letters, digits, `-` or `_`"),
                ));
            }
            if self.plugins[..i].iter().any(|p| &p.name == name) {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].name"),
                    format!("`{name}` is used by an earlier plugin: names must be unique"),
                ));
            }
            if plugin.path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].path"),
                    "must name the plugin's shared library",
                ));
            }
            if plugin.inbox_capacity == 0 {
                return Err(ConfigError::invalid(
                    format!("plugins[{i}].inbox_capacity"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

fn check_origins(key: &str, origins: &[String], star: bool) -> Result<(), ConfigError> {
    for origin in origins {
        let is_origin = origin.starts_with("http://") || origin.starts_with("https://");
        if !(is_origin || (star && origin == "*")) {
            let hint = if star { "\"*\" or " } else { "" };
            return Err(ConfigError::invalid(
                key,
                format!("`{origin}` is not an origin: use {hint}a scheme and host such as \"https://example.com\""),
            ));
        }
    }
    Ok(())
}

/// The largest `mqtt.max_payload_bytes`: MQTT's largest remaining length
/// less 64 KiB for the topic, properties and headers around the payload.
const MAX_PAYLOAD_BYTES: usize = 268_435_455 - 64 * 1024;

/// The longest heartbeat, ping or idle period accepted, in seconds.
const MAX_PERIOD_SECS: u64 = 86_400;

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter budgets leave room for what the filter counts allow,
    /// with ordinary filters: four levels of about ten bytes each.
    #[test]
    fn default_budgets_fit_ordinary_filters() {
        let config = Config::default();
        let cost = crate::router::filter_cost("home/kitchen/ceiling/light-12");
        assert!(config.sse.max_filters * cost <= config.sse.filter_budget_bytes);
        assert!(config.websocket.max_filters * cost <= config.websocket.filter_budget_bytes);
    }

    /// A payload limit that leaves no room under MQTT's largest packet for
    /// the topic and properties is refused, naming the key.
    #[test]
    fn payload_limit_leaves_room_under_mqtts() {
        let mut config = Config::default();
        config.mqtt.max_payload_bytes = 268_435_455;
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("mqtt.max_payload_bytes"), "{err}");
        config.mqtt.max_payload_bytes = MAX_PAYLOAD_BYTES;
        config.validate().expect("the largest allowed");
    }

    /// A period too long for the clock is refused, naming the key, before
    /// a timer could overflow.
    #[test]
    fn absurd_periods_are_refused() {
        let mut config = Config::default();
        config.sse.heartbeat_secs = u64::MAX;
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("sse.heartbeat_secs"), "{err}");
        let mut config = Config::default();
        config.websocket.idle_timeout_secs = 86_401;
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("websocket.idle_timeout_secs"), "{err}");
        config.websocket.idle_timeout_secs = 86_400;
        config.validate().expect("a day is fine");
    }

    /// The built-in defaults pass their own validation.
    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    /// A zero capacity is refused with the key it came from.
    #[test]
    fn zero_capacity_names_the_key() {
        let mut config = Config::default();
        config.sse.queue_capacity = 0;
        let err = config.validate().expect_err("zero refused").to_string();
        assert!(err.contains("sse.queue_capacity"), "{err}");
    }

    /// A route with an invalid filter names the route's index and the rule.
    #[test]
    fn invalid_route_filter_names_the_route() {
        let mut config = Config::default();
        config.routes.push(Route {
            filter: "a/#/b".into(),
            event: "x".into(),
        });
        let err = config
            .validate()
            .expect_err("bad filter refused")
            .to_string();
        assert!(err.contains("routes[0].filter"), "{err}");
        assert!(err.contains("a/#/b"), "{err}");
    }

    fn plugin(name: &str) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            path: "libx.so".into(),
            required: true,
            inbox_capacity: 1,
            config: Default::default(),
        }
    }

    /// Two plugins with the same name are refused, naming the second.
    #[test]
    fn duplicate_plugin_names_are_refused() {
        let config = Config {
            plugins: vec![plugin("a"), plugin("a")],
            ..Config::default()
        };
        let err = config
            .validate()
            .expect_err("duplicate refused")
            .to_string();
        assert!(err.contains("plugins[1].name"), "{err}");
        assert!(err.contains("unique"), "{err}");
    }

    /// An empty plugin name, or one with characters that do not fit a
    /// thread name, is refused.
    #[test]
    fn bad_plugin_names_are_refused() {
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            let config = Config {
                plugins: vec![plugin(name)],
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{name:?} accepted");
        }
    }

    /// `mqtt.websocket_tls` needs the listener it secures, and then the
    /// `[tls]` certificate; each refusal names the key to fix.
    #[test]
    fn mqtt_websocket_tls_names_what_it_needs() {
        let mut config = Config::default();
        config.mqtt.websocket_tls = true;
        let err = config.validate().expect_err("no listener").to_string();
        assert!(err.contains("mqtt.websocket_tls"), "{err}");
        assert!(err.contains("mqtt.websocket_listen"), "{err}");
        config.mqtt.websocket_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let err = config.validate().expect_err("no certificate").to_string();
        assert!(err.contains("tls.cert_path"), "{err}");
        assert!(err.contains("mqtt.websocket_tls serves TLS"), "{err}");
    }

    /// An event name with a line break would break the SSE framing.
    #[test]
    fn route_event_with_newline_is_refused() {
        let mut config = Config::default();
        config.routes.push(Route {
            filter: "a".into(),
            event: "x\ndata: injected".into(),
        });
        assert!(config.validate().is_err());
    }
}
