//! The MQTT gate: the bridge's own MQTT listeners, in front of the embedded
//! broker, enforcing the access rules on what devices subscribe to, publish
//! and receive.
//!
//! Why it exists: rumqttd 0.20 offers one hook, `external_auth`, called once
//! per CONNECT. It has none for SUBSCRIBE, PUBLISH, wills or deliveries, so
//! on its own it lets any device that logged in read and write every topic.
//! The gate reads each client's packets on their way in and out (see
//! [`packet`]) and applies the same [`Policy`] as SSE, WebSocket, HTTP and
//! plugins:
//! - CONNECT: who the client is (its username, once the broker has checked
//!   the password; roles from `[[auth.users]]`), and whether its will topic
//!   may be published; the CONNECT itself goes to the broker unchanged but
//!   for the Topic Alias Maximum (see [`session`]).
//! - client to broker ([`upstream`]): PUBLISH on a denied topic is dropped
//!   and acknowledged by the gate; SUBSCRIBE keeps only the allowed filters.
//! - broker to client ([`downstream`]): PUBLISH on a topic the client may
//!   not read (an allowed `home/#` covers a denied `home/secret/x`) is
//!   withheld and acknowledged to the broker.
//!
//! The gate is the broker's only door, on every bridge: rumqttd's
//! listeners are on loopback ports that only the gate uses, and the gate
//! takes the public addresses: `mqtt.listen`, `mqtt.listen_v5`,
//! `mqtt.tls_listen` and `mqtt.websocket_listen` ([`websocket`]). Each
//! accepts MQTT 3.1.1 and 5, routed by the CONNECT's protocol level. An
//! open bridge is a gate whose policy allows everything. Either way the
//! gate keeps from rumqttd 0.20 the input that breaks it: packets only a
//! server sends (see [`upstream`]), and names it cannot take, which cross
//! in the broker's own form ([`crate::broker::name`]); and it accepts
//! keep-alive 0, pinging the broker itself for such a device.
//!
//! # Layout
//! - this module: the listeners, their accept loops and connection limits,
//!   and what every connection shares ([`Shared`]);
//! - [`session`]: one connection, from its CONNECT to its end;
//! - [`pump`]: the two directions of a connection and the notes between
//!   them; [`acks`]: the order of acknowledgements on one side;
//! - [`upstream`], [`downstream`]: the decision on each packet, per
//!   direction; [`presence`]: the device events a connection makes;
//!   [`registry`]: which connection holds each client id;
//! - [`packet`]: reading and writing just the MQTT the gate needs;
//! - [`websocket`]: MQTT over WebSocket, as a byte stream for a session.

mod acks;
mod downstream;
mod filters;
pub mod packet;
mod presence;
mod pump;
mod registry;
mod session;
mod upstream;
mod websocket;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::packet::{Connect, Version};
use self::session::SessionError;
use crate::auth::password::{LoginError, MqttAuth};
use crate::auth::{Identity, Policy, Principal};
use crate::config::Config;
use crate::limits::TokenBucket;
use crate::stats::{AuthFailure, Limit, Protocol, Stats};
pub use filters::DeviceFilters;

/// Room above `mqtt.max_payload_bytes` for a packet's topic, properties
/// and headers: a packet larger than both is refused (and counted).
const HEADROOM: usize = 64 * 1024;

/// The broker's internal listeners the gate relays to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstreams {
    pub v311: SocketAddr,
    /// Without it (open bridge, no `mqtt.listen_v5`), MQTT 5 clients are
    /// refused with "unsupported protocol version".
    pub v5: Option<SocketAddr>,
}

