//! One plugin instance on its own thread, `plugin-<name>`: `create`,
//! `start`, a delivery loop, then `stop` and `destroy`, all on that thread,
//! one call at a time, as the ABI promises.
//!
//! The thread owns a small current-thread tokio runtime for its router
//! subscription and timers; the plugin library never touches it (nor the
//! bridge's runtime). A plugin that returns PANICKED is marked failed: its
//! subscription is dropped, its host calls are refused, and it waits for
//! shutdown, when it still gets `stop` and `destroy` so it can join its own
//! threads. Other statuses from `on_message` are counted and logged; the
//! plugin keeps receiving.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tidewater_plugin_api::TwStatus;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::host::{HostContext, HostTable};
use super::inbox::Inbox;
use super::loader::{Driver, Instance};
use super::status::{PluginState, PluginStatus};
use super::PluginError;
use crate::config::PluginConfig;
use crate::router::Message;
use crate::services::Services;
use crate::stats::Stats;

/// Filters a plugin may ask for faster than its thread adds them; past
/// this, `subscribe` answers BUSY. As many as a plugin may hold, since
/// `create` asks for all of them before the thread takes any.
const SUBSCRIBE_QUEUE: usize = super::inbox::MAX_FILTERS;
/// How long `create` and `start` together may take before startup gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` and `destroy` may take at shutdown before the bridge
/// leaves the thread behind (the process is exiting anyway).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A plugin whose thread is running.
#[derive(Debug)]
pub(super) struct RunningPlugin {
    name: String,
    cancel: CancellationToken,
    done: oneshot::Receiver<()>,
    thread: JoinHandle<()>,
}

/// Starts `driver` as the plugin `config` describes and waits until its
/// `create` and `start` have succeeded (or failed, with their message).
pub(super) async fn spawn(
    config: &PluginConfig,
    driver: Driver,
    services: Services,
    status: Arc<PluginStatus>,
) -> Result<RunningPlugin, PluginError> {
    let name = config.name.clone();
    let (subscribe_tx, subscribe_rx) = mpsc::channel(SUBSCRIBE_QUEUE);
    let (context, table) = HostContext::leak(status.clone(), services.clone(), subscribe_tx);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let cancel = CancellationToken::new();
    let job = Job {
        driver,
        table,
        context,
        config_json: serde_json::Value::Object(config.config.clone()).to_string(),
        inbox: Inbox::new(services.router, status.clone(), config.inbox_capacity),
        subscribe_rx,
        cancel: cancel.clone(),
        status,
    };
    let thread = std::thread::Builder::new()
        .name(format!("plugin-{name}"))
        .spawn(move || {
            job.run(ready_tx);
            let _ = done_tx.send(());
        })
        .map_err(|source| PluginError::Thread {
            name: name.clone(),
            source,
        })?;
    let running = RunningPlugin {
        name: name.clone(),
        cancel,
        done,
        thread,
    };
    match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(running),
        Ok(Ok(Err(e))) => {
            running.stop().await;
            Err(e)
        }
        Ok(Err(_)) => {
            running.stop().await;
            Err(PluginError::Crashed { name })
        }
        Err(_) => {
            // The thread stops by itself once `create`/`start` return.
            running.cancel.cancel();
            Err(PluginError::Timeout {
                name,
                limit: START_TIMEOUT,
            })
        }
    }
}

impl RunningPlugin {
    /// Asks the plugin to stop, without waiting.
    pub(super) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Stops the plugin and waits (bounded) for `stop` and `destroy`.
    pub(super) async fn stop(self) {
        self.cancel.cancel();
        if tokio::time::timeout(STOP_TIMEOUT, self.done).await.is_err() {
            tracing::warn!(
                plugin = self.name,
                "Plugin did not stop within {STOP_TIMEOUT:?}; leaving its thread behind."
            );
            return;
        }
        // It has signalled its end: joining takes no longer than its exit.
        let thread = self.thread;
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!(plugin = self.name, "Plugin thread panicked.");
        }
    }
}

/// Everything the plugin's thread owns.
struct Job {
    driver: Driver,
    table: HostTable,
    context: &'static HostContext,
    config_json: String,
    inbox: Inbox,
    subscribe_rx: mpsc::Receiver<String>,
    cancel: CancellationToken,
    status: Arc<PluginStatus>,
}

