//! The ingress link: publishes from web clients (and later plugins) into the
//! broker, so they reach devices and come back through egress like any
//! device message.
//!
//! rumqttd's local links publish at QoS 0 and block when the broker is busy,
//! so the link lives on its own thread fed by a bounded queue. A publish that
//! asked for confirmation is confirmed with a PINGREQ sent after it: the
//! broker handles a link's packets in order, so its PINGRESP proves every
//! earlier publish was appended to the broker's log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, PingReq, Publish};
use rumqttd::Notification;
use tokio::sync::{mpsc, oneshot};

use super::health::BrokerHealth;
use super::BrokerError;
use crate::stats::Stats;

/// A publish on its way into the broker, with an optional confirmation sent
/// once the broker has appended it to its log.
#[derive(Debug)]
pub struct IngressRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// A retained value the log put back at start (see `broker::stamp`):
    /// the broker holds it again, and the log does not take it twice.
    pub restored: bool,
    pub confirm: Option<oneshot::Sender<()>>,
}

/// Publishes taken from the queue per round, so one PINGREQ confirms many.
const BATCH: usize = 256;

type Confirmations = Arc<Mutex<VecDeque<Vec<oneshot::Sender<()>>>>>;

pub(super) fn spawn(
    tx: LinkTx,
    rx: LinkRx,
    requests: mpsc::Receiver<IngressRequest>,
    stats: Arc<Stats>,
    health: Arc<BrokerHealth>,
) -> Result<(), BrokerError> {
    let waiting: Confirmations = Arc::default();
    let acks = waiting.clone();
    thread::Builder::new()
        .name("tidewater-ingress".into())
        .spawn(move || publish_loop(tx, requests, waiting, stats))
        .map_err(|e| BrokerError::Thread("ingress", e))?;
    thread::Builder::new()
        .name("tidewater-ingress-acks".into())
        .spawn(move || {
            if let Err(e) = ack_loop(rx, acks) {
                health.fail(format!(
                    "the broker's ingress link closed ({e}): its router thread is gone"
                ));
            }
        })
        .map_err(|e| BrokerError::Thread("ingress-acks", e))?;
    Ok(())
}

fn publish_loop(
    mut tx: LinkTx,
    mut requests: mpsc::Receiver<IngressRequest>,
    waiting: Confirmations,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while requests.blocking_recv_many(&mut batch, BATCH) > 0 {
        let mut confirms = Vec::new();
        for request in batch.drain(..) {
            let topic = match super::name::topic_in(&request.topic) {
                std::borrow::Cow::Borrowed(_) => request.topic,
                std::borrow::Cow::Owned(escaped) => escaped,
            };
            // The escape may take a topic of MQTT's largest length past it.
            if topic.len() > crate::topic::MAX_TOPIC_BYTES {
                Stats::incr(&stats.publishes_failed);
                tracing::warn!("Publish lost: its topic is too long for the broker once escaped.");
                continue;
            }
            let meta = super::stamp::Meta {
                qos: request.qos,
                retain: request.retain,
            };
            let payload = if request.restored {
                super::stamp::stamp_restored(meta, &request.payload)
            } else {
                super::stamp::stamp(meta, &request.payload)
            };
            let publish = Publish::new(Bytes::from(topic), payload, request.retain);
            // `send` is an async fn with no await point inside: polled once it
            // completes (blocking this dedicated thread if the broker is busy).
            match tx.send(Packet::Publish(publish, None)).now_or_never() {
                Some(Ok(_)) => confirms.extend(request.confirm),
                _ => {
                    // Dropping `confirm` tells a waiting publisher it failed.
                    Stats::incr(&stats.publishes_failed);
                    tracing::warn!("Publish lost: the broker link refused it.");
                }
            }
        }
        if confirms.is_empty() {
            continue;
        }
        let mut queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
        queue.push_back(confirms);
        drop(queue);
        if !matches!(
            tx.send(Packet::PingReq(PingReq)).now_or_never(),
            Some(Ok(_))
        ) {
            tracing::warn!("Cannot ask the broker to confirm publishes.");
        }
    }
}

fn ack_loop(mut rx: LinkRx, waiting: Confirmations) -> Result<(), Box<rumqttd::local::LinkError>> {
    loop {
        match rx.recv()? {
            Some(ack @ Notification::DeviceAck(_)) => {
                if !is_ping_response(ack) {
                    continue;
                }
                let batch = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front();
                for confirm in batch.into_iter().flatten() {
                    let _ = confirm.send(());
                }
            }
            Some(Notification::Unschedule) => rx.ready()?,
            Some(_) | None => {}
        }
    }
}

/// rumqttd does not export its `Ack` type; the conversion to a packet does.
fn is_ping_response(notification: Notification) -> bool {
    matches!(
        Option::<Packet>::from(notification),
        Some(Packet::PingResp(_))
    )
}
