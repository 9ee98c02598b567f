//! One WebSocket session: requests in, deliveries and replies out, pings
//! while quiet, and the close codes that say why it ended.
//!
//! A session is one router subscriber whose filters grow and shrink with
//! `subscribe`/`unsubscribe`. Deliveries that are ready together are written
//! together and flushed once. Every wait on the client is bounded: a write
//! that cannot finish within the idle timeout ends the session.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as Frame, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, ProtocolError, Request};
use super::Context;
use crate::auth::{Action, Principal};
use crate::broker::PublishError;
use crate::config::WebSocketConfig;
use crate::limits::TokenBucket;
use crate::router::{Delivery, FilterBounds, QueueBound, Start, SubscribeError, Subscription};
use crate::services::Services;
use crate::stats::{Limit, Protocol, Stats};

/// Deliveries written before one flush.
const MAX_BATCH: usize = 64;

/// A command waiting for its answer: resolves to the frame to send.
type Waiting = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Why a session ended, and the close frame it sends (if any).
struct Ending {
    code: CloseCode,
    reason: &'static str,
}

pub struct Session<S> {
    ws: WebSocketStream<S>,
    subscription: Subscription,
    services: Services,
    config: Arc<WebSocketConfig>,
    principal: Principal,
    /// When the client's token stops being accepted; the session ends then.
    valid_until: Option<Instant>,
    /// The session's publish allowance; `None` when unlimited.
    bucket: Option<TokenBucket>,
    max_payload_bytes: usize,
    /// Commands waiting for their answers, which come back as frames in
    /// whatever order they arrive (each carries its `ref`). At most
    /// `limits.max_pending_commands_per_client` here: past it a command is
    /// refused at once, before it is even started, so a client sending
    /// commands faster than their answers are written cannot grow this.
    commands: futures_util::stream::FuturesUnordered<Waiting>,
    max_commands: usize,
    /// Who this session is among clients with commands waiting.
    client: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(
        ws: WebSocketStream<S>,
        context: &Context,
        principal: Principal,
        peer: std::net::SocketAddr,
    ) -> Self {
        // As HTTP clients count: by user, anonymous ones by address, so
        // one host's sessions share one allowance of waiting commands.
        let client = match &principal {
            Principal::User(identity) => format!("user:{}", identity.name),
            _ => format!("addr:{}", peer.ip()),
        };
        let services = context.services.clone();
        let config = context.config.clone();
        let subscription = services.router.open(QueueBound {
            messages: config.queue_capacity,
            bytes: config.queue_max_bytes,
        });
        Self {
            ws,
            subscription,
            services,
            config,
            valid_until: principal.valid_until().map(Instant::from_std),
            principal,
            bucket: TokenBucket::new(&context.limits, std::time::Instant::now()),
            max_payload_bytes: context.max_payload_bytes,
            commands: futures_util::stream::FuturesUnordered::new(),
            client,
            max_commands: context.limits.max_pending_commands_per_client.max(1),
        }
    }

