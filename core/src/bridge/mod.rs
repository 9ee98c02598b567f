//! Starting and stopping the whole bridge, wired together from one
//! [`Config`], in this order:
//! 1. the plan ([`plan`]): every listener decided once and bound before
//!    anything starts, so a busy port fails fast;
//! 2. the log, the router over it, and the broker, which feeds the router
//!    everything it routes and is given back the log's retained values
//!    before any listener serves;
//! 3. the plugins, then the HTTP server, the WebSocket listener and the MQTT
//!    gate's listeners, each given the services ([`Services`]) explicitly.
//!
//! A failure at any step undoes what had started ([`unwind`]).

mod plan;
mod unwind;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::plan::{Bound, MqttCarrier, Plan, Serves};
use self::unwind::Unwind;
use crate::auth::password::MqttAuth;
use crate::auth::token::WebAuth;
use crate::auth::Policy;
use crate::broker::health::{BrokerHealth, Probe, DOWN_GRACE};
use crate::broker::{self, BrokerAddrs, BrokerError, BrokerSettings};
use crate::config::Config;
use crate::gate::{self, Transport, Upstreams};
use crate::http::{self, AppState};
use crate::plugin::{PluginError, PluginStatuses, Plugins};
use crate::router::{Router, RouterSettings};
use crate::services::Services;
use crate::stats::Stats;
use crate::ws;

