//! The egress link: every message the broker routes, read in order on a
//! dedicated thread and handed to the router.

use std::sync::Arc;
use std::thread;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;

use super::health::BrokerHealth;
use super::BrokerError;
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

fn rx_loop(rx: &mut LinkRx, router: &Router) -> Result<(), Box<rumqttd::local::LinkError>> {
    loop {
        match rx.recv()? {
            Some(Notification::Forward(forward)) => {
                let publish = forward.publish;
                match std::str::from_utf8(&publish.topic) {
                    Ok(topic) => {
                        let (payload, meta, read) = super::stamp::split(publish.payload);
                        if read == super::stamp::Read::Unstamped {
                            Stats::incr(&router.stats().messages_unstamped);
                        }
                        router.dispatch(super::name::topic_out(topic), payload, meta);
                    }
                    Err(_) => Stats::incr(&router.stats().messages_invalid),
                }
            }
            // The broker paused this link because its buffer filled up;
            // it resumes once told we are reading again.
            Some(Notification::Unschedule) => rx.ready()?,
            Some(_) | None => {}
        }
    }
}