    /// Serves the session until the client leaves, it misbehaves, it falls
    /// too far behind, or `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let ending = self.serve(&cancel).await;
        if let Some(Ending { code, reason }) = ending {
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            let idle = self.idle_timeout();
            // Best effort: the peer may already be gone.
            let _ = tokio::time::timeout(idle, self.ws.close(Some(close))).await;
        }
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.idle_timeout_secs)
    }

    async fn serve(&mut self, cancel: &CancellationToken) -> Option<Ending> {
        let mut ping = tokio::time::interval(Duration::from_secs(self.config.ping_interval_secs));
        ping.reset();
        let mut last_heard = Instant::now();
        let valid_until = self.valid_until;
        let expiry = async move {
            match valid_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        // One wait for the session's life, not a new one per event.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    return Some(Ending { code: CloseCode::Away, reason: "server shutting down" });
                }
                () = &mut expiry => {
                    return Some(Ending {
                        code: CloseCode::Policy,
                        reason: "token expired: reconnect with a fresh token",
                    });
                }
                frame = self.ws.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => return None,
                        Some(Ok(frame)) => {
                            if let Some(ending) = self.on_frame(frame).await {
                                return ending;
                            }
                        }
                        Some(Err(e)) => {
                            let ending = read_error(e);
                            if ending.as_ref().is_some_and(|e| e.code == CloseCode::Size) {
                                self.services.stats.limit(Protocol::WebSocket, Limit::Payload);
                            }
                            return ending;
                        }
                    }
                }
                delivery = self.subscription.next() => {
                    let Some(delivery) = delivery else {
                        // The router ended the subscription: its queue was full.
                        return Some(Ending {
                            code: CloseCode::Again,
                            reason: "too slow: the session's queue overflowed; reconnect with since",
                        });
                    };
                    if let Err(ending) = self.write_batch(delivery).await {
                        return ending;
                    }
                }
                Some(answer) = self.commands.next(), if !self.commands.is_empty() => {
                    if let Err(ending) = self.write(Frame::Text(answer.into())).await {
                        return ending;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= self.idle_timeout() {
                        return Some(Ending { code: CloseCode::Policy, reason: "idle timeout" });
                    }
                    if let Err(ending) = self.write(Frame::Ping(Default::default())).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Handles one frame; `Some` ends the session.
    async fn on_frame(&mut self, frame: Frame) -> Option<Option<Ending>> {
        let reply = match frame {
            Frame::Text(text) => match self.on_request(&text).await {
                Some(reply) => reply,
                // A command: its answer comes later.
                None => return None,
            },
            Frame::Binary(_) => protocol::error(
                None,
                ProtocolError::new("binary-not-supported", "send requests as JSON text frames"),
            ),
            // tungstenite answers pings itself; a close is answered on the
            // next write, and the stream then ends.
            Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => return None,
            Frame::Close(_) => return None,
        };
        self.write(Frame::Text(reply.into())).await.err()
    }

    /// The reply to one request; `None` for a command, whose answer is
    /// sent once it comes.
    async fn on_request(&mut self, text: &str) -> Option<String> {
        let (reference, request) = protocol::parse(text);
        let result = match request {
            Ok(request) => self.handle(request, &reference).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(Reply::Ack) => Some(protocol::ack(reference)),
            Ok(Reply::Pong) => Some(protocol::pong(reference)),
            Ok(Reply::Later) => None,
            Err(error) => Some(protocol::error(reference, error)),
        }
    }

    /// Starts a command; its answer (or refusal) joins `commands`.
    fn command(
        &mut self,
        reference: Option<serde_json::Value>,
        topic: String,
        payload: bytes::Bytes,
        timeout_ms: Option<u64>,
    ) {
        let services = self.services.clone();
        let principal = self.principal.clone();
        let client = self.client.clone();
        self.commands.push(Box::pin(async move {
            let sent = services
                .commands
                .send(
                    &services,
                    crate::command::Command {
                        protocol: Protocol::WebSocket,
                        principal: &principal,
                        client,
                        topic: &topic,
                        payload,
                        timeout_ms,
                    },
                )
                .await;
            match sent {
                Ok(reply) => protocol::command_reply(reference, &reply.topic, &reply.payload),
                Err(error) => {
                    if matches!(
                        error,
                        crate::command::CommandError::Publish(
                            PublishError::Denied(_) | PublishError::Reserved
                        )
                    ) {
                        services.stats.deny(Protocol::WebSocket, Action::Publish);
                    }
                    protocol::error(reference, command_error(error))
                }
            }
        }));
    }

    /// Takes one publish from the session's allowance, or the refusal.
    fn take_publish(&mut self) -> Result<(), ProtocolError> {
        let Some(bucket) = &mut self.bucket else {
            return Ok(());
        };
        bucket.take(std::time::Instant::now()).map_err(|wait| {
            self.services.stats.limit(Protocol::WebSocket, Limit::Rate);
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            ProtocolError::new(
                "rate-limited",
                format!("more publishes than limits.publish_rate allows; retry in {wait_ms} ms"),
            )
            .with("retry_after_ms", wait_ms)
        })
    }

    async fn handle(
        &mut self,
        request: Request,
        reference: &Option<serde_json::Value>,
    ) -> Result<Reply, ProtocolError> {
        match request {
            Request::Subscribe { topics, since } => {
                // An id resumes after it; a time replays from then on.
                let start = match since.filter(|s| !s.is_empty()) {
                    None => Start::Now,
                    Some(text) => crate::router::start::parse(&text, crate::router::now_ms())
                        .map_err(|e| ProtocolError::new("malformed-id", e.to_string()))?,
                };
                self.subscription
                    .add_from(
                        &self.principal,
                        &topics,
                        start,
                        FilterBounds {
                            max_filters: self.config.max_filters,
                            max_filter_bytes: self.config.max_message_bytes,
                            budget_bytes: self.config.filter_budget_bytes,
                        },
                    )
                    .map_err(|e| self.subscribe_error(e))?;
                Ok(Reply::Ack)
            }
            Request::Unsubscribe { topics } => {
                self.subscription.remove(&topics);
                Ok(Reply::Ack)
            }
            Request::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                let stats = &self.services.stats;
                if payload.len() > self.max_payload_bytes {
                    stats.limit(Protocol::WebSocket, Limit::Payload);
                    return Err(ProtocolError::new(
                        "payload-too-large",
                        format!(
                            "the payload is {} bytes; the broker takes at most {} (mqtt.max_payload_bytes)",
                            payload.len(),
                            self.max_payload_bytes
                        ),
                    ));
                }
                self.take_publish()?;
                self.services
                    .broker
                    .publish(
                        crate::stats::Protocol::WebSocket,
                        &self.principal,
                        &topic,
                        payload,
                        retain,
                        qos == 1,
                    )
                    .await
                    .map_err(|e| self.publish_error(e))?;
                Stats::incr(&self.services.stats.ws_publishes);
                Ok(Reply::Ack)
            }
            Request::Ping => Ok(Reply::Pong),
            Request::Command {
                topic,
                payload,
                timeout_ms,
            } => {
                if self.commands.len() >= self.max_commands {
                    Stats::incr(&self.services.stats.commands_refused);
                    return Err(ProtocolError::new(
                        "rate-limited",
                        format!(
                            "{} commands of this session are waiting already (limits.max_pending_commands_per_client)",
                            self.max_commands
                        ),
                    ));
                }
                self.take_publish()?;
                self.command(reference.clone(), topic, payload, timeout_ms);
                Ok(Reply::Later)
            }
        }
    }

    /// Writes `first` and whatever else is ready, then flushes once.
    async fn write_batch(&mut self, first: Delivery) -> Result<(), Option<Ending>> {
        // Receipt times of the live messages, timed once the flush is done.
        let mut live = Vec::new();
        let mut frames = vec![self.frame_for(first, &mut live)];
        while frames.len() < MAX_BATCH {
            let Some(next) = self.subscription.try_next() else {
                break;
            };
            frames.push(self.frame_for(next, &mut live));
        }
        let count = frames.len() as u64;
        let idle = self.idle_timeout();
        let ws = &mut self.ws;
        let write = async move {
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Ok(Ok(())) => {
                let stats = &self.services.stats;
                Stats::add(&stats.ws_messages_out, count);
                for received in live {
                    stats.latency_ws.observe(received.elapsed());
                }
                Ok(())
            }
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(Some(Ending {
                code: CloseCode::Policy,
                reason: "write timeout: the client is not reading",
            })),
        }
    }

    async fn write(&mut self, frame: Frame) -> Result<(), Option<Ending>> {
        match tokio::time::timeout(self.idle_timeout(), self.ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(Some(Ending {
                code: CloseCode::Policy,
                reason: "write timeout: the client is not reading",
            })),
        }
    }
}

