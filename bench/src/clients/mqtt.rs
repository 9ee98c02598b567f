//! MQTT clients: devices that publish (rumqttc, as real devices would use)
//! and subscribers on raw TCP that parse `PUBLISH` packets themselves, so a
//! fan-out of tens of thousands of deliveries per second costs the load
//! generator little more than the reads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{connect, Reading};
use crate::payload::{find_t0, now_us};

/// rumqttd closes a CONNECT with keep-alive 0, so both kinds of client ask
/// for the longest keep-alive MQTT allows; no run lasts that long.
const KEEP_ALIVE_SECS: u16 = u16::MAX;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes a device may have queued inside rumqttc before the generator
/// counts further ones as not sent.
const DEVICE_QUEUE: usize = 256;

/// A connected device: publish through `client`; its event loop runs in
/// the task set given to [`device`].
#[derive(Debug, Clone)]
pub struct Device {
    pub client: AsyncClient,
}

/// Connects a rumqttc device and waits for its CONNACK.
pub async fn device(
    addr: SocketAddr,
    client_id: String,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Device> {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(u64::from(KEEP_ALIVE_SECS)))
        .set_clean_session(true)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, DEVICE_QUEUE);
    let (connected, ready) = tokio::sync::oneshot::channel();
    tasks.spawn(async move {
        let mut connected = Some(connected);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                // A device that loses its connection stops: runs are short
                // and a silent retry loop would hide the failure.
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(CONNECT_TIMEOUT, ready)
        .await
        .context("device CONNACK timed out")?
        .context("device connection failed")?;
    Ok(Device { client })
}

/// Publishes one message without waiting; false if the device's queue is full.
pub fn try_publish(device: &Device, topic: &str, qos1: bool, payload: Vec<u8>) -> bool {
    let qos = if qos1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    device
        .client
        .try_publish(topic, qos, false, payload)
        .is_ok()
}

/// A subscriber on raw TCP, subscribed at QoS 0.
#[derive(Debug)]
pub struct Subscriber {
    stream: TcpStream,
    leftover: Vec<u8>,
}

impl Subscriber {
    /// Connects from source number `n`, subscribes to `filter` and waits
    /// for the SUBACK.
    pub async fn open(
        addr: SocketAddr,
        n: usize,
        client_id: &str,
        filter: &str,
    ) -> anyhow::Result<Self> {
        let mut stream = connect(addr, n).await?;
        let mut connect_body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
        connect_body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
        put_str(&mut connect_body, client_id);
        stream.write_all(&packet(0x10, &connect_body)).await?;
        let mut subscribe_body = vec![0, 1];
        put_str(&mut subscribe_body, filter);
        subscribe_body.push(0);
        stream.write_all(&packet(0x82, &subscribe_body)).await?;

        let mut subscriber = Self {
            stream,
            leftover: Vec::new(),
        };
        let handshake = async {
            let (kind, body) = subscriber.next_packet().await?;
            if kind >> 4 != 2 || body.get(1) != Some(&0) {
                bail!("CONNECT refused: packet {kind:#x} {body:?}");
            }
            let (kind, body) = subscriber.next_packet().await?;
            if kind >> 4 != 9 || body.get(2).is_none_or(|rc| *rc > 2) {
                bail!("SUBSCRIBE refused: packet {kind:#x} {body:?}");
            }
            Ok(())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .context("MQTT subscribe timed out")??;
        Ok(subscriber)
    }

    async fn next_packet(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((kind, start, end)) = parse_packet(&self.leftover) {
                let body = self.leftover[start..end].to_vec();
                self.leftover.drain(..end);
                return Ok((kind, body));
            }
            let mut buffer = [0u8; 1024];
            let n = self.stream.read(&mut buffer).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.leftover.extend_from_slice(&buffer[..n]);
        }
    }

    /// Reads PUBLISH packets until the connection ends. Runs until aborted.
    pub async fn read(mut self, reading: Reading) {
        let mut buffer = std::mem::take(&mut self.leftover);
        let mut chunk = vec![0u8; 16 * 1024];
        let mut sent = Vec::new();
        loop {
            let mut start = 0;
            while let Some((kind, body_start, end)) = parse_packet(&buffer[start..]) {
                if kind >> 4 == 3 {
                    if let Some(t0) = find_t0(&buffer[start + body_start..start + end]) {
                        sent.push(t0);
                    }
                }
                start += end;
            }
            buffer.drain(..start);
            reading.recorder.record(now_us(), &sent, reading.timed());
            sent.clear();
            reading.pause().await;
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    reading.recorder.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A packet with its fixed header and remaining length.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The first complete packet in `data`: its first byte and where its body
/// starts and ends.
fn parse_packet(data: &[u8]) -> Option<(u8, usize, usize)> {
    let kind = *data.first()?;
    let mut length = 0usize;
    let mut shift = 0;
    for (i, byte) in data.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            let start = i + 1;
            let end = start + length;
            return (data.len() >= end).then_some((kind, start, end));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remaining lengths round-trip through the variable-length encoding.
    #[test]
    fn packets_round_trip() {
        for size in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
            let body = vec![7u8; size];
            let wire = packet(0x30, &body);
            assert_eq!(
                parse_packet(&wire),
                Some((0x30, wire.len() - size, wire.len()))
            );
            assert_eq!(parse_packet(&wire[..wire.len() - 1]), None);
        }
    }
}
