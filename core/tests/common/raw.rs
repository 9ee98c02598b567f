//! A raw MQTT 3.1.1 / 5 client that writes packets byte for byte and reads
//! them back framed, so tests can see exact return and reason codes,
//! packet ids and topic aliases (which rumqttc hides or manages itself).
//! It speaks over TCP, any byte stream (TLS), or MQTT over WebSocket.

use std::collections::VecDeque;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::TIMEOUT;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

enum Link {
    Bytes(Box<dyn Stream>),
    WebSocket(Box<Ws>),
}

/// A packet read back: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    pub fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

/// A received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// Options of a CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Connect<'a> {
    /// 4 (MQTT 3.1.1) or 5.
    pub level: u8,
    pub client_id: &'a str,
    pub login: Option<(&'a str, &'a str)>,
    pub will_topic: Option<&'a str>,
}

pub struct RawMqtt {
    link: Link,
    buf: Vec<u8>,
    pub level: u8,
    /// PUBLISHes read while waiting for something else.
    publishes: VecDeque<Packet>,
}

pub fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

pub fn connect_packet(options: &Connect<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(options.level);
    let mut flags = 0x02;
    if options.will_topic.is_some() {
        flags |= 0x04;
    }
    if options.login.is_some() {
        flags |= 0xc0;
    }
    body.push(flags);
    body.extend_from_slice(&[0, 30]);
    if options.level == 5 {
        body.push(0);
    }
    string(&mut body, options.client_id);
    if let Some(topic) = options.will_topic {
        if options.level == 5 {
            body.push(0);
        }
        string(&mut body, topic);
        string(&mut body, "gone");
    }
    if let Some((user, password)) = options.login {
        string(&mut body, user);
        string(&mut body, password);
    }
    packet(0x10, &body)
}

impl RawMqtt {
    /// Connects over TCP; the client and the CONNACK's code (`None` if the
    /// connection closed without one).
    pub async fn connect(addr: SocketAddr, options: Connect<'_>) -> (Self, Option<u8>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::connect_over(Box::new(stream), options).await
    }

    pub async fn connect_over(stream: Box<dyn Stream>, options: Connect<'_>) -> (Self, Option<u8>) {
        Self::handshake(Link::Bytes(stream), options).await
    }

    /// MQTT over WebSocket (subprotocol `mqtt`).
    pub async fn connect_ws(addr: SocketAddr, options: Connect<'_>) -> (Self, Option<u8>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::connect_ws_over(Box::new(stream), &format!("ws://{addr}/mqtt"), options).await
    }