enum Reply {
    Ack,
    Pong,
    /// A command: its answer is sent when it comes.
    Later,
}

impl<S> Session<S> {
    /// The error for a refused subscribe, counted if the rules refused it.
    fn subscribe_error(&self, error: SubscribeError) -> ProtocolError {
        let stats = &self.services.stats;
        if let SubscribeError::Denied(_) = error {
            stats.deny(Protocol::WebSocket, Action::Subscribe);
        }
        if let Some(limit) = error.limit() {
            stats.limit(Protocol::WebSocket, limit);
        }
        subscribe_error(error)
    }

    /// The error for a refused publish, counted if the rules refused it.
    fn publish_error(&self, error: PublishError) -> ProtocolError {
        if matches!(error, PublishError::Denied(_) | PublishError::Reserved) {
            self.services
                .stats
                .deny(Protocol::WebSocket, Action::Publish);
        }
        publish_error(error)
    }

    fn frame_for(&self, delivery: Delivery, live: &mut Vec<Instant>) -> Frame {
        if let Delivery::Message(message) = &delivery {
            if self.subscription.last_was_live() {
                live.push(Instant::from_std(message.received));
            }
        }
        frame_for(delivery)
    }
}

fn frame_for(delivery: Delivery) -> Frame {
    match delivery {
        Delivery::Message(message) => {
            let bytes = protocol::message(&message);
            // The encoder writes JSON, which is UTF-8; the check is a scan,
            // not a copy, and the frame shares the encoded bytes.
            match Utf8Bytes::try_from(bytes) {
                Ok(text) => Frame::Text(text),
                Err(_) => Frame::Text(Utf8Bytes::from_static(
                    "{\"op\":\"error\",\"code\":\"internal\"}",
                )),
            }
        }
        Delivery::Gap { after } => Frame::Text(protocol::gap(after).into()),
    }
}

