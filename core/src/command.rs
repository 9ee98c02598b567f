//! Commands: a message published to a device that waits for the device's
//! answer (`POST /command/{topic}`, the WebSocket `command` op).
//!
//! The answer comes on `{topic}/reply`, the convention every device can
//! follow (MQTT 3.1.1 has no response topic; `docs/commands.md`). Before
//! the command is published the bridge subscribes to that topic for the
//! client, so a reply cannot come too early to be seen; the first message
//! published there after it is the answer. The client needs the right to
//! publish on the topic and to read the reply topic, as if it published
//! and subscribed itself: a command is never a way to read what the rules
//! deny. Retained values on the reply topic are not answers and are
//! skipped.
//!
//! One command per topic is in flight at a time: a second one for the same
//! topic is refused with 409 `command-in-flight` rather than queued, since
//! a reply names no command and could not be told apart. Commands waiting
//! are bounded in total and per client (`limits.max_pending_commands`,
//! `limits.max_pending_commands_per_client`); each holds one bounded
//! subscription, so a device flooding replies ends that subscription
//! instead of growing memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{Action, Principal};
use crate::broker::PublishError;
use crate::config::LimitsConfig;
use crate::router::{Delivery, FilterBounds, QueueBound, SubscribeError};
use crate::services::Services;
use crate::stats::{Protocol, Stats};
use crate::topic::TopicError;

/// Replies queued for one waiting command before its subscription is
/// ended: the first is the answer, the rest are a device repeating itself.
const REPLY_QUEUE: usize = 8;

/// The suffix of the topic a device answers a command on.
pub const REPLY_SUFFIX: &str = "/reply";

/// Commands waiting for their answer.
#[derive(Debug)]
pub struct Commands {
    default_timeout_ms: u64,
    max_timeout_ms: u64,
    max_total: usize,
    max_per_client: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Topics with a command in flight.
    topics: HashSet<String>,
    /// Commands in flight by client; an entry lives while above zero.
    clients: HashMap<String, usize>,
}

/// One command to send.
#[derive(Debug)]
pub struct Command<'a> {
    pub protocol: Protocol,
    pub principal: &'a Principal,
    /// Who counts against `limits.max_pending_commands_per_client`: a user,
    /// or an address when anonymous.
    pub client: String,
    pub topic: &'a str,
    pub payload: Bytes,
    /// `None`: `limits.command_timeout_ms`.
    pub timeout_ms: Option<u64>,
}

/// The device's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("timeout_ms is {asked}; at most {max} is allowed (limits.max_command_timeout_ms)")]
    TimeoutTooLong { asked: u64, max: u64 },
    #[error("invalid command topic `{topic}`: {source}")]
    Topic { topic: String, source: TopicError },
    #[error("no device, plugin or web client is subscribed to `{0}`")]
    NoSubscriber(String),
    #[error("a command for `{0}` is already waiting for its answer; retry once it has one")]
    InFlight(String),
    #[error(
        "this client has {0} commands waiting already (limits.max_pending_commands_per_client)"
    )]
    TooManyForClient(usize),
    #[error("{0} commands are waiting already (limits.max_pending_commands); retry shortly")]
    TooMany(usize),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the answer could not be read: {0}")]
    ReplyDenied(crate::auth::Denied),
    #[error("cannot wait for the reply: {0}")]
    Subscribe(#[from] SubscribeError),
    #[error("no answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("the device answered faster than its reply could be taken; retry")]
    Flooded,
}

impl CommandError {
    /// The stable code web clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TimeoutTooLong { .. } => "invalid-timeout",
            Self::Topic { .. } => "invalid-topic",
            Self::NoSubscriber(_) => "no-subscriber",
            Self::InFlight(_) => "command-in-flight",
            Self::TooManyForClient(_) => "rate-limited",
            Self::TooMany(_) => "busy",
            Self::Publish(_) => "publish-refused",
            Self::ReplyDenied(_) => "forbidden",
            Self::Subscribe(_) => "subscription-ended",
            Self::Timeout { .. } => "device-timeout",
            Self::Flooded => "subscription-ended",
        }
    }
}

/// A place among the commands in flight; given back on drop.
struct Place<'a> {
    commands: &'a Commands,
    topic: String,
    client: String,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut waiting = self.commands.lock();
        waiting.topics.remove(&self.topic);
        if let Some(count) = waiting.clients.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                waiting.clients.remove(&self.client);
            }
        }
    }
}

