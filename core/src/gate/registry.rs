//! Which gate connection holds each client id, so that a new connection
//! with the same id takes the session over at the gate (MQTT's rule: the
//! older connection is closed), before the broker sees anything.
//!
//! Why the gate does it: rumqttd 0.20 keeps a will handler per client id
//! behind a lock, and a connection with an id it is still tearing down can
//! find a stale handler there and panic while holding that lock, which
//! poisons it: the listener then refuses everyone until restart. Measured:
//! eight devices reconnecting at once, thirty times each, kill the MQTT 5
//! listener in one run out of two. So a connection whose session ends with
//! it (clean start, no session expiry) reaches the broker under an id of
//! its own ([`broker_client_id`]), never seen before; only a connection
//! that resumes or keeps a session uses the device's id at the broker, one
//! per protocol version (the same id alternating between rumqttd's MQTT
//! 3.1.1 and 5 listeners is what leaves the stale handler behind), and it
//! waits for the gate connection it takes over to be gone first.
//!
//! The table holds one entry per open gate connection with a client id, so
//! `mqtt.max_connections` bounds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::packet::Version;
use crate::broker::name;

/// How long a connection that resumes a session waits for the one it takes
/// over to close.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Holder>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Holder {
    number: u64,
    /// Cancelled to take the session over.
    takeover: CancellationToken,
    /// Becomes `true` once the holder's connection is gone.
    gone: watch::Receiver<bool>,
}

/// One connection's hold on its client id, released when dropped.
#[derive(Debug)]
pub struct Claim {
    registry: Arc<Registry>,
    client_id: String,
    number: u64,
    /// Cancelled when a newer connection takes the client id.
    pub takeover: CancellationToken,
    gone: watch::Sender<bool>,
}

impl Registry {
    /// Takes `client_id` for a new connection, closing the connection that
    /// held it. With `wait`, returns only once that connection is gone (or
    /// after a short while).
    pub async fn claim(self: &Arc<Self>, client_id: &str, wait: bool) -> Claim {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (gone_tx, gone_rx) = watch::channel(false);
        let takeover = CancellationToken::new();
        let previous = self.lock().insert(
            client_id.to_owned(),
            Holder {
                number,
                takeover: takeover.clone(),
                gone: gone_rx,
            },
        );
        if let Some(mut previous) = previous {
            previous.takeover.cancel();
            if wait {
                let _ =
                    tokio::time::timeout(TAKEOVER_WAIT, previous.gone.wait_for(|gone| *gone)).await;
            }
        }
        Claim {
            registry: self.clone(),
            client_id: client_id.to_owned(),
            number,
            takeover,
            gone: gone_tx,
        }
    }

    /// Connections holding a client id now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Claim {
    /// The client id the broker is given for this connection: the device's
    /// own (in the broker's form) when the session outlives the connection,
    /// else one no connection ever had.
    pub fn broker_client_id(&self, persistent: bool, version: Version) -> String {
        broker_client_id(&self.client_id, persistent, version, self.number)
    }
}

/// The broker's client id for connection `number` of `client_id`. The
/// suffixes start with `.g` or `.v`, which the broker's form of a client
/// id never holds (`.` is always followed by two hex digits there).
pub fn broker_client_id(
    client_id: &str,
    persistent: bool,
    version: Version,
    number: u64,
) -> String {
    let id = name::client_id_in(client_id);
    match (persistent, version) {
        (true, Version::V311) => id.into_owned(),
        (true, Version::V5) => format!("{id}.v5"),
        (false, _) => format!("{id}.g{number:x}"),
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        if live.get(&self.client_id).map(|h| h.number) == Some(self.number) {
            live.remove(&self.client_id);
        }
        drop(live);
        let _ = self.gone.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_claim_takes_the_id_over_and_the_table_empties() {
        let registry = Arc::new(Registry::default());
        let first = registry.claim("a/b", false).await;
        let second = registry.claim("a/b", false).await;
        assert!(first.takeover.is_cancelled(), "the older one is told to go");
        assert!(!second.takeover.is_cancelled());
        drop(first);
        assert_eq!(registry.len(), 1, "the older one leaves the newer's entry");
        drop(second);
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test]
    async fn a_resuming_claim_waits_for_the_older_connection() {
        let registry = Arc::new(Registry::default());
        let first = registry.claim("meter", false).await;
        let ended = tokio::spawn(async move {
            first.takeover.cancelled().await;
            drop(first);
        });
        let second = registry.claim("meter", true).await;
        assert!(ended.is_finished(), "the older connection was gone first");
        assert_eq!(registry.len(), 1);
        drop(second);
    }

    #[test]
    fn session_ids_never_meet_a_device_id() {
        let (v4, v5) = (Version::V311, Version::V5);
        assert_eq!(broker_client_id("a/b", true, v4, 7), "a.2fb");
        assert_eq!(broker_client_id("a/b", true, v5, 7), "a.2fb.v5");
        assert_eq!(broker_client_id("a/b", false, v4, 7), "a.2fb.g7");
        assert_ne!(
            broker_client_id("x", false, v5, 1),
            broker_client_id("x", false, v5, 2)
        );
        // A device that names itself like a session id is encoded apart.
        assert_eq!(broker_client_id("x.g1", true, v4, 0), "x.2eg1");
        assert_eq!(broker_client_id("x.v5", true, v4, 0), "x.2ev5");
    }
}