/// What every gate connection shares.
#[derive(Debug)]
pub struct Shared {
    policy: Arc<Policy>,
    /// The filters live connections hold (see `filters`).
    device_filters: Arc<DeviceFilters>,
    stats: Arc<Stats>,
    upstreams: Upstreams,
    /// Each MQTT user's roles, from `[[auth.users]]`.
    roles: HashMap<String, Vec<String>>,
    /// Passwords, client ids, and the broker's login for the gate.
    auth: Arc<MqttAuth>,
    connect_timeout: Duration,
    /// Largest packet from a client or from the broker: every publish,
    /// whichever way it comes, is held to `mqtt.max_payload_bytes` (the
    /// router checks web clients' and plugins').
    max_packet: usize,
    /// Room in each channel between a connection's two pumps.
    notes: usize,
    publish_rate: u32,
    publish_burst: u32,
    /// Filters one connection may hold (`mqtt.max_subscriptions`).
    max_subscriptions: usize,
    /// Where each device's connects and disconnects are reported.
    devices: crate::router::DeviceEvents,
    /// Which connection holds each client id.
    registry: Arc<registry::Registry>,
    /// The distinct topics and filters the broker holds (`mqtt.max_topics`,
    /// `mqtt.max_filters`).
    census: Arc<crate::broker::census::Census>,
    /// Asked before each device publish is taken: nothing is accepted that
    /// the log could not keep (a full disk).
    log: Arc<dyn crate::log::Log>,
    /// What a client's topics and filters may be (`mqtt.max_topic_bytes`,
    /// `mqtt.max_topic_levels`).
    topics: crate::topic::Limits,
    /// Unreleased QoS 2 publishes one connection may have
    /// (`mqtt.max_inflight`).
    max_inflight: usize,
}

impl Shared {
    /// What every gate connection shares. `policy` is the services' own
    /// rules on a bridge that enforces them, and rules that allow all on
    /// an open one.
    pub fn new(
        config: &Config,
        services: &crate::services::Services,
        policy: Arc<Policy>,
        upstreams: Upstreams,
        auth: Arc<MqttAuth>,
    ) -> Self {
        let payload = config.mqtt.max_payload_bytes;
        Self {
            policy,
            stats: services.stats.clone(),
            upstreams,
            roles: config
                .auth
                .users
                .iter()
                .map(|u| (u.name.clone(), u.roles.clone()))
                .collect(),
            auth,
            connect_timeout: Duration::from_millis(config.mqtt.connection_timeout_ms.into()),
            max_packet: payload + HEADROOM,
            notes: config.mqtt.max_inflight + pump::NOTES_MARGIN,
            publish_rate: config.limits.mqtt_publish_rate,
            publish_burst: config.limits.mqtt_publish_burst,
            max_subscriptions: config.mqtt.max_subscriptions,
            devices: services.router.devices().clone(),
            registry: Arc::default(),
            census: services.broker.census().clone(),
            device_filters: services.device_filters.clone(),
            log: services.log.clone(),
            topics: config.topic_limits(),
            max_inflight: config.mqtt.max_inflight,
        }
    }

    /// What a gate with the default config and no rules shares, for the
    /// unit tests of one direction (the broker address is never dialled).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let upstreams = Upstreams {
            v311: addr,
            v5: Some(addr),
        };
        let (policy, stats): (_, Arc<Stats>) = (Arc::new(Policy::allow_all()), Arc::default());
        let auth = Arc::new(MqttAuth::new(&[], true, 1, 1, stats.clone()));
        let config = Config::default();
        let log: Arc<dyn crate::log::Log> = Arc::new(crate::log::memory::MemoryLog::new(1));
        let settings = crate::router::RouterSettings::from_config(&config, policy.clone());
        let router = crate::router::Router::new(settings, stats.clone(), log.clone());
        // Nobody reads the broker side: these tests never publish through it.
        let settings = crate::broker::BrokerSettings::from_config(&config, policy.clone());
        let (broker, _) = crate::broker::Broker::for_tests(settings, stats.clone(), log.clone(), 1);
        let services =
            crate::services::Services::new(&config, stats, policy.clone(), log, router, broker);
        Arc::new(Self::new(&config, &services, policy, upstreams, auth))
    }

    /// Who the client of `connect` is, once its login and client id pass:
    /// a user whose password the gate checked (and who may use the client
    /// id), or anonymous where that is allowed. Without configured users a
    /// username proves nothing, and its client is anonymous.
    async fn admit(&self, connect: &Connect, peer: IpAddr) -> Result<Principal, Refused> {
        let id = connect.client_id.as_str();
        let user = match &connect.username {
            Some(name) if self.auth.passwords_checked() || !self.auth.anonymous() => {
                let password = connect.password.as_deref().unwrap_or_default();
                self.auth
                    .verify(id, name, password, peer)
                    .await
                    .map_err(|e| match e {
                        LoginError::Invalid => Refused::BadLogin,
                        LoginError::Busy => Refused::Busy,
                    })?;
                Some(name.as_str())
            }
            Some(_) => None,
            None if self.auth.anonymous() => None,
            None => {
                self.stats.refuse_auth(Protocol::Mqtt, AuthFailure::Missing);
                tracing::info!(client_id = id, "MQTT CONNECT refused: no username.");
                return Err(Refused::NoLogin);
            }
        };
        if !self.auth.client_ids().may_use(user, id) {
            self.stats
                .refuse_auth(Protocol::Mqtt, AuthFailure::ClientId);
            let owner = self.auth.client_ids().owner(id);
            tracing::info!(
                client_id = id,
                username = user.unwrap_or("(anonymous)"),
                owner = owner.unwrap_or("(none)"),
                "MQTT CONNECT refused: the client id is not this client's."
            );
            return Err(Refused::ClientId);
        }
        Ok(match user {
            Some(name) => Principal::User(Arc::new(Identity {
                name: name.to_owned(),
                roles: self.roles.get(name).cloned().unwrap_or_default(),
                client_id: (!id.is_empty()).then(|| id.to_owned()),
                grants: None,
                expires_at: None,
            })),
            None => Principal::Anonymous,
        })
    }

    fn upstream(&self, version: Version) -> Option<SocketAddr> {
        match version {
            Version::V311 => Some(self.upstreams.v311),
            Version::V5 => self.upstreams.v5,
        }
    }

    /// A connection's publish allowance; `None` when unlimited.
    fn publish_bucket(&self, now: Instant) -> Option<TokenBucket> {
        TokenBucket::with_rate(self.publish_rate, self.publish_burst, now)
    }
}

