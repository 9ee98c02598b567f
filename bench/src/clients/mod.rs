//! The clients the load generator runs: MQTT devices and subscribers, SSE
//! and WebSocket readers, an HTTP publisher. Each reports to a
//! [`Recorder`](crate::recorder::Recorder).
//!
//! Connections spread over several loopback source addresses (127.0.0.2 …),
//! so tens of thousands of them never run out of ephemeral ports, and every
//! connect is bounded in time.

pub mod http;
pub mod mqtt;
pub mod sse;
pub mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpSocket, TcpStream};

use crate::recorder::Recorder;

/// Loopback source addresses used in turn.
const SOURCES: u8 = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a TCP connection to `addr` (on loopback) from source address
/// number `n`, without Nagle's delay.
pub async fn connect(addr: SocketAddr, n: usize) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if addr.ip().is_loopback() {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (n % usize::from(SOURCES)) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a reader reads. A probe reads as soon as data arrives and times
/// every message. A bulk reader sleeps `coalesce` between reads, so each
/// read takes many messages and one load core keeps up with fan-outs of
/// hundreds of thousands of deliveries per second; it only counts.
#[derive(Debug, Clone)]
pub struct Reading {
    pub recorder: Arc<Recorder>,
    pub stall: Option<Stall>,
    pub coalesce: Option<Duration>,
}

impl Reading {
    pub fn timed(&self) -> bool {
        self.coalesce.is_none()
    }

    /// Before each read: wait out a stall, then the bulk delay.
    pub async fn pause(&self) {
        if let Some(stall) = &self.stall {
            stall.wait().await;
        }
        if let Some(delay) = self.coalesce {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Lets a scenario stop a reader from reading (a stalled client) and
/// resume it later.
#[derive(Debug, Clone, Default)]
pub struct Stall(Arc<AtomicBool>);

impl Stall {
    pub fn set(&self, stalled: bool) {
        self.0.store(stalled, Ordering::Relaxed);
    }

    /// Waits while stalled, checking every 20 ms.
    pub async fn wait(&self) {
        while self.0.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
