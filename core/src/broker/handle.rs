//! The handle to the running broker: the one way into it for web clients
//! and plugins (publishes and, at start, the log's retained values), with
//! the census of what it holds, its health and its internal addresses.
//!
//! The router never talks to the broker: it reads what the broker routes
//! (the egress link calls [`crate::router::Router::dispatch_batch`]) and
//! fans it out. Everything that goes *into* the broker goes through this
//! handle, so its bounded ingress queue has one owner.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::census::Census;
use super::health::BrokerHealth;
use super::ingress::IngressRequest;
use super::BrokerAddrs;
use crate::auth::Policy;
use crate::log::Log;
use crate::stats::Stats;

/// What publishing into the broker is checked against.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// The access rules every web and plugin publish is checked against.
    pub policy: Arc<Policy>,
    /// Largest payload any publish may carry into the broker
    /// (`mqtt.max_payload_bytes`), whichever way it comes.
    pub max_payload_bytes: usize,
    /// What a publish's topic may be (`mqtt.max_topic_bytes`,
    /// `mqtt.max_topic_levels`).
    pub topics: crate::topic::Limits,
    /// Distinct topics and filters the broker may be given
    /// (`mqtt.max_topics`, `mqtt.max_filters`; see `broker::census`).
    pub max_topics: usize,
    pub max_filters: usize,
}

impl BrokerSettings {
    /// The settings `config` gives, with `policy` as the access rules.
    pub fn from_config(config: &crate::config::Config, policy: Arc<Policy>) -> Self {
        Self {
            policy,
            max_payload_bytes: config.mqtt.max_payload_bytes,
            topics: config.topic_limits(),
            max_topics: config.mqtt.max_topics,
            max_filters: config.mqtt.max_filters,
        }
    }
}

/// A cheap, cloneable handle to the embedded broker.
#[derive(Debug, Clone)]
pub struct Broker {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: BrokerSettings,
    pub(super) stats: Arc<Stats>,
    /// Asked before a publish is accepted: nothing is taken that the log
    /// could not keep.
    pub(super) log: Arc<dyn Log>,
    pub(super) census: Arc<Census>,
    pub(super) ingress: mpsc::Sender<IngressRequest>,
    health: Arc<BrokerHealth>,
    addrs: BrokerAddrs,
    /// The gate's per-start login at the internal listeners.
    login: (String, String),
}

impl Broker {
    /// A handle whose publishes go to `ingress` (read by the ingress link).
    pub(super) fn new(
        settings: BrokerSettings,
        (stats, log): (Arc<Stats>, Arc<dyn Log>),
        ingress: mpsc::Sender<IngressRequest>,
        (health, addrs, login): (Arc<BrokerHealth>, BrokerAddrs, (String, String)),
    ) -> Self {
        let census = Arc::new(Census::new(settings.max_topics, settings.max_filters));
        Self {
            shared: Arc::new(Shared {
                settings,
                stats,
                log,
                census,
                ingress,
                health,
                addrs,
                login,
            }),
        }
    }

    /// A handle with no broker behind it, for unit tests of what is checked
    /// before the ingress queue: the returned receiver is that queue.
    #[cfg(test)]
    pub(crate) fn for_tests(
        settings: BrokerSettings,
        stats: Arc<Stats>,
        log: Arc<dyn Log>,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<IngressRequest>) {
        let (tx, rx) = mpsc::channel(capacity);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let addrs = BrokerAddrs {
            mqtt: addr,
            mqtt_v5: Some(addr),
            mqtt_ws: None,
        };
        let broker = Self::new(
            settings,
            (stats, log),
            tx,
            (BrokerHealth::new(), addrs, Default::default()),
        );
        (broker, rx)
    }

    /// The distinct topics and filters the broker holds, for every way into
    /// it to ask before it gives the broker a new one.
    pub fn census(&self) -> &Arc<Census> {
        &self.shared.census
    }

    /// Whether the broker still works (see `broker::health`).
    pub fn health(&self) -> &Arc<BrokerHealth> {
        &self.shared.health
    }

    /// The broker's internal listeners, behind the gate.
    pub fn addrs(&self) -> BrokerAddrs {
        self.shared.addrs
    }

    /// The gate's login at the internal listeners: a secret made at each
    /// start (see `auth::password`).
    pub fn login(&self) -> (&str, &str) {
        (&self.shared.login.0, &self.shared.login.1)
    }

    /// Gives the broker back every retained value the log holds, and waits
    /// until it has them all: called at start, before any listener opens,
    /// so no device or web client ever sees the broker without them. They
    /// are marked restored, so the log does not take them a second time.
    /// Returns how many were restored.
    pub async fn restore_retained(&self) -> Result<usize, &'static str> {
        let values = self.shared.log.retained();
        let mut confirms = Vec::with_capacity(values.len());
        for record in values {
            let (confirm, confirmed) = oneshot::channel();
            let request = IngressRequest {
                topic: record.topic.into(),
                payload: record.payload,
                qos: record.qos,
                retain: true,
                restored: true,
                confirm: Some(confirm),
            };
            self.shared
                .ingress
                .send(request)
                .await
                .map_err(|_| "the broker's ingress link is closed")?;
            confirms.push(confirmed);
        }
        let count = confirms.len();
        for confirmed in confirms {
            confirmed
                .await
                .map_err(|_| "the broker did not confirm a restored retained value")?;
        }
        Ok(count)
    }
}
