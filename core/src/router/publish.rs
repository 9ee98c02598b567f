//! Publishing into the broker from web clients and plugins: the topic
//! check, the access check and a bounded hand-off to the ingress link.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{IngressRequest, Router};
use crate::auth::{Action, Denied, Principal};
use crate::broker::name;
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
    #[error(
        "the payload is {size} bytes; the broker takes at most {max} (mqtt.max_payload_bytes)"
    )]
    TooLarge { size: usize, max: usize },
    #[error("the topic is {size} bytes; at most {max} are allowed (mqtt.max_topic_bytes)")]
    TopicTooLong { size: usize, max: usize },
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

impl Router {
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
        topic::validate_topic(topic).map_err(|source| PublishError::InvalidTopic {
            topic: topic.chars().take(256).collect(),
            source,
        })?;
        if topic.len() > self.shared.max_topic_bytes {
            self.stats().limit(protocol, Limit::TopicLength);
            return Err(PublishError::TopicTooLong {
                size: topic.len(),
                max: self.shared.max_topic_bytes,
            });
        }
        self.policy().authorize(principal, Action::Publish, topic)?;
        let max = self.shared.max_payload_bytes;
        if payload.len() > max {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        // Nothing is accepted that the log could not keep.
        if !self.shared.log.accepting() {
            self.stats().limit(protocol, Limit::Storage);
            return Err(PublishError::StorageFull);
        }
        // Last, so that a refused publish takes no room.
        if !self.shared.census.admit_topic(&name::topic_in(topic)) {
            self.stats().limit(protocol, Limit::Topics);
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
        let stats = self.stats();
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
