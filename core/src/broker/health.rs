//! Whether the embedded broker still works, and what happens when it stops.
//!
//! rumqttd 0.20 cannot be restarted inside a process, and a bridge whose
//! broker is gone would keep answering HTTP and taking MQTT connections
//! while routing nothing. So the first failure is final: it is recorded with
//! its cause and logged, `/healthz` answers 503 at once, the gate stops
//! accepting, and after [`DOWN_GRACE`] (time for a health checker to see the
//! 503) the bridge shuts down; the binary then exits non-zero, so that its
//! supervisor (systemd's `Restart=always`, see `examples/systemd/`) starts a
//! fresh process.
//!
//! Failures come from three places: a link thread whose channel to the
//! broker closed (the router thread died: every link goes with it), the
//! broker's own thread returning, and [`watch`], which logs in to each
//! internal listener periodically and fails the broker when one has stopped
//! answering (a listener thread that died, or one that refuses everyone).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long `/healthz` shows 503 before the bridge shuts down.
pub const DOWN_GRACE: Duration = Duration::from_secs(2);

/// Time between two logins to each internal listener.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a probe waits for its CONNACK. Generous: a broker busy with a
/// burst answers late, and only a dead one never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes in a row a listener must fail before the broker is declared down:
/// about half a minute without a single answer.
const PROBE_FAILURES: u32 = 3;

/// The broker's state: up until the first failure, down for good after.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    cause: OnceLock<String>,
    down: CancellationToken,
}

impl BrokerHealth {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Records that the broker failed; the first cause is the one kept.
    pub fn fail(&self, cause: impl Into<String>) {
        let cause = cause.into();
        if self.cause.set(cause.clone()).is_ok() {
            tracing::error!(
                cause,
                "The embedded broker failed: /healthz answers 503 and the bridge stops, so that its supervisor restarts it."
            );
        }
        self.down.cancel();
    }

    /// Why the broker failed, once it has.
    pub fn cause(&self) -> Option<&str> {
        self.cause.get().map(String::as_str)
    }

    /// Resolves once the broker has failed.
    pub async fn down(&self) {
        self.down.cancelled().await;
    }
}

/// An internal listener the watchdog logs in to.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub v5: bool,
}

/// Logs in to each listener every [`PROBE_INTERVAL`] until `cancel`, and
/// fails `health` once one has not answered [`PROBE_FAILURES`] times in a
/// row.
pub async fn watch(
    health: Arc<BrokerHealth>,
    probes: Vec<Probe>,
    login: (String, String),
    cancel: CancellationToken,
) {
    let login = Arc::new(login);
    let mut failures = vec![0u32; probes.len()];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = health.down() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
        for (probe, failed) in probes.iter().zip(failures.iter_mut()) {
            let (probe, login) = (*probe, login.clone());
            let answer = tokio::task::spawn_blocking(move || {
                super::probe_connect(probe.addr, probe.v5, (&login.0, &login.1), PROBE_TIMEOUT)
            })
            .await;
            match answer {
                Ok(Ok(())) => *failed = 0,
                Ok(Err(e)) => {
                    *failed += 1;
                    tracing::warn!(listener = probe.name, error = %e, failures = *failed, "The broker's internal listener did not answer a login.");
                    if *failed >= PROBE_FAILURES {
                        health.fail(format!(
                            "the broker's {} listener on {} stopped answering ({e})",
                            probe.name, probe.addr
                        ));
                        return;
                    }
                }
                // The blocking pool is shutting down with the runtime.
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_kept_and_final() {
        let health = BrokerHealth::new();
        assert_eq!(health.cause(), None);
        health.fail("egress link closed");
        health.fail("a later symptom");
        assert_eq!(health.cause(), Some("egress link closed"));
        tokio::time::timeout(Duration::from_secs(1), health.down())
            .await
            .expect("down resolves once failed");
    }
}