impl Commands {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            default_timeout_ms: limits.command_timeout_ms,
            max_timeout_ms: limits.max_command_timeout_ms,
            max_total: limits.max_pending_commands.max(1),
            max_per_client: limits.max_pending_commands_per_client.max(1),
            waiting: Mutex::default(),
        }
    }

    /// Publishes `command` and waits for its answer.
    pub async fn send(
        &self,
        services: &Services,
        command: Command<'_>,
    ) -> Result<Reply, CommandError> {
        let stats = &services.stats;
        let command_protocol = command.protocol;
        let result = self.exchange(services, command).await;
        match &result {
            Ok(_) => Stats::incr(&stats.commands_answered),
            Err(CommandError::Timeout { .. }) => Stats::incr(&stats.commands_timed_out),
            Err(CommandError::NoSubscriber(_)) => Stats::incr(&stats.commands_unrouted),
            Err(
                CommandError::InFlight(_)
                | CommandError::TooManyForClient(_)
                | CommandError::TooMany(_),
            ) => Stats::incr(&stats.commands_refused),
            Err(CommandError::ReplyDenied(_)) => {
                stats.deny(command_protocol, crate::auth::Action::Subscribe);
                Stats::incr(&stats.commands_failed);
            }
            Err(CommandError::Flooded) => {
                // The replies that overflowed the subscription are lost.
                Stats::incr(&stats.commands_failed);
            }
            Err(_) => Stats::incr(&stats.commands_failed),
        }
        result
    }

    async fn exchange(
        &self,
        services: &Services,
        command: Command<'_>,
    ) -> Result<Reply, CommandError> {
        let timeout_ms = command.timeout_ms.unwrap_or(self.default_timeout_ms);
        if timeout_ms > self.max_timeout_ms {
            return Err(CommandError::TimeoutTooLong {
                asked: timeout_ms,
                max: self.max_timeout_ms,
            });
        }
        let topic = command.topic;
        let reply_topic = format!("{topic}{REPLY_SUFFIX}");
        // The reply topic is checked too: it is one level deeper and six
        // bytes longer than the command's.
        let limits = services.router.topic_limits();
        for checked in [topic, reply_topic.as_str()] {
            limits
                .topic(checked)
                .map_err(|source| CommandError::Topic {
                    topic: topic.chars().take(256).collect(),
                    source,
                })?;
        }
        // The rights first: who may not publish there, or read the answer,
        // learns nothing of who listens.
        services
            .policy
            .authorize(command.principal, Action::Publish, topic)
            .map_err(PublishError::from)?;
        services
            .policy
            .authorize(command.principal, Action::Subscribe, &reply_topic)
            .map_err(CommandError::ReplyDenied)?;
        if !services.router.has_subscriber(topic) && !services.device_filters.any_match(topic) {
            return Err(CommandError::NoSubscriber(topic.to_owned()));
        }
        let _place = self.take_place(topic, command.client)?;
        let mut replies = services.router.open(QueueBound {
            messages: REPLY_QUEUE,
            bytes: usize::MAX,
        });
        // As the client's own subscription: rules that allow the reply
        // topic only per message still apply to each reply.
        replies.add_from(
            command.principal,
            std::slice::from_ref(&reply_topic),
            crate::router::Start::Now,
            FilterBounds {
                max_filters: 1,
                max_filter_bytes: usize::MAX,
                budget_bytes: usize::MAX,
            },
        )?;
        services
            .broker
            .publish(
                command.protocol,
                command.principal,
                topic,
                command.payload,
                false,
                false,
            )
            .await?;
        let wait = async {
            while let Some(delivery) = replies.next().await {
                if let Delivery::Message(message) = delivery {
                    if replies.last_was_live() {
                        return Ok(Reply {
                            topic: reply_topic.clone(),
                            payload: message.payload.clone(),
                        });
                    }
                }
            }
            Err(CommandError::Flooded)
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), wait)
            .await
            .unwrap_or(Err(CommandError::Timeout { timeout_ms }))
    }

    fn take_place(&self, topic: &str, client: String) -> Result<Place<'_>, CommandError> {
        let mut waiting = self.lock();
        if waiting.topics.contains(topic) {
            return Err(CommandError::InFlight(topic.to_owned()));
        }
        if waiting.topics.len() >= self.max_total {
            return Err(CommandError::TooMany(self.max_total));
        }
        let count = waiting.clients.get(&client).copied().unwrap_or(0);
        if count >= self.max_per_client {
            return Err(CommandError::TooManyForClient(self.max_per_client));
        }
        waiting.topics.insert(topic.to_owned());
        *waiting.clients.entry(client.clone()).or_insert(0) += 1;
        Ok(Place {
            commands: self,
            topic: topic.to_owned(),
            client,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(total: usize, per_client: usize) -> Commands {
        Commands::new(&LimitsConfig {
            max_pending_commands: total,
            max_pending_commands_per_client: per_client,
            ..LimitsConfig::default()
        })
    }

    /// One command per topic, a bound per client and one in total; each
    /// place is given back when its command ends.
    #[test]
    fn places_are_bounded_per_topic_client_and_in_total() {
        let commands = commands(3, 2);
        let a = commands.take_place("t/1", "ann".into()).expect("first");
        assert!(matches!(
            commands.take_place("t/1", "bob".into()),
            Err(CommandError::InFlight(_))
        ));
        let b = commands.take_place("t/2", "ann".into()).expect("second");
        assert!(matches!(
            commands.take_place("t/3", "ann".into()),
            Err(CommandError::TooManyForClient(2))
        ));
        let c = commands.take_place("t/3", "bob".into()).expect("bob's");
        assert!(matches!(
            commands.take_place("t/4", "cy".into()),
            Err(CommandError::TooMany(3))
        ));
        drop((a, b, c));
        let waiting = commands.lock();
        assert!(waiting.topics.is_empty() && waiting.clients.is_empty());
    }
}
