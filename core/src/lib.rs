//! Tidewater: one deployment serving MQTT devices and web clients at once.
//!
//! Devices speak MQTT to an embedded broker; browsers subscribe over
//! Server-Sent Events and publish with HTTP `POST`. Every message passes
//! through the broker, then the log, which gives it its place, and the
//! router, which fans it out.
//!
//! # Layout
//! - [`config`]: every key of `bridge.toml`, its default and its rules;
//!   figment layering of defaults, file and environment.
//! - [`topic`]: MQTT topic and filter validation and matching, shared by
//!   every entry point.
//! - [`router`]: fan-out only: the ordered stream read from the broker, the
//!   subscription trie, per-subscriber queues, the replay ring and
//!   retained-first delivery. It never writes to the broker.
//! - [`log`]: the log beneath the router: every message appended and given
//!   its position, on disk by default (segment files, retained values,
//!   epochs), read back for resumes older than the ring.
//! - [`broker`]: the embedded rumqttd, the links that join it to the
//!   router, and its handle ([`broker::Broker`]): the one way in for web
//!   clients and plugins (publishes, the retained values restored at start),
//!   with its census of topics and filters and its health.
//! - [`gate`]: the MQTT listeners in front of the broker that enforce the
//!   access rules on devices' SUBSCRIBE, PUBLISH, wills and deliveries
//!   (rumqttd 0.20 only checks CONNECT); also MQTT over TLS. It keeps the
//!   filters live devices hold ([`gate::DeviceFilters`]).
//! - [`command`]: commands that wait for their device's answer (on
//!   `{topic}/reply`), bounded per topic, per client and in total; used by
//!   `POST /command` and the WebSocket `command` op.
//! - [`presence`]: each device's online state, retained on
//!   `$tidewater/presence/<client id>`, swept at start; `GET /devices`.
//! - [`sse`]: `GET /events`, the SSE encoder and stream.
//! - [`ws`]: the WebSocket listener, its JSON protocol and sessions.
//! - [`http`]: the HTTP server: publish, health, CORS, error bodies.
//! - [`plugin`]: device-driver plugins: loading shared libraries, the host
//!   side of the C ABI, one thread and inbox per plugin, `GET /plugins`.
//! - [`auth`]: who may connect, read and write: identities (MQTT users with
//!   argon2 password hashes, web clients with JSON Web Tokens), the access
//!   rules, and the single check every subscribe and publish passes.
//! - [`limits`]: publish rates, a token bucket per web client and per MQTT
//!   connection through the gate.
//! - [`stats`]: counters for everything accepted, delivered, refused or
//!   dropped.
//! - [`metrics`]: those counters in the Prometheus format, at `/metrics`.
//! - [`tls`]: the certificate every TLS listener presents.
//! - [`services`]: what every entry point is given explicitly: stats,
//!   rules, log, router, broker handle, device filters, commands and
//!   presence.
//! - [`bridge`]: starting and stopping the whole: the startup plan (every
//!   listener and what it serves, bound first), the order of start, and
//!   the unwinding of a start that fails.
//!
//! # Errors
//! Each boundary has its own `thiserror` enum whose messages name what to
//! fix (a key, a filter, a listener and its address); `anyhow` appears only
//! in the binary.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod command;
pub mod config;
pub mod gate;
pub mod http;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod plugin;
pub mod presence;
pub mod router;
pub mod services;
pub mod sse;
pub mod stats;
pub mod tls;
pub mod topic;
pub mod ws;

pub use bridge::{Bridge, StartError};
pub use config::Config;
