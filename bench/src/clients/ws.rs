//! WebSocket readers (tokio-tungstenite): Tidewater's JSON sessions, which
//! subscribe with `{"op":"subscribe"}` and wait for the `ack`, and Nchan's
//! subscriber endpoint, where the URL names the channel.
//!
//! A Tidewater session the server closes (1013, too slow) reconnects with
//! `since` set to the last id it saw, as a browser client would.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{connect, Reading};
use crate::payload::{find_t0, now_us};

const MAX_RECONNECTS: u32 = 20;
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session subscribes to, and how.
#[derive(Debug, Clone)]
pub enum Target {
    /// Tidewater: `ws://addr/ws`, then a subscribe request for `topic`.
    Tidewater { addr: SocketAddr, topic: String },
    /// Nchan: `ws://addr/sub/<channel>`.
    Nchan { addr: SocketAddr, channel: String },
}

/// An open, subscribed session.
#[derive(Debug)]
pub struct Session {
    target: Target,
    n: usize,
    ws: WebSocketStream<TcpStream>,
}

impl Session {
    /// Connects from source number `n`, subscribes (resuming after `since`)
    /// and waits until the server confirms.
    pub async fn open(target: &Target, n: usize, since: Option<&str>) -> anyhow::Result<Self> {
        let (addr, url) = match target {
            Target::Tidewater { addr, .. } => (*addr, format!("ws://{addr}/ws")),
            Target::Nchan { addr, channel } => (*addr, format!("ws://{addr}/sub/{channel}")),
        };
        let stream = connect(addr, n).await?;
        let (mut ws, _) = tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), stream),
        )
        .await
        .context("WebSocket handshake timed out")?
        .with_context(|| format!("WebSocket handshake with {url}"))?;
        if let Target::Tidewater { topic, .. } = target {
            let mut request = serde_json::json!({"op": "subscribe", "topics": [topic]});
            if let Some(since) = since {
                request["since"] = since.into();
            }
            ws.send(Message::text(request.to_string())).await?;
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, wait_ack(&mut ws))
                .await
                .context("no subscribe ack in time")??;
        }
        Ok(Self {
            target: target.clone(),
            n,
            ws,
        })
    }

    /// Reads messages until the session ends, reconnecting with the last id
    /// (bounded in count). Runs until aborted.
    pub async fn read(mut self, reading: Reading) {
        let recorder = reading.recorder.clone();
        let mut reconnects = 0;
        loop {
            let last = self.read_until_end(&reading).await;
            recorder.closed.fetch_add(1, Ordering::Relaxed);
            if reconnects >= MAX_RECONNECTS {
                return;
            }
            reconnects += 1;
            tokio::time::sleep(RECONNECT_DELAY).await;
            let since = last.as_deref().and_then(message_id);
            match Self::open(&self.target, self.n, since.as_deref()).await {
                Ok(next) => {
                    recorder.reconnects.fetch_add(1, Ordering::Relaxed);
                    self = next;
                }
                Err(_) => {
                    recorder.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Returns the last timed message seen, to resume after it.
    async fn read_until_end(&mut self, reading: &Reading) -> Option<String> {
        let mut last = None;
        loop {
            // Frames already buffered are taken at once; the pause comes
            // only when the next frame would have to wait for the socket.
            let frame = match self.ws.next().now_or_never() {
                Some(frame) => frame,
                None => {
                    reading.pause().await;
                    self.ws.next().await
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(t0) = find_t0(text.as_bytes()) {
                        reading.recorder.record(now_us(), &[t0], reading.timed());
                        last = Some(text);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return last.map(|t| t.as_str().to_owned()),
            }
        }
    }
}

async fn wait_ack(ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<()> {
    while let Some(frame) = ws.next().await {
        if let Message::Text(text) = frame? {
            if text.contains("\"op\":\"ack\"") {
                return Ok(());
            }
            if text.contains("\"op\":\"error\"") {
                bail!("subscribe refused: {text}");
            }
        }
    }
    bail!("session closed before the subscribe ack")
}

/// The `id` of a Tidewater message frame.
fn message_id(frame: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(frame).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}
