//! The services every entry point is given, made once at start.
//!
//! Each entry point (HTTP and SSE, WebSocket, the MQTT gate, plugins) is
//! handed these explicitly rather than reaching one through another: what
//! a module may touch is visible in what it is given.

use std::sync::Arc;

use crate::auth::Policy;
use crate::broker::Broker;
use crate::command::Commands;
use crate::gate::DeviceFilters;
use crate::log::Log;
use crate::presence::Presence;
use crate::router::Router;
use crate::stats::Stats;

impl Services {
    /// The services over `broker`, `router` and `log`, with the command
    /// and presence state `config` sizes, and no device filters yet.
    pub fn new(
        config: &crate::config::Config,
        stats: Arc<Stats>,
        policy: Arc<Policy>,
        log: Arc<dyn Log>,
        router: Router,
        broker: Broker,
    ) -> Self {
        Self {
            stats,
            policy,
            log,
            router,
            broker,
            device_filters: Arc::default(),
            commands: Arc::new(Commands::new(&config.limits)),
            presence: Arc::new(Presence::new(&config.presence)),
        }
    }
}

/// The bridge's shared services; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    /// Counters for everything accepted, delivered, refused or dropped.
    pub stats: Arc<Stats>,
    /// The access rules every subscribe, publish and delivery passes.
    pub policy: Arc<Policy>,
    /// Where every message is kept, in order (see `crate::log`).
    pub log: Arc<dyn Log>,
    /// Fan-out to web and plugin subscribers (reads only).
    pub router: Router,
    /// The one way into the embedded broker: publishes, and its health.
    pub broker: Broker,
    /// The filters the devices connected now hold (kept by the gate).
    pub device_filters: Arc<DeviceFilters>,
    /// Commands waiting for their device's answer.
    pub commands: Arc<Commands>,
    /// Every device's last known state (see `crate::presence`).
    pub presence: Arc<Presence>,
}