impl Job {
    fn run(mut self, ready: oneshot::Sender<Result<(), PluginError>>) {
        let name = self.status.name().to_owned();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(source) => {
                self.status
                    .fail(format!("cannot start its runtime: {source}"));
                self.context.tear_down();
                let _ = ready.send(Err(PluginError::Thread { name, source }));
                return;
            }
        };
        let mut instance = match self.driver.create(self.table, &self.config_json) {
            Ok(instance) => instance,
            Err((_, message)) => {
                self.status.fail(message.clone());
                self.context.tear_down();
                let _ = ready.send(Err(PluginError::CreateFailed { name, message }));
                return;
            }
        };
        // Filters given during `create` form one subscription, whose
        // retained values come before anything else.
        let early: Vec<String> = std::iter::from_fn(|| self.subscribe_rx.try_recv().ok()).collect();
        self.inbox.add(early);

        let logged = self.status.errors_logged.load(Ordering::Relaxed);
        let started = instance.start();
        if !started.is_ok() {
            let message = self.explain(started, "start", logged);
            self.status.fail(message.clone());
            self.inbox.close();
            let _ = instance.stop();
            drop(instance); // destroy
            self.context.tear_down();
            let _ = ready.send(Err(PluginError::StartFailed { name, message }));
            return;
        }
        self.status.set_state(PluginState::Running);
        tracing::info!(plugin = name, driver = %self.driver.name(), version = %self.driver.version(), "Plugin started.");
        if ready.send(Ok(())).is_err() {
            // Startup stopped waiting (it timed out, or another plugin
            // failed): stop straight away.
            self.cancel.cancel();
        }

        runtime.block_on(self.deliver(&mut instance, VecDeque::new()));

        let stopped = instance.stop();
        if !stopped.is_ok() {
            tracing::warn!(plugin = name, status = %stopped, "Plugin stop reported a failure.");
        }
        drop(instance); // destroy
        self.inbox.close();
        self.context.tear_down();
        if self.status.state() != PluginState::Failed {
            self.status.set_state(PluginState::Stopped);
        }
        tracing::info!(plugin = name, "Plugin stopped.");
    }

    /// Hands the plugin its messages until shutdown, or until it fails.
    async fn deliver(&mut self, instance: &mut Instance, mut pending: VecDeque<Arc<Message>>) {
        loop {
            while let Some(message) = pending.pop_front() {
                if !self.hand(instance, &message) {
                    // Failed: nothing more is delivered; wait for shutdown.
                    self.inbox.close();
                    return self.cancel.cancelled().await;
                }
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                Some(filter) = self.subscribe_rx.recv() => {
                    let more = std::iter::from_fn(|| self.subscribe_rx.try_recv().ok());
                    let filters: Vec<String> = std::iter::once(filter).chain(more).collect();
                    self.inbox.add(filters);
                }
                message = self.inbox.next() => pending.push_back(message),
            }
        }
    }

    /// Calls `on_message`; false once the plugin has failed.
    fn hand(&self, instance: &mut Instance, message: &Message) -> bool {
        let logged = self.status.errors_logged.load(Ordering::Relaxed);
        let result = instance.on_message(&message.topic, &message.payload);
        match result {
            TwStatus::OK => {
                Stats::incr(&self.status.messages_in);
                true
            }
            TwStatus::PANICKED => {
                let error = self.explain(result, "on_message", logged);
                self.status.fail(error.clone());
                tracing::error!(
                    plugin = self.status.name(),
                    topic = %message.topic,
                    error,
                    "Plugin failed; it receives nothing more. The bridge carries on."
                );
                false
            }
            other => {
                Stats::incr(&self.status.errors);
                let error = self.explain(other, "on_message", logged);
                self.status.set_last_error(error.clone());
                tracing::debug!(plugin = self.status.name(), topic = %message.topic, error, "Plugin refused a message.");
                true
            }
        }
    }

    /// The plugin's own account of a failed call if it logged one at ERROR
    /// since `logged`, else the status it returned.
    fn explain(&self, status: TwStatus, call: &str, logged: u64) -> String {
        if self.status.errors_logged.load(Ordering::Relaxed) != logged {
            if let Some(error) = self.status.snapshot().last_error {
                return error;
            }
        }
        format!("{call} returned {status}")
    }
}