/// How a read failure ends the session.
fn read_error(error: tungstenite::Error) -> Option<Ending> {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => Some(Ending {
            code: CloseCode::Size,
            reason: "message larger than websocket.max_message_bytes",
        }),
        Error::Protocol(_) | Error::Utf8(_) | Error::Capacity(_) => Some(Ending {
            code: CloseCode::Protocol,
            reason: "WebSocket protocol violation",
        }),
        // The connection is gone; there is nobody to tell.
        _ => None,
    }
}

fn write_error(error: tungstenite::Error) -> Option<Ending> {
    use tungstenite::error::Error;
    match error {
        Error::WriteBufferFull(_) => Some(Ending {
            code: CloseCode::Again,
            reason: "too slow: the write buffer is full",
        }),
        _ => None,
    }
}

fn subscribe_error(error: SubscribeError) -> ProtocolError {
    match &error {
        SubscribeError::NoFilters => ProtocolError::new("invalid-request", error.to_string()),
        SubscribeError::TooManyFilters { .. } => {
            ProtocolError::new("too-many-filters", error.to_string())
        }
        SubscribeError::OverBudget { max, .. } => {
            ProtocolError::new("filter-budget", error.to_string()).with("filter_budget_bytes", *max)
        }
        SubscribeError::InvalidFilter { filter, source } => {
            ProtocolError::new("invalid-filter", error.to_string())
                .with("filter", filter.clone())
                .with("rule", source.rule())
        }
        SubscribeError::Denied(_) => ProtocolError::new("forbidden", error.to_string()),
        SubscribeError::Ended => ProtocolError::new("subscription-ended", error.to_string()),
        SubscribeError::ReplayTooLong { max, .. } => {
            ProtocolError::new("replay-too-long", error.to_string()).with("max_replay", *max)
        }
    }
}

/// A refused or unanswered command as an `error` frame, with the codes
/// `POST /command` uses.
fn command_error(error: crate::command::CommandError) -> ProtocolError {
    use crate::command::CommandError;
    let code = error.code();
    let message = error.to_string();
    match error {
        CommandError::Publish(e) => publish_error(e),
        CommandError::Topic { topic, source } => ProtocolError::new(code, message)
            .with("topic", topic)
            .with("rule", source.rule()),
        CommandError::TimeoutTooLong { max, .. } => {
            ProtocolError::new(code, message).with("max_timeout_ms", max)
        }
        CommandError::Timeout { timeout_ms } => {
            ProtocolError::new(code, message).with("timeout_ms", timeout_ms)
        }
        _ => ProtocolError::new(code, message),
    }
}

fn publish_error(error: PublishError) -> ProtocolError {
    let code = match &error {
        PublishError::InvalidTopic { topic, source } => {
            return ProtocolError::new("invalid-topic", error.to_string())
                .with("topic", topic.clone())
                .with("rule", source.rule())
        }
        PublishError::Denied(_) | PublishError::Reserved => "forbidden",
        PublishError::TooLarge { .. } => "payload-too-large",
        PublishError::TopicTooLong { .. } => "topic-too-long",
        PublishError::TopicTooDeep { .. } => "topic-too-deep",
        PublishError::TopicLimit => "topic-limit",
        PublishError::Busy => "busy",
        PublishError::StorageFull => "storage-full",
        PublishError::Unavailable => "broker-unavailable",
        PublishError::Timeout(_) => "broker-timeout",
    };
    ProtocolError::new(code, error.to_string())
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        Stats::decr(&self.services.stats.ws_sessions_open);
    }
}