    /// MQTT over WebSocket on an open byte stream (`wss://` over TLS).
    pub async fn connect_ws_over(
        stream: Box<dyn Stream>,
        url: &str,
        options: Connect<'_>,
    ) -> (Self, Option<u8>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        let (ws, response) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("upgrade in time")
                .expect("WebSocket upgrade");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..]),
            "the subprotocol is echoed"
        );
        Self::handshake(Link::WebSocket(Box::new(ws)), options).await
    }

    /// Connects with a CONNECT of MQTT `level` built by the caller.
    pub async fn connect_with(addr: SocketAddr, level: u8, connect: &[u8]) -> (Self, Option<u8>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::handshake_with(Link::Bytes(Box::new(stream)), level, connect).await
    }

    async fn handshake(link: Link, options: Connect<'_>) -> (Self, Option<u8>) {
        Self::handshake_with(link, options.level, &connect_packet(&options)).await
    }

    async fn handshake_with(link: Link, level: u8, connect: &[u8]) -> (Self, Option<u8>) {
        let mut client = Self {
            link,
            buf: Vec::new(),
            level,
            publishes: VecDeque::new(),
        };
        client.send(connect).await;
        let code = match client.next().await {
            Some(p) if p.kind() == 2 => p.body.get(1).copied(),
            _ => None,
        };
        (client, code)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Bytes(stream) => {
                stream.write_all(bytes).await.expect("write");
                stream.flush().await.expect("flush");
            }
            Link::WebSocket(ws) => ws
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .expect("send"),
        }
    }

    /// The next packet, or `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some((packet, used)) = frame(&self.buf) {
                self.buf.drain(..used);
                return Some(packet);
            }
            let more = tokio::time::timeout(TIMEOUT, self.read())
                .await
                .expect("a packet or a close in time");
            match more {
                Some(bytes) if !bytes.is_empty() => self.buf.extend_from_slice(&bytes),
                _ => return None,
            }
        }
    }

    async fn read(&mut self) -> Option<Vec<u8>> {
        match &mut self.link {
            Link::Bytes(stream) => {
                let mut chunk = vec![0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => Some(chunk[..n].to_vec()),
                    _ => None,
                }
            }
            Link::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => return Some(bytes.to_vec()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => return None,
                }
            },
        }
    }

    /// The next packet that is not a PUBLISH (those are kept for
    /// [`RawMqtt::next_publish`]).
    pub async fn next_control(&mut self) -> Packet {
        loop {
            let packet = self.next().await.expect("connection open");
            if packet.kind() == 3 {
                self.publishes.push_back(packet);
            } else {
                return packet;
            }
        }
    }

    /// Subscribes to `filters` (with their QoS) under `id`; the SUBACK's codes.
    pub async fn subscribe(&mut self, id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        if self.level == 5 {
            body.push(0);
        }
        for (filter, qos) in filters {
            string(&mut body, filter);
            body.push(*qos);
        }
        self.send(&packet(0x82, &body)).await;
        let ack = self.next_control().await;
        assert_eq!(ack.kind(), 9, "SUBACK expected: {ack:?}");
        assert_eq!(ack.packet_id(), id);
        let skip = if self.level == 5 { 3 } else { 2 };
        ack.body[skip..].to_vec()
    }

    /// Unsubscribes from `filters` under `id`, and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, id: u16, filters: &[&str]) {
        let mut body = id.to_be_bytes().to_vec();
        if self.level == 5 {
            body.push(0);
        }
        for filter in filters {
            string(&mut body, filter);
        }
        self.send(&packet(0xA2, &body)).await;
        let ack = self.next_control().await;
        assert_eq!(ack.kind(), 11, "UNSUBACK expected: {ack:?}");
        assert_eq!(ack.packet_id(), id);
    }

    /// A PUBLISH; MQTT 5 may set a topic alias (and an empty topic uses it).
    pub fn publish_packet(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        id: u16,
        alias: Option<u16>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(&mut body, topic);
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if self.level == 5 {
            match alias {
                Some(alias) => {
                    body.extend_from_slice(&[3, 0x23]);
                    body.extend_from_slice(&alias.to_be_bytes());
                }
                None => body.push(0),
            }
        }
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    /// A retained QoS 0 PUBLISH.
    pub async fn publish_retained(&mut self, topic: &str, payload: &[u8]) {
        let mut bytes = self.publish_packet(topic, payload, 0, 0, None);
        bytes[0] |= 1;
        self.send(&bytes).await;
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, id: u16) {
        let bytes = self.publish_packet(topic, payload, qos, id, None);
        self.send(&bytes).await;
    }

    /// Waits for an acknowledgement of `kind` for `id`; its MQTT 5 reason
    /// code (0 when absent, and always for 3.1.1).
    pub async fn ack(&mut self, kind: u8, id: u16) -> u8 {
        let packet = self.next_control().await;
        assert_eq!(
            (packet.kind(), packet.packet_id()),
            (kind, id),
            "{packet:?}"
        );
        packet.body.get(2).copied().unwrap_or(0)
    }

    /// The next PUBLISH, acknowledged as its QoS requires.
    pub async fn next_publish(&mut self) -> Received {
        let packet = match self.publishes.pop_front() {
            Some(packet) => packet,
            None => loop {
                let packet = self.next().await.expect("a PUBLISH, connection open");
                if packet.kind() == 3 {
                    break packet;
                }
            },
        };
        let qos = (packet.first >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([packet.body[0], packet.body[1]]));
        let topic = String::from_utf8(packet.body[2..2 + topic_len].to_vec()).expect("UTF-8");
        let mut at = 2 + topic_len;
        let mut id = 0;
        if qos > 0 {
            id = u16::from_be_bytes([packet.body[at], packet.body[at + 1]]);
            at += 2;
        }
        if self.level == 5 {
            at += 1 + usize::from(packet.body[at]);
        }
        let payload = packet.body[at..].to_vec();
        let id_bytes = id.to_be_bytes();
        match qos {
            1 => self.send(&[0x40, 2, id_bytes[0], id_bytes[1]]).await,
            2 => {
                self.send(&[0x50, 2, id_bytes[0], id_bytes[1]]).await;
                let release = self.next_control().await;
                assert_eq!(release.kind(), 6, "PUBREL expected");
                self.send(&[0x70, 2, id_bytes[0], id_bytes[1]]).await;
            }
            _ => {}
        }
        Received {
            topic,
            payload,
            qos,
            retain: packet.first & 1 == 1,
        }
    }

    /// Topics of the PUBLISHes received up to and including `last`.
    pub async fn topics_until(&mut self, last: &str) -> Vec<String> {
        let mut topics = Vec::new();
        while topics.last().map(String::as_str) != Some(last) {
            topics.push(self.next_publish().await.topic);
        }
        topics
    }
}

/// The packet at the start of `buf` and its length, once complete.
fn frame(buf: &[u8]) -> Option<(Packet, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            let body = buf.get(start..start + len)?.to_vec();
            return Some((
                Packet {
                    first: buf[0],
                    body,
                },
                start + len,
            ));
        }
    }
    panic!("malformed remaining length from the server")
}