/// How long shutdown waits for WebSocket sessions to send their close frames.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{listener} listener cannot bind {addr}")]
    Bind {
        listener: &'static str,
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
    #[error("a startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Key(#[from] crate::auth::token::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    pub http_addr: SocketAddr,
    /// The MQTT addresses clients use, all of them the gate's.
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
    services: Services,
    /// The bridge's own listeners and their connections: WebSocket
    /// sessions and MQTT gate connections.
    tasks: TaskTracker,
    plugins: Plugins,
    cancel: CancellationToken,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Who may connect, made once from `[auth]`.
struct Access {
    policy: Arc<Policy>,
    web: Arc<WebAuth>,
    mqtt: Arc<MqttAuth>,
}

impl Access {
    fn from_config(config: &Config, stats: &Arc<Stats>) -> Result<Self, StartError> {
        let policy = Arc::new(Policy::from_config(&config.auth)?);
        if policy.is_enforced() && !policy.has_rules() {
            tracing::warn!("[auth] is configured without [[auth.acl]] rules: every web and plugin subscribe and publish will be refused.");
        }
        let web = Arc::new(WebAuth::new(
            config.auth.anonymous_web,
            config.auth.jwt.as_ref(),
        )?);
        if !config.auth.anonymous_web && config.auth.jwt.is_none() {
            tracing::warn!("Neither auth.anonymous_web nor [auth.jwt] is set: every web client will be refused.");
        }
        let mqtt = Arc::new(MqttAuth::new(
            &config.auth.users,
            config.auth.anonymous_mqtt,
            config.mqtt.max_pending_logins,
            config.mqtt.max_pending_logins_per_address,
            stats.clone(),
        ));
        if !config.auth.anonymous_mqtt && config.auth.users.is_empty() {
            tracing::warn!("Neither auth.anonymous_mqtt nor [[auth.users]] is set: every MQTT client will be refused.");
        }
        Ok(Self { policy, web, mqtt })
    }
}

impl Bridge {
    /// Binds every listener and starts serving. Cancelling `cancel` begins
    /// shutdown; [`Bridge::stopped`] waits for it to finish. A start that
    /// fails has stopped whatever it had started when this returns.
    pub async fn start(config: Config, cancel: CancellationToken) -> Result<Self, StartError> {
        let mut unwind = Unwind::new(cancel.child_token());
        match Self::start_with(Arc::new(config), &mut unwind).await {
            Ok(bridge) => Ok(bridge),
            Err(e) => {
                unwind.run().await;
                Err(e)
            }
        }
    }

    async fn start_with(config: Arc<Config>, unwind: &mut Unwind) -> Result<Self, StartError> {
        let cancel = unwind.cancel.clone();
        let tasks = unwind.tasks.clone();
        let stats = Arc::new(Stats::default());
        let access = Access::from_config(&config, &stats)?;
        let plan = Plan::new(&config, access.policy.is_enforced());
        let tls = if plan.uses_tls() {
            Some(crate::tls::server_config(&config.tls)?)
        } else {
            None
        };
        let bound = plan.bind()?;

        // The log first: everything else starts from where it stands. Its
        // files are read and checked off the async workers.
        let log_config = config.log.clone();
        let log = tokio::task::spawn_blocking(move || crate::log::open(&log_config)).await??;
        unwind.log = Some(log.clone());
        let router = Router::new(
            RouterSettings::from_config(&config, access.policy.clone()),
            stats.clone(),
            log.clone(),
        );

        // Starting the broker waits for its listeners: keep that off the
        // async workers. Its listeners are internal, behind the gate.
        let broker = {
            let (mqtt, router, auth) = (plan.broker.clone(), router.clone(), access.mqtt.clone());
            let settings = BrokerSettings::from_config(&config, access.policy.clone());
            let capacity = config.http.ingress_capacity;
            tokio::task::spawn_blocking(move || {
                broker::start(&mqtt, settings, &auth, &router, capacity)
            })
            .await??
        };
        // The broker gets the retained values back before anyone can ask
        // it for them.
        let restored = broker
            .restore_retained()
            .await
            .map_err(StartError::Restore)?;
        tracing::info!(
            kind = ?config.log.kind,
            epoch = %format_args!("{:x}", router.epoch()),
            next = log.next(),
            retained = restored,
            "Log ready."
        );
        let services = Services::new(&config, stats, access.policy.clone(), log, router, broker);

        // Presence marks offline what a previous run left online, before
        // anything of this run can report a device.
        if config.presence.enabled {
            let drivers: Vec<String> = config.plugins.iter().map(|p| p.name.clone()).collect();
            crate::presence::sweep(&services.presence, &services, &drivers).await;
        }

        // Plugins start once the broker is up (their first publishes have
        // somewhere to go) and before anyone is served, so a required
        // plugin that fails stops startup first.
        let plugins = Plugins::start(&config.plugins, &services).await?;
        let statuses = plugins.statuses();
        unwind.plugins = Some(plugins);

        let mut addrs = Vec::with_capacity(bound.len());
        let mut server_task = None;
        // Presence listens before any device can connect: it sees every
        // connect.
        if config.presence.enabled {
            tasks.spawn(crate::presence::run(
                services.presence.clone(),
                services.clone(),
                services.router.devices().subscribe(),
                statuses.clone(),
                cancel.clone(),
            ));
        }
        let gate = Arc::new(gate::Shared::new(
            &config,
            &services,
            if access.policy.is_enforced() {
                access.policy.clone()
            } else {
                Arc::new(Policy::allow_all())
            },
            Upstreams {
                v311: broker::loopback(services.broker.addrs().mqtt),
                v5: services.broker.addrs().mqtt_v5.map(broker::loopback),
            },
            access.mqtt.clone(),
        ));
        let gate_stop = cancel.child_token();
        let gate_slots = Arc::new(tokio::sync::Semaphore::new(config.mqtt.max_connections));
        for Bound {
            listen,
            addr,
            socket,
        } in bound
        {
            let bind_error = |source| StartError::Bind {
                listener: listen.name,
                addr: listen.addr,
                source,
            };
            let tls = tls.clone().filter(|_| listen.tls);
            match listen.serves {
                Serves::Http => {
                    let state = AppState {
                        services: services.clone(),
                        config: config.clone(),
                        cancel: cancel.clone(),
                        metrics: Arc::new(crate::metrics::registry(
                            services.stats.clone(),
                            statuses.clone(),
                            services.log.clone(),
                        )),
                        plugins: statuses.clone(),
                        auth: access.web.clone(),
                        publish_limiter: Arc::new(crate::limits::RateLimiter::new(
                            config.limits.clone(),
                        )),
                        sse_slots: Arc::new(tokio::sync::Semaphore::new(config.sse.max_streams)),
                        body_budget: Arc::new(tokio::sync::Semaphore::new(
                            config.http.max_body_bytes_in_flight,
                        )),
                    };
                    let server = http::serve(socket, state, tls).map_err(StartError::Http)?;
                    unwind.server = Some(server.handle());
                    server_task = Some((server.handle(), tokio::spawn(server)));
                    tracing::info!(addr = %addr, "HTTP listener ready (SSE, publish, health).");
                }
                Serves::WebSocket => {
                    let socket = tokio::net::TcpListener::from_std(socket).map_err(bind_error)?;
                    let context = ws::Context {
                        services: services.clone(),
                        config: Arc::new(config.websocket.clone()),
                        auth: access.web.clone(),
                        limits: config.limits.clone(),
                        max_payload_bytes: config.mqtt.max_payload_bytes,
                        tls,
                    };
                    tasks.spawn(ws::serve(socket, context, cancel.clone(), tasks.clone()));
                    tracing::info!(addr = %addr, path = %config.websocket.path, "WebSocket listener ready.");
                }
                Serves::Mqtt(carrier) => {
                    let socket = tokio::net::TcpListener::from_std(socket).map_err(bind_error)?;
                    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                    let transport = match (carrier, acceptor) {
                        (MqttCarrier::Tcp, _) => Transport::Tcp,
                        (MqttCarrier::WebSocket, _) => Transport::WebSocket,
                        (MqttCarrier::Tls, Some(tls)) => Transport::Tls(tls),
                        (MqttCarrier::WebSocketTls, Some(tls)) => Transport::WebSocketTls(tls),
                        // The plan gives every TLS carrier the certificate.
                        (MqttCarrier::Tls | MqttCarrier::WebSocketTls, None) => {
                            return Err(StartError::Http(std::io::Error::other(format!(
                                "{} listener has no certificate",
                                listen.name
                            ))))
                        }
                    };
                    tasks.spawn(gate::serve(
                        socket,
                        transport,
                        gate.clone(),
                        gate_slots.clone(),
                        gate_stop.clone(),
                        tasks.clone(),
                    ));
                    tracing::info!(listener = listen.name, addr = %addr, path = plan.mqtt_path.describe(), "MQTT listener ready.");
                }
            }
            addrs.push((listen.name, addr));
        }
        let Some((server, server_task)) = server_task else {
            return Err(StartError::Http(std::io::Error::other(
                "the plan has no http listener",
            )));
        };

        // A failed broker stops the gate at once, and the whole bridge once
        // `/healthz` has shown 503 for a moment (see `broker::health`).
        let health = services.broker.health().clone();
        tasks.spawn(stop_when_down(
            health.clone(),
            gate_stop.clone(),
            cancel.clone(),
        ));
        let broker_addrs = services.broker.addrs();
        let mut probes = vec![Probe {
            name: "mqtt",
            addr: broker::loopback(broker_addrs.mqtt),
            v5: false,
        }];
        probes.extend(broker_addrs.mqtt_v5.map(|addr| Probe {
            name: "mqtt_v5",
            addr: broker::loopback(addr),
            v5: true,
        }));
        let (login, password) = services.broker.login();
        tasks.spawn(broker::health::watch(
            health,
            probes,
            (login.to_owned(), password.to_owned()),
            cancel.clone(),
        ));

        let addr_of = |name| addrs.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
        let (Some(http_addr), Some(ws_addr), Some(mqtt_addr)) =
            (addr_of("http"), addr_of("websocket"), addr_of("mqtt"))
        else {
            return Err(StartError::Http(std::io::Error::other(
                "the plan lacks a listener every bridge has",
            )));
        };
        // Started: nothing is left to undo.
        unwind.server = None;
        unwind.log = None;
        let Some(plugins) = unwind.plugins.take() else {
            return Err(StartError::Http(std::io::Error::other(
                "the plugins were not started",
            )));
        };
        Ok(Self {
            http_addr,
            mqtt_addr,
            mqtt_v5_addr: addr_of("mqtt_v5"),
            mqtt_ws_addr: addr_of("mqtt_websocket"),
            mqtt_tls_addr: addr_of("mqtt_tls"),
            ws_addr,
            broker_addrs,
            services,
            tasks,
            plugins,
            cancel,
            server,
            server_task,
        })
    }

    pub fn router(&self) -> &Router {
        &self.services.router
    }

    /// The services every entry point was given.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Whether the embedded broker still works; once it has failed, the
    /// bridge stops on its own and the caller should exit non-zero.
    pub fn broker_health(&self) -> Arc<BrokerHealth> {
        self.services.broker.health().clone()
    }

    /// The gate's per-start login at the broker's internal listeners.
    #[doc(hidden)]
    pub fn broker_login(&self) -> (String, String) {
        let (login, password) = self.services.broker.login();
        (login.to_owned(), password.to_owned())
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
        self.tasks.close();
        self.server.stop(true).await;
        if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, self.tasks.wait())
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
        let log = self.services.log.clone();
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