/// Why the gate refused a CONNECT, each with its own CONNACK code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No username where one is required.
    NoLogin,
    /// Unknown user or wrong password.
    BadLogin,
    /// Too many logins waiting for a password check.
    Busy,
    /// A client id bound to another user, or to none.
    ClientId,
}

impl Refused {
    /// The CONNACK return code (MQTT 3.1.1) and reason code (MQTT 5).
    fn codes(self) -> (u8, u8) {
        match self {
            Self::NoLogin => (5, 0x87),
            Self::BadLogin => (4, 0x86),
            Self::Busy => (3, 0x89),
            Self::ClientId => (2, 0x85),
        }
    }
}

/// How a listener's clients reach the gate.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(TlsAcceptor),
    /// MQTT over WebSocket (subprotocol `mqtt`).
    WebSocket,
    /// MQTT over WebSocket over TLS (`wss://`).
    WebSocketTls(TlsAcceptor),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "Tcp",
            Self::Tls(_) => "Tls",
            Self::WebSocket => "WebSocket",
            Self::WebSocketTls(_) => "WebSocketTls",
        })
    }
}

/// Accepts clients on `listener` until `cancel`, each served on `tracker`.
/// Each connection holds one of `slots` (shared by every listener, sized
/// by `mqtt.max_connections`); with none left, a connection is closed at
/// once (MQTT has no way to refuse before CONNECT) and counted. The
/// broker's own limit is set above it, so a device retrying never finds
/// rumqttd full (rumqttd 0.20 leaves its listener broken then).
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, ?transport, "MQTT accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.stats.limit(Protocol::Mqtt, Limit::Connections);
            tracing::debug!(%peer, ?transport, "MQTT connection refused: mqtt.max_connections reached.");
            continue;
        };
        let (transport, shared, cancel) = (transport.clone(), shared.clone(), cancel.clone());
        tracker.spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            // Not raced against `cancel`: a session ends itself on it, so
            // that its device's disconnect is reported; a TLS or WebSocket
            // handshake is bounded by its own timeout.
            connection(stream, peer, transport, shared, cancel).await;
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    match transport {
        Transport::Tcp => session::run(stream, peer, shared, cancel).await,
        Transport::Tls(acceptor) => {
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => session::run(tls, peer, shared, cancel).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "MQTT TLS handshake timed out."),
            }
        }
        Transport::WebSocket => websocket::run(stream, peer, shared, cancel).await,
        Transport::WebSocketTls(acceptor) => {
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => websocket::run(tls, peer, shared, cancel).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "MQTT wss handshake failed."),
                Err(_) => tracing::debug!(%peer, "MQTT wss handshake timed out."),
            }
        }
    }
}
