//! Publishing into the broker from web clients and plugins: the topic
//! check, the access check and a bounded hand-off to the ingress link.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::handle::Broker;
use super::ingress::IngressRequest;
use super::name;
use crate::auth::{Action, Denied, Principal};
use crate::stats::{Limit, Protocol, Stats};
use crate::topic::{self, TopicError};

/// How long a publish waits for the broker's confirmation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic `{topic}`: {source}")]
    InvalidTopic { topic: String, source: TopicError },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("topics under `$tidewater/` are the bridge's own: nobody else publishes there")]
    Reserved,
    #[error(
        "the payload is {size} bytes; the broker takes at most {max} (mqtt.max_payload_bytes)"
    )]
    TooLarge { size: usize, max: usize },
    #[error("the topic is {size} bytes; at most {max} are allowed (mqtt.max_topic_bytes)")]
    TopicTooLong { size: usize, max: usize },
    #[error("the topic has {levels} levels; at most {max} are allowed (mqtt.max_topic_levels)")]
    TopicTooDeep { levels: usize, max: usize },
    #[error("the broker holds mqtt.max_topics distinct topics already; publish on one of them")]
    TopicLimit,
    #[error("the broker's ingress queue is full; retry shortly")]
    Busy,
    #[error(
        "the log cannot store messages now (its storage is failing, e.g. a full disk); retry later"
    )]
    StorageFull,
    #[error("the broker is not accepting publishes")]
    Unavailable,
    #[error("the broker did not confirm the publish within {0:?}")]
    Timeout(Duration),
}

