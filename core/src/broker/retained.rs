//! The retained link: reads the broker's retained messages for new
//! subscribers.
//!
//! rumqttd clears the retain flag on live forwarding, so the egress stream
//! cannot tell retained messages from others. A fresh subscription does get
//! the retained messages, flagged and without a log cursor. So, on demand,
//! this link subscribes to `#`, sends a PINGREQ once the SUBACK is in, and
//! keeps every retained message that arrives before the PINGRESP: the broker
//! answers in order, so the PINGRESP marks the end of the retained batch
//! even when there are none. Then it unsubscribes until the next request.
//! Requests that arrive during one read share the next.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, PingReq};
use rumqttd::Notification;
use tokio::sync::mpsc;

use super::BrokerError;
use crate::router::{Message, RetainedRequest, RetainedSnapshot, Router};
use crate::stats::Stats;

/// Longest one snapshot may take before it is abandoned.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn spawn(
    tx: LinkTx,
    rx: LinkRx,
    requests: mpsc::Receiver<RetainedRequest>,
    router: Router,
    max_retained: u64,
) -> Result<(), BrokerError> {
    let mut link = RetainedLink {
        tx,
        rx,
        router,
        max_retained,
    };
    thread::Builder::new()
        .name("tidewater-retained".into())
        .spawn(move || link.serve(requests))
        .map_err(|e| BrokerError::Thread("retained", e))?;
    Ok(())
}

struct RetainedLink {
    tx: LinkTx,
    rx: LinkRx,
    router: Router,
    max_retained: u64,
}

/// Which acknowledgement a read waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Await {
    SubAck,
    PingResp,
    UnsubAck,
}

impl RetainedLink {
    fn serve(&mut self, mut requests: mpsc::Receiver<RetainedRequest>) {
        let mut waiting = Vec::new();
        while requests.blocking_recv_many(&mut waiting, usize::MAX) > 0 {
            let stats = self.router.stats().clone();
            let result = match self.snapshot() {
                Ok(snapshot) => {
                    Stats::incr(&stats.retained_snapshots);
                    if snapshot.len() as u64 >= self.max_retained {
                        Stats::incr(&stats.retained_truncated);
                        tracing::warn!(
                            limit = self.max_retained,
                            "Retained values reached mqtt.max_retained; some may be missing."
                        );
                    }
                    Ok(RetainedSnapshot::new(snapshot))
                }
                Err(e) => {
                    Stats::incr(&stats.retained_failures);
                    tracing::warn!(error = %e, "Cannot read the broker's retained values.");
                    Err(())
                }
            };
            for reply in waiting.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
    }

    fn snapshot(&mut self) -> Result<Vec<Arc<Message>>, Box<LinkError>> {
        let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
        let mut retained = Vec::new();
        self.tx.subscribe("#")?;
        let read = self
            .read_until(Await::SubAck, deadline, &mut retained)
            .and_then(|()| send(&mut self.tx, Packet::PingReq(PingReq)))
            .and_then(|()| self.read_until(Await::PingResp, deadline, &mut retained));
        // Unsubscribe even after a failure, so live traffic stops flowing here.
        self.tx.unsubscribe("#")?;
        self.read_until(Await::UnsubAck, deadline, &mut Vec::new())?;
        read.map(|()| retained)
    }

    /// Reads notifications until the awaited acknowledgement, keeping the
    /// retained messages seen on the way and discarding live ones.
    fn read_until(
        &mut self,
        until: Await,
        deadline: Instant,
        retained: &mut Vec<Arc<Message>>,
    ) -> Result<(), Box<LinkError>> {
        loop {
            match self.rx.recv_deadline(deadline)? {
                Some(Notification::Forward(forward)) => {
                    let publish = forward.publish;
                    if forward.cursor.is_some() || !publish.retain {
                        continue;
                    }
                    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                        continue;
                    };
                    let topic = super::name::topic_out(topic);
                    let event = self.router.event_for(topic);
                    let (payload, meta, _) = super::stamp::split(publish.payload);
                    let mut message = Message::new(None, topic.into(), payload, true, event);
                    message.qos = meta.qos;
                    retained.push(Arc::new(message));
                }
                Some(Notification::Unschedule) => self.rx.ready()?,
                Some(ack @ Notification::DeviceAck(_)) => {
                    let reached = matches!(
                        (until, Option::<Packet>::from(ack)),
                        (Await::SubAck, Some(Packet::SubAck(..)))
                            | (Await::PingResp, Some(Packet::PingResp(_)))
                            | (Await::UnsubAck, Some(Packet::UnsubAck(..)))
                    );
                    if reached {
                        return Ok(());
                    }
                }
                Some(_) | None => {}
            }
        }
    }
}

/// `LinkTx::send` is an async fn with no await point: polled once, it completes.
fn send(tx: &mut LinkTx, packet: Packet) -> Result<(), Box<LinkError>> {
    match tx.send(packet).now_or_never() {
        Some(result) => result.map(|_| ()).map_err(Box::new),
        None => Ok(()),
    }
}
