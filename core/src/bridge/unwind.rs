//! Undoing a start that failed half way: whatever had started is stopped,
//! in the reverse order, before the error is returned.
//!
//! Without it a failure after the broker had started left its egress
//! thread holding the log (and, on disk, the log directory's lock, so a
//! second start in the same process was refused), and one after the
//! plugins or the HTTP server had started left them running.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::log::Log;
use crate::plugin::Plugins;

/// How long an unwind waits for the tasks it cancelled.
const TASKS_TIMEOUT: Duration = Duration::from_secs(3);

/// What a start has set going so far. [`Unwind::run`] stops it all; a
/// start that succeeds takes its parts out instead.
#[derive(Debug)]
pub(super) struct Unwind {
    /// The bridge's own token: cancelling it ends every task it started.
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    pub log: Option<Arc<dyn Log>>,
    pub plugins: Option<Plugins>,
    pub server: Option<actix_web::dev::ServerHandle>,
}

impl Unwind {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            tasks: TaskTracker::new(),
            log: None,
            plugins: None,
            server: None,
        }
    }

    /// Stops what had started: listeners and their connections, the HTTP
    /// server, the plugins; then closes the log (releasing its directory).
    /// The embedded broker's threads cannot be stopped (rumqttd 0.20): they
    /// stay, idle, with nothing left to reach them.
    pub async fn run(self) {
        self.cancel.cancel();
        self.tasks.close();
        if let Some(server) = self.server {
            server.stop(false).await;
        }
        if tokio::time::timeout(TASKS_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some tasks of the failed start did not end in time.");
        }
        if let Some(plugins) = self.plugins {
            plugins.stop().await;
        }
        if let Some(log) = self.log {
            match tokio::task::spawn_blocking(move || log.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Cannot close the log after a failed start.")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Closing the log after a failed start failed.")
                }
            }
        }
    }
}