impl Broker {
    /// Sends a publish into the broker. With `confirm`, returns once the
    /// broker has appended it to its log (a QoS 1 publish, as subscribers
    /// see it); otherwise once it is queued (QoS 0).
    pub async fn publish(
        &self,
        protocol: Protocol,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        retain: bool,
        confirm: bool,
    ) -> Result<(), PublishError> {
        let (reply, confirmation) = if confirm {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let qos = u8::from(confirm);
        self.enqueue(protocol, principal, topic, payload, (qos, retain), reply)?;
        if let Some(confirmation) = confirmation {
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirmation).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(PublishError::Unavailable),
                Err(_) => return Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
            }
        }
        Ok(())
    }

    /// Queues a publish for the broker without waiting at all: for callers
    /// outside the async runtime, such as plugin threads. A full queue is
    /// [`PublishError::Busy`]. `qos` (0 to 2) is what subscribers are told
    /// it was published with.
    pub fn try_publish(
        &self,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<(), PublishError> {
        let meta = (qos.min(2), retain);
        self.enqueue(Protocol::Plugin, principal, topic, payload, meta, None)
    }

    /// Publishes one of the bridge's own messages (presence), on a topic
    /// under `$tidewater/` that no access rule governs, waiting for room
    /// in the ingress queue rather than dropping it. A topic past the
    /// limits or the census is refused (the caller counts it).
    pub async fn publish_own(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), PublishError> {
        let request = self.own_request(topic, payload, retain)?;
        self.shared
            .ingress
            .send(request)
            .await
            .map_err(|_| PublishError::Unavailable)
    }

    /// [`Broker::publish_own`] without waiting: for callers outside the
    /// async runtime (a driver reporting presence). A full queue is
    /// [`PublishError::Busy`].
    pub fn try_publish_own(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), PublishError> {
        let request = self.own_request(topic, payload, retain)?;
        match self.shared.ingress.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PublishError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Unavailable),
        }
    }

    /// The checks of the bridge's own publishes, and their request.
    fn own_request(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<IngressRequest, PublishError> {
        self.shared
            .settings
            .topics
            .topic(topic)
            .map_err(|source| PublishError::InvalidTopic {
                topic: topic.chars().take(256).collect(),
                source,
            })?;
        if !self.shared.log.accepting() {
            return Err(PublishError::StorageFull);
        }
        if !self.shared.census.admit_topic(&name::topic_in(topic)) {
            return Err(PublishError::TopicLimit);
        }
        Ok(IngressRequest {
            topic: topic.to_owned(),
            payload,
            qos: 1,
            retain,
            restored: false,
            confirm: None,
        })
    }

    /// Checks and queues a publish; a refusal by a limit is counted for
    /// `protocol`.
    fn enqueue(
        &self,
        protocol: Protocol,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        (qos, retain): (u8, bool),
        confirm: Option<oneshot::Sender<()>>,
    ) -> Result<(), PublishError> {
        match self.shared.settings.topics.topic(topic) {
            Ok(()) => {}
            Err(TopicError::TooLong { len, max }) => {
                self.shared.stats.limit(protocol, Limit::TopicLength);
                return Err(PublishError::TopicTooLong { size: len, max });
            }
            Err(TopicError::TooManyLevels { levels, max }) => {
                self.shared.stats.limit(protocol, Limit::TopicLevels);
                return Err(PublishError::TopicTooDeep { levels, max });
            }
            Err(source) => {
                return Err(PublishError::InvalidTopic {
                    topic: topic.chars().take(256).collect(),
                    source,
                })
            }
        }
        if topic::is_reserved(topic) {
            return Err(PublishError::Reserved);
        }
        self.shared
            .settings
            .policy
            .authorize(principal, Action::Publish, topic)?;
        let max = self.shared.settings.max_payload_bytes;
        if payload.len() > max {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        // Nothing is accepted that the log could not keep.
        if !self.shared.log.accepting() {
            self.shared.stats.limit(protocol, Limit::Storage);
            return Err(PublishError::StorageFull);
        }
        // Last, so that a refused publish takes no room.
        if !self.shared.census.admit_topic(&name::topic_in(topic)) {
            self.shared.stats.limit(protocol, Limit::Topics);
            return Err(PublishError::TopicLimit);
        }
        let request = IngressRequest {
            topic: topic.to_owned(),
            payload,
            qos,
            retain,
            restored: false,
            confirm,
        };
        let stats = &self.shared.stats;
        match self.shared.ingress.try_send(request) {
            Ok(()) => {
                Stats::incr(&stats.publishes_accepted);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Stats::incr(&stats.publishes_rejected_busy);
                Err(PublishError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::auth::{Policy, Principal};
    use crate::broker::handle::BrokerSettings;

    fn broker() -> (Broker, tokio::sync::mpsc::Receiver<IngressRequest>) {
        let settings = BrokerSettings {
            policy: Arc::new(Policy::allow_all()),
            max_payload_bytes: 1024 * 1024,
            topics: crate::topic::Limits {
                max_bytes: 1024,
                max_levels: 8,
            },
            max_topics: 1_000,
            max_filters: 1_000,
        };
        let log = Arc::new(crate::log::memory::MemoryLog::new(1));
        Broker::for_tests(settings, Arc::default(), log, 16)
    }

    /// A publish with an invalid topic never reaches the broker queue.
    #[tokio::test]
    async fn publish_checks_the_topic() {
        let (broker, mut ingress) = broker();
        let err = broker
            .publish(
                Protocol::Http,
                &Principal::Anonymous,
                "a/+",
                Bytes::new(),
                false,
                false,
            )
            .await
            .expect_err("wildcard refused");
        assert!(matches!(err, PublishError::InvalidTopic { .. }));
        assert!(ingress.try_recv().is_err(), "nothing was queued");
    }

    /// Every way in (HTTP, WebSocket, plugins) is held to the broker's
    /// payload limit here, whatever its own checks: a larger payload never
    /// reaches the broker queue, and one at the limit does.
    #[test]
    fn publish_checks_the_payload_size() {
        let (broker, mut ingress) = broker();
        let max = 1024 * 1024;
        let err = broker
            .try_publish(
                &Principal::Anonymous,
                "a",
                Bytes::from(vec![0; max + 1]),
                0,
                false,
            )
            .expect_err("too large");
        assert!(matches!(err, PublishError::TooLarge { size, .. } if size == max + 1));
        assert!(ingress.try_recv().is_err(), "nothing was queued");
        broker
            .try_publish(
                &Principal::Anonymous,
                "a",
                Bytes::from(vec![0; max]),
                0,
                false,
            )
            .expect("at the limit");
        assert!(ingress.try_recv().is_ok());
    }

    /// A full ingress queue is a refusal the caller sees and the counters
    /// show, never a publish that waits or vanishes.
    #[test]
    fn a_full_ingress_queue_is_busy_and_counted() {
        let (broker, _ingress) = broker();
        let publish = || broker.try_publish(&Principal::Anonymous, "a", Bytes::new(), 0, false);
        for _ in 0..16 {
            publish().expect("room in the queue");
        }
        assert!(matches!(publish(), Err(PublishError::Busy)));
        let stats = broker.shared.stats.snapshot();
        assert_eq!(stats.publishes_accepted, 16);
        assert_eq!(stats.publishes_rejected_busy, 1);
    }
}
