//! The egress link: every message the broker routes, read in order on a
//! dedicated thread and handed to the router.

use std::sync::Arc;
use std::thread;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;

use super::health::BrokerHealth;
use super::BrokerError;
use crate::log::Entry;
use crate::router::Router;
use crate::stats::Stats;

pub(super) fn spawn(
    mut tx: LinkTx,
    mut rx: LinkRx,
    router: Router,
    health: Arc<BrokerHealth>,
) -> Result<(), BrokerError> {
    tx.subscribe("#").map_err(|e| BrokerError::Link {
        link: "egress",
        reason: e.to_string(),
    })?;
    thread::Builder::new()
        .name("tidewater-egress".into())
        .spawn(move || {
            // The sender stays alive with the thread: the link lives as long
            // as both halves do.
            let _tx = tx;
            if let Err(e) = rx_loop(&mut rx, &router) {
                Stats::incr(&router.stats().broker_link_failures);
                health.fail(format!(
                    "the broker's egress link closed ({e}): its router thread is gone"
                ));
            }
        })
        .map_err(|e| BrokerError::Thread("egress", e))?;
    Ok(())
}

/// Messages appended to the log in one batch at most: one write (and,
/// with `fsync = "always"`, one fsync) for all of them.
const BATCH: usize = 256;

fn rx_loop(rx: &mut LinkRx, router: &Router) -> Result<(), Box<rumqttd::local::LinkError>> {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for one, then take what else is there already.
        let first = rx.recv()?;
        take(rx, first, router, &mut batch)?;
        while batch.len() < BATCH {
            match rx.recv_deadline(std::time::Instant::now()) {
                Ok(next) => take(rx, next, router, &mut batch)?,
                // Nothing more for now (a link that closed says so on the
                // next `recv`).
                Err(rumqttd::local::LinkError::RecvTimeout(_)) => break,
                Err(e) => return Err(Box::new(e)),
            }
        }
        router.dispatch_batch(&batch);
        batch.clear();
    }
}

/// Adds one notification's message to `batch`.
fn take(
    rx: &mut LinkRx,
    notification: Option<Notification>,
    router: &Router,
    batch: &mut Vec<Entry>,
) -> Result<(), Box<rumqttd::local::LinkError>> {
    match notification {
        Some(Notification::Forward(forward)) => {
            let publish = forward.publish;
            let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                Stats::incr(&router.stats().messages_invalid);
                return Ok(());
            };
            let (payload, meta, read) = super::stamp::split(publish.payload);
            match read {
                super::stamp::Read::Unstamped => Stats::incr(&router.stats().messages_unstamped),
                // Put back into the broker from the log at start: the log
                // has it already.
                super::stamp::Read::Restored(_) => return Ok(()),
                _ => {}
            }
            batch.push(Entry {
                time_ms: crate::router::now_ms(),
                qos: meta.qos,
                retain: meta.retain,
                topic: super::name::topic_out(topic).into(),
                payload,
            });
        }
        // The broker paused this link because its buffer filled up;
        // it resumes once told we are reading again.
        Some(Notification::Unschedule) => rx.ready()?,
        Some(_) | None => {}
    }
    Ok(())
}
