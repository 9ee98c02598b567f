//! Starting and stopping the whole bridge: broker, MQTT gate, router,
//! plugins and HTTP server, wired together from one [`Config`].

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::password::MqttAuth;
use crate::auth::token::WebAuth;
use crate::auth::Policy;
use crate::broker::health::{BrokerHealth, Probe, DOWN_GRACE};
use crate::broker::{self, BrokerAddrs, BrokerError};
use crate::config::{Config, MqttConfig};
use crate::gate::{self, Transport, Upstreams};
use crate::http::{self, AppState};
use crate::plugin::{PluginError, PluginStatuses, Plugins};
use crate::router::{Router, RouterSettings};
use crate::stats::Stats;
use crate::ws;

/// How long shutdown waits for WebSocket sessions to send their close frames.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("http listener cannot bind {addr}")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket listener cannot bind {addr}")]
    WsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("cannot give the broker back its retained values: {0}")]
    Restore(&'static str),
    #[error("cannot start the http server: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] crate::auth::token::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{listener} listener cannot bind {addr}")]
    MqttBind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
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

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    pub http_addr: SocketAddr,
    /// The MQTT addresses clients use: the gate's when it runs, else the
    /// broker's own listeners.
    pub mqtt_addr: SocketAddr,
    pub mqtt_v5_addr: Option<SocketAddr>,
    pub mqtt_ws_addr: Option<SocketAddr>,
    /// MQTT over TLS, when `mqtt.tls_listen` is set.
    pub mqtt_tls_addr: Option<SocketAddr>,
    pub ws_addr: SocketAddr,
    /// The broker's own listeners, on loopback ports behind the gate. They
    /// take only the gate's login, a secret made at each start: a client
    /// that finds them cannot use a user's password or come in anonymously.
    pub broker_addrs: BrokerAddrs,
    broker_health: Arc<BrokerHealth>,
    /// The gate's login at the broker, for tests that must reach rumqttd
    /// itself (in-process code can read it anyway).
    broker_login: (String, String),
    router: Router,
    /// The bridge's own listeners and their connections: WebSocket
    /// sessions and MQTT gate connections.
    ws_tasks: TaskTracker,
    plugins: Plugins,
    cancel: CancellationToken,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Bridge {
    /// Binds every listener and starts serving. Cancelling `cancel` begins
    /// shutdown; [`Bridge::stopped`] waits for it to finish.
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let stats = Arc::new(Stats::default());
        let policy = Arc::new(Policy::from_config(&config.auth)?);
        // Every MQTT client goes through the gate, the broker's only door
        // (see `gate`); an open bridge is a gate that allows everything.
        let enforced = policy.is_enforced();
        if enforced && !policy.has_rules() {
            tracing::warn!("[auth] is configured without [[auth.acl]] rules: every web and plugin subscribe and publish will be refused.");
        }
        let web_auth = Arc::new(WebAuth::new(
            config.auth.anonymous_web,
            config.auth.jwt.as_ref(),
        )?);
        if !config.auth.anonymous_web && config.auth.jwt.is_none() {
            tracing::warn!("Neither auth.anonymous_web nor [auth.jwt] is set: every web client will be refused.");
        }
        let mqtt_auth = Arc::new(MqttAuth::new(
            &config.auth.users,
            config.auth.anonymous_mqtt,
            config.mqtt.max_pending_logins,
            stats.clone(),
        ));
        if !config.auth.anonymous_mqtt && config.auth.users.is_empty() {
            tracing::warn!("Neither auth.anonymous_mqtt nor [[auth.users]] is set: every MQTT client will be refused.");
        }
        // The log first: everything else starts from where it stands. Its
        // files are read and checked off the async workers.
        let log_config = config.log.clone();
        let log = tokio::task::spawn_blocking(move || crate::log::open(&log_config))
            .await
            .map_err(|e| StartError::Http(std::io::Error::other(e)))??;
        let (ingress_tx, ingress_rx) = mpsc::channel(config.http.ingress_capacity);
        let router = Router::new(
            RouterSettings::from_config(&config, policy.clone()),
            stats,
            log,
            ingress_tx,
        );

        // Bound before the broker starts so a busy HTTP port fails fast.
        let listener =
            TcpListener::bind(config.http.listen).map_err(|source| StartError::HttpBind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(StartError::Http)?;
        limit_send_buffer(&listener, config.http.send_buffer_bytes).map_err(|source| {
            StartError::HttpBind {
                addr: config.http.listen,
                source,
            }
        })?;
        let ws_bind = |source| StartError::WsBind {
            addr: config.websocket.listen,
            source,
        };
        let ws_listener = TcpListener::bind(config.websocket.listen).map_err(ws_bind)?;
        ws_listener.set_nonblocking(true).map_err(ws_bind)?;
        limit_send_buffer(&ws_listener, config.websocket.send_buffer_bytes).map_err(ws_bind)?;
        let ws_listener = tokio::net::TcpListener::from_std(ws_listener).map_err(ws_bind)?;
        let ws_addr = ws_listener.local_addr().map_err(ws_bind)?;
        let tls = if config.uses_tls() {
            Some(crate::tls::server_config(&config.tls)?)
        } else {
            None
        };
        let public = PublicMqtt::bind(&config.mqtt)?;

        // Starting the broker waits for its listeners: keep that off the
        // async workers. Its listeners are internal, behind the gate.
        let mqtt = internal(&config.mqtt);
        let broker_router = router.clone();
        let broker_auth = mqtt_auth.clone();
        let health = BrokerHealth::new();
        let broker_health = health.clone();
        let broker_addrs = tokio::task::spawn_blocking(move || {
            broker::start(
                &mqtt,
                &broker_auth,
                &broker_router,
                ingress_rx,
                &broker_health,
            )
        })
        .await
        .map_err(|e| StartError::Http(std::io::Error::other(e)))??;
        let BrokerAddrs {
            mqtt: mqtt_addr,
            mqtt_v5,
            mqtt_ws,
        } = broker_addrs;

        // The broker gets the retained values back before anyone can ask
        // it for them.
        let restored = router
            .restore_retained()
            .await
            .map_err(StartError::Restore)?;
        tracing::info!(
            kind = ?config.log.kind,
            epoch = %format_args!("{:x}", router.epoch()),
            next = router.log().next(),
            retained = restored,
            "Log ready."
        );

        // Plugins start once the broker is up (their first publishes have
        // somewhere to go) and before HTTP serves, so a required plugin that
        // fails stops startup before anyone is served.
        let plugins = Plugins::start(&config.plugins, &router).await?;

        let state = AppState {
            router: router.clone(),
            config: config.clone(),
            cancel: cancel.clone(),
            metrics: Arc::new(crate::metrics::registry(
                router.stats().clone(),
                plugins.statuses(),
                router.log().clone(),
            )),
            plugins: plugins.statuses(),
            auth: web_auth.clone(),
            publish_limiter: Arc::new(crate::limits::RateLimiter::new(config.limits.clone())),
            sse_slots: Arc::new(tokio::sync::Semaphore::new(config.sse.max_streams)),
            broker: health.clone(),
        };
        let http_tls = tls.clone().filter(|_| config.http.tls);
        let server = match http::serve(listener, state, http_tls) {
            Ok(server) => server,
            Err(e) => {
                plugins.stop().await;
                return Err(StartError::Http(e));
            }
        };
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        let ws_tasks = TaskTracker::new();
        ws_tasks.spawn(ws::serve(
            ws_listener,
            ws::Context {
                router: router.clone(),
                config: Arc::new(config.websocket.clone()),
                auth: web_auth,
                limits: config.limits.clone(),
                max_payload_bytes: config.mqtt.max_payload_bytes,
                tls: tls.clone().filter(|_| config.websocket.tls),
            },
            cancel.clone(),
            ws_tasks.clone(),
        ));

        let shared = Arc::new(gate::Shared::new(
            &config,
            if enforced {
                policy
            } else {
                Arc::new(Policy::allow_all())
            },
            router.stats().clone(),
            Upstreams {
                v311: broker::loopback(mqtt_addr),
                v5: mqtt_v5.map(broker::loopback),
            },
            mqtt_auth.clone(),
            &router,
        ));
        // A failed broker stops the gate at once, and the whole bridge once
        // `/healthz` has shown 503 for a moment (see `broker::health`).
        let gate_stop = cancel.child_token();
        ws_tasks.spawn(stop_when_down(
            health.clone(),
            gate_stop.clone(),
            cancel.clone(),
        ));
        let (login, password) = mqtt_auth.broker_login();
        let mut probes = vec![Probe {
            name: "mqtt",
            addr: broker::loopback(mqtt_addr),
            v5: false,
        }];
        probes.extend(mqtt_v5.map(|addr| Probe {
            name: "mqtt_v5",
            addr: broker::loopback(addr),
            v5: true,
        }));
        ws_tasks.spawn(broker::health::watch(
            health.clone(),
            probes,
            (login.to_owned(), password.to_owned()),
            cancel.clone(),
        ));
        let slots = Arc::new(tokio::sync::Semaphore::new(config.mqtt.max_connections));
        let serve = |listener: tokio::net::TcpListener, transport| {
            ws_tasks.spawn(gate::serve(
                listener,
                transport,
                shared.clone(),
                slots.clone(),
                gate_stop.clone(),
                ws_tasks.clone(),
            ));
        };
        // Every address was read when the listener was bound: nothing from
        // here on can fail, so no failed start leaves the HTTP server or
        // the plugins running.
        let mqtt_tls_addr = match (public.tls, &tls) {
            (Some((listener, addr)), Some(tls)) => {
                serve(
                    listener,
                    Transport::Tls(tokio_rustls::TlsAcceptor::from(tls.clone())),
                );
                Some(addr)
            }
            _ => None,
        };
        let mut mqtt_ws = mqtt_ws;
        if let (Some((listener, addr)), Some(tls)) = (public.websocket_tls, &tls) {
            mqtt_ws = Some(addr);
            serve(
                listener,
                Transport::WebSocketTls(tokio_rustls::TlsAcceptor::from(tls.clone())),
            );
        }
        let mqtt_v5 = public.v5.map(|(listener, addr)| {
            serve(listener, Transport::Tcp);
            addr
        });
        let mut mqtt_addr = mqtt_addr;
        if let Some((listener, addr)) = public.tcp {
            mqtt_addr = addr;
            serve(listener, Transport::Tcp);
        }
        if let Some((listener, addr)) = public.websocket {
            mqtt_ws = Some(addr);
            serve(listener, Transport::WebSocket);
        }
        let path = if enforced {
            "through the gate, access rules enforced"
        } else {
            "through the gate, open"
        };
        tracing::info!(addr = %mqtt_addr, path, "MQTT listener ready.");
        if let Some(addr) = mqtt_v5 {
            tracing::info!(addr = %addr, path, "MQTT 5 listener ready.");
        }
        if let Some(addr) = mqtt_ws {
            tracing::info!(addr = %addr, path, "MQTT over WebSocket listener ready.");
        }
        if let Some(addr) = mqtt_tls_addr {
            tracing::info!(addr = %addr, "MQTT over TLS listener ready (through the gate).");
        }
        tracing::info!(addr = %http_addr, "HTTP listener ready (SSE, publish, health).");
        tracing::info!(addr = %ws_addr, path = %config.websocket.path, "WebSocket listener ready.");
        Ok(Self {
            http_addr,
            mqtt_addr,
            mqtt_v5_addr: mqtt_v5,
            mqtt_ws_addr: mqtt_ws,
            mqtt_tls_addr,
            ws_addr,
            broker_addrs,
            broker_health: health,
            broker_login: (login.to_owned(), password.to_owned()),
            router,
            ws_tasks,
            plugins,
            cancel,
            server: handle,
            server_task,
        })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Whether the embedded broker still works; once it has failed, the
    /// bridge stops on its own and the caller should exit non-zero.
    pub fn broker_health(&self) -> Arc<BrokerHealth> {
        self.broker_health.clone()
    }

    /// The gate's per-start login at the broker's internal listeners.
    #[doc(hidden)]
    pub fn broker_login(&self) -> (String, String) {
        self.broker_login.clone()
    }

    /// Every configured plugin's status, as `GET /plugins` shows it.
    pub fn plugins(&self) -> PluginStatuses {
        self.plugins.statuses()
    }

    /// Waits for `cancel`, then stops accepting, ends the SSE streams and
    /// WebSocket sessions (they watch the same token; sessions send 1001),
    /// lets in-flight requests finish, and stops the plugins (`stop`, join,
    /// `destroy`) while the broker still takes their last publishes.
    pub async fn stopped(self) {
        self.cancel.cancelled().await;
        self.ws_tasks.close();
        self.server.stop(true).await;
        if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, self.ws_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some WebSocket sessions did not close in time.");
        }
        if let Err(e) = self.server_task.await {
            tracing::warn!(error = %e, "HTTP server task ended abnormally.");
        }
        self.plugins.stop().await;
        // What the last publishes appended goes to disk before the process
        // ends (the broker takes no more: every way in has stopped).
        let log = self.router.log().clone();
        match tokio::task::spawn_blocking(move || log.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Cannot sync the log at shutdown."),
            Err(e) => tracing::error!(error = %e, "Log sync task failed at shutdown."),
        }
        // The embedded broker's threads cannot be stopped (rumqttd 0.20);
        // they end with the process.
        tracing::info!("Bridge stopped.");
    }
}

/// The MQTT listeners the gate serves, bound before the broker starts so a
/// busy port fails fast.
#[derive(Debug)]
struct PublicMqtt {
    tcp: Option<Bound>,
    v5: Option<Bound>,
    websocket: Option<Bound>,
    /// `mqtt.websocket_listen` when it serves `wss://`.
    websocket_tls: Option<Bound>,
    tls: Option<Bound>,
}

/// A listener and the address it was bound to (port 0 resolved).
type Bound = (tokio::net::TcpListener, SocketAddr);

impl PublicMqtt {
    /// Every public MQTT listener: the gate serves them all (see `gate`).
    fn bind(config: &MqttConfig) -> Result<Self, StartError> {
        let bind = |listener: &'static str, addr: Option<SocketAddr>| {
            addr.map(|addr| {
                let error = |source| StartError::MqttBind {
                    listener,
                    addr,
                    source,
                };
                let std = TcpListener::bind(addr).map_err(error)?;
                std.set_nonblocking(true).map_err(error)?;
                let local = std.local_addr().map_err(error)?;
                Ok::<Bound, StartError>((
                    tokio::net::TcpListener::from_std(std).map_err(error)?,
                    local,
                ))
            })
            .transpose()
        };
        let (plain_ws, tls_ws) = if config.websocket_tls {
            (None, config.websocket_listen)
        } else {
            (config.websocket_listen, None)
        };
        Ok(Self {
            tcp: bind("mqtt", Some(config.listen))?,
            v5: bind("mqtt_v5", config.listen_v5)?,
            websocket: bind("mqtt_websocket", plain_ws)?,
            websocket_tls: bind("mqtt_websocket", tls_ws)?,
            tls: bind("mqtt_tls", config.tls_listen)?,
        })
    }
}

/// Stops the gate as soon as the broker fails, and the bridge
/// [`DOWN_GRACE`] later; returns at shutdown otherwise.
async fn stop_when_down(
    health: Arc<BrokerHealth>,
    gate: CancellationToken,
    bridge: CancellationToken,
) {
    tokio::select! {
        () = bridge.cancelled() => {}
        () = health.down() => {
            gate.cancel();
            tokio::time::sleep(DOWN_GRACE).await;
            bridge.cancel();
        }
    }
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
