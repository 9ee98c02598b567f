//! Shared test support: a real bridge on loopback port 0, a raw HTTP/1.1
//! client that reads `text/event-stream` byte for byte, and an rumqttc
//! device. Each test binary uses a subset, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tidewater::{Bridge, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A bridge started in-process on loopback ports; shut down on drop.
pub struct TestBridge {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub mqtt_v5: Option<SocketAddr>,
    pub mqtt_ws: Option<SocketAddr>,
    pub mqtt_tls: Option<SocketAddr>,
    pub ws: SocketAddr,
    /// The broker's own loopback listeners, behind the gate.
    pub broker: tidewater::broker::BrokerAddrs,
    /// The gate's login at the broker, to reach rumqttd past the gate.
    pub broker_login: (String, String),
    pub broker_health: std::sync::Arc<tidewater::broker::health::BrokerHealth>,
    pub router: tidewater::router::Router,
    cancel: CancellationToken,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

/// A configuration with every listener on `127.0.0.1:0`, and anonymous
/// web and MQTT clients let in (both are off by default).
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.auth.anonymous_web = true;
    config.auth.anonymous_mqtt = true;
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.http.workers = 2;
    config.websocket.listen = "127.0.0.1:0".parse().expect("addr");
    // In-process bridges keep nothing on disk unless a test asks for it
    // (see `on_disk`).
    config.log.kind = tidewater::log::Kind::Memory;
    // Presence adds a message per device connect and disconnect; tests that
    // count messages would count those too. `tests/presence.rs` turns it on.
    config.presence.enabled = false;
    config
}

/// The password of each user [`gated`] configures: `<name>-password`.
pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// MQTT users and access rules, so the MQTT gate runs:
/// - users `sensor` and `admin` (role `resident`), `guest` (no role);
/// - `admin` may publish on `home/secret/#`; nobody else touches it;
/// - residents read and write the rest of `home/#`; anonymous web clients
///   read it;
/// - every user reads and writes `users/<name>/#`, and publishes on
///   `clients/<client id>/out`.
pub fn gated(config: &mut Config) {
    use tidewater::auth::acl::{Actions, Effect};
    use tidewater::config::{AclRuleConfig, UserConfig};
    config.auth.anonymous_mqtt = false;
    config.auth.users = [
        ("sensor", &["resident"][..]),
        ("guest", &[]),
        ("admin", &["resident"]),
    ]
    .into_iter()
    .map(|(name, roles)| UserConfig {
        name: name.into(),
        password_hash: tidewater::auth::password::hash(&password(name)).expect("hash"),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        client_ids: Vec::new(),
    })
    .collect();
    let rule = |principal: &str, effect, action, filter: &str| AclRuleConfig {
        principal: principal.into(),
        effect,
        action,
        filter: filter.into(),
    };
    config.auth.acl = vec![
        rule(
            "user:admin",
            Effect::Allow,
            Actions::Publish,
            "home/secret/#",
        ),
        rule("any", Effect::Deny, Actions::Both, "home/secret/#"),
        rule("role:resident", Effect::Allow, Actions::Both, "home/#"),
        rule("anonymous", Effect::Allow, Actions::Subscribe, "home/#"),
        rule("authenticated", Effect::Allow, Actions::Both, "users/%u/#"),
        rule(
            "authenticated",
            Effect::Allow,
            Actions::Publish,
            "clients/%c/out",
        ),
    ];
}

pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestBridge {
    let mut config = test_config();
    configure(&mut config);
    let cancel = CancellationToken::new();
    let bridge = Bridge::start(config, cancel.clone())
        .await
        .expect("bridge starts");
    let (http, mqtt, mqtt_v5) = (bridge.http_addr, bridge.mqtt_addr, bridge.mqtt_v5_addr);
    let (mqtt_ws, ws) = (bridge.mqtt_ws_addr, bridge.ws_addr);
    let mqtt_tls = bridge.mqtt_tls_addr;
    let broker = bridge.broker_addrs;
    let (broker_login, broker_health) = (bridge.broker_login(), bridge.broker_health());
    let router = bridge.router().clone();
    let stopped = Some(tokio::spawn(bridge.stopped()));
    TestBridge {
        http,
        mqtt,
        mqtt_v5,
        mqtt_ws,
        mqtt_tls,
        ws,
        broker,
        broker_login,
        broker_health,
        router,
        cancel,
        stopped,
    }
}

pub async fn start() -> TestBridge {
    start_with(|_| {}).await
}

impl TestBridge {
    /// Shuts the bridge down and waits until its HTTP server has stopped.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(stopped) = self.stopped.take() {
            tokio::time::timeout(TIMEOUT, stopped)
                .await
                .expect("bridge stops in time")
                .expect("stop task");
        }
    }

    /// Waits for the bridge to stop without being asked to.
    pub async fn stops_on_its_own(&mut self) {
        let stopped = self.stopped.take().expect("not stopped yet");
        tokio::time::timeout(TIMEOUT, stopped)
            .await
            .expect("the bridge stopped on its own in time")
            .expect("shutdown did not panic");
    }

    pub fn stats(&self) -> tidewater::stats::StatsSnapshot {
        self.router.stats().snapshot()
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---------------------------------------------------------------- MQTT ---

/// A device: an rumqttc client whose incoming publishes arrive on a channel.
pub struct Device {
    pub client: AsyncClient,
    pub received: mpsc::Receiver<rumqttc::Publish>,
    acks: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Publishes `0`, `1`, … `count - 1` on `topic` at QoS 1 in the
    /// background, pausing briefly every ten, so readers can drop and
    /// resume while it runs.
    pub fn count_in_background(
        &self,
        topic: &'static str,
        count: u32,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        tokio::spawn(async move {
            for i in 0..count {
                client
                    .publish(topic, QoS::AtLeastOnce, false, i.to_string())
                    .await
                    .expect("publish");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    }

    /// Connects and waits for the CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str) -> Device {
        Self::try_connect(addr, id, None)
            .await
            .unwrap_or_else(|e| panic!("device {id} could not connect: {e}"))
    }

    /// Connects with a username and password, if given; a refused CONNECT
    /// (or a connection closed instead of a CONNACK) is an error.
    pub async fn try_connect(
        addr: SocketAddr,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (tx, received) = mpsc::channel(10_000);
        let (ack_tx, acks) = mpsc::channel(64);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let mut connected_tx = Some(connected_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(()).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        return;
                    }
                }
            }
        });
        let device = Device {
            client,
            received,
            acks,
            task,
        };
        tokio::time::timeout(TIMEOUT, connected_rx)
            .await
            .map_err(|_| "no CONNACK in time".to_owned())?
            .map_err(|_| "the event loop ended".to_owned())??;
        Ok(device)
    }

    /// Subscribes and waits for the broker's SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtMostOnce)
            .await
            .expect("subscribe queued");
        tokio::time::timeout(TIMEOUT, self.acks.recv())
            .await
            .expect("SUBACK in time")
            .expect("device still connected");
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish queued");
    }

    pub async fn next(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(TIMEOUT, self.received.recv())
            .await
            .expect("MQTT message in time")
            .expect("device still connected")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- HTTP ---

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut conn = HttpConnection::open(addr, method, path, headers, body).await;
    let mut body = Vec::new();
    while let Some(chunk) = conn.read_body().await {
        body.extend_from_slice(&chunk);
    }
    Response {
        status: conn.status,
        headers: conn.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    request(addr, "POST", path, &[], body).await
}

/// One HTTP/1.1 exchange, read incrementally (chunked or length-delimited).
struct HttpConnection {
    stream: TcpStream,
    buffer: BytesMut,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    remaining: Option<usize>,
    done: bool,
}

impl HttpConnection {
    async fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Self {
        let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut conn = HttpConnection {
            stream,
            buffer: BytesMut::new(),
            status: 0,
            headers: Vec::new(),
            chunked: false,
            remaining: None,
            done: false,
        };
        conn.read_head().await;
        conn
    }

    async fn fill(&mut self) -> bool {
        let read = tokio::time::timeout(TIMEOUT, self.stream.read_buf(&mut self.buffer))
            .await
            .expect("HTTP data in time");
        matches!(read, Ok(n) if n > 0)
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8(self.buffer[..end].to_vec()).expect("UTF-8 head");
                self.buffer.advance(end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().expect("status line");
                self.status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status code");
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        self.headers
                            .push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                self.chunked = header(&self.headers, "transfer-encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                self.remaining =
                    header(&self.headers, "content-length").and_then(|v| v.parse().ok());
                return;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    /// The next piece of the body, or `None` at its end.
    async fn read_body(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if self.chunked {
            loop {
                if let Some(line_end) = find(&self.buffer, b"\r\n") {
                    let size_text =
                        std::str::from_utf8(&self.buffer[..line_end]).expect("chunk size");
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .expect("hex chunk size");
                    if self.buffer.len() >= line_end + 2 + size + 2 {
                        self.buffer.advance(line_end + 2);
                        let chunk = self.buffer.split_to(size).to_vec();
                        self.buffer.advance(2);
                        if size == 0 {
                            self.done = true;
                            return None;
                        }
                        return Some(chunk);
                    }
                }
                if !self.fill().await {
                    self.done = true;
                    return None;
                }
            }
        }
        match self.remaining {
            Some(0) => {
                self.done = true;
                None
            }
            Some(remaining) => {
                if self.buffer.is_empty() && !self.fill().await {
                    self.done = true;
                    return None;
                }
                let take = remaining.min(self.buffer.len());
                self.remaining = Some(remaining - take);
                Some(self.buffer.split_to(take).to_vec())
            }
            None => {
                if self.buffer.is_empty() && !self.fill().await {
                    self.done = true;
                    return None;
                }
                Some(self.buffer.split().to_vec())
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ----------------------------------------------------------------- SSE ---

/// One dispatched event, as a browser's `EventSource` would see it, plus
/// the raw lines it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Something read from the stream: an event, a comment or a retry field.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Event(SseEvent),
    Comment(String),
    Retry(u64),
}

/// A client reading a raw `text/event-stream` response.
pub struct SseClient {
    conn: HttpConnection,
    text: String,
    pending: std::collections::VecDeque<SseItem>,
    current: SseEvent,
    data: Option<String>,
    pub raw: String,
}

impl SseClient {
    /// Opens `GET path`; panics unless the answer is 200.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = Self::open(addr, path, headers).await;
        assert_eq!(client.status(), 200, "SSE request {path} refused");
        client
    }

    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let conn = HttpConnection::open(addr, "GET", path, headers, b"").await;
        SseClient {
            conn,
            text: String::new(),
            pending: Default::default(),
            current: SseEvent::default(),
            data: None,
            raw: String::new(),
        }
    }

    pub fn status(&self) -> u16 {
        self.conn.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.conn.headers, name)
    }

    /// The next event, comment or retry field; `None` when the stream ends.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let chunk = self.conn.read_body().await?;
            let chunk = String::from_utf8(chunk).expect("SSE is UTF-8");
            self.raw.push_str(&chunk);
            self.text.push_str(&chunk);
            self.parse_lines();
        }
    }

    /// The next dispatched event, skipping comments and retry fields.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_item().await? {
                SseItem::Event(event) => return Some(event),
                SseItem::Comment(_) | SseItem::Retry(_) => {}
            }
        }
    }

    /// The next event, which must arrive before the stream ends.
    pub async fn expect_event(&mut self) -> SseEvent {
        self.next_event()
            .await
            .expect("an SSE event before the stream ended")
    }

    fn parse_lines(&mut self) {
        while let Some(end) = self.text.find('\n') {
            let line: String = self.text.drain(..=end).collect();
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if let Some(mut data) = self.data.take() {
                    data.pop();
                    let mut event = std::mem::take(&mut self.current);
                    event.data = data;
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    self.pending.push_back(SseItem::Event(event));
                }
                self.current = SseEvent::default();
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                self.pending
                    .push_back(SseItem::Comment(comment.trim().to_owned()));
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = value.to_owned(),
                "data" => {
                    let data = self.data.get_or_insert_with(String::new);
                    data.push_str(value);
                    data.push('\n');
                }
                "retry" => self
                    .pending
                    .push_back(SseItem::Retry(value.parse().expect("numeric retry"))),
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----------------------------------------------------------- WebSocket ---

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a JSON-protocol WebSocket session on `/ws`.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("WebSocket connect in time")
    .expect("WebSocket upgrade");
    ws
}

/// Opens a session on `path` with extra request headers; a refused upgrade
/// is its HTTP status and JSON body.
pub async fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, (u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WebSocket connect in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("a JSON refusal"))
                .unwrap_or_default();
            Err((status, body))
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// Sends one JSON request.
pub async fn ws_send(ws: &mut Ws, request: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        request.to_string().into(),
    ))
    .await
    .expect("send request");
}

/// The next JSON frame from the server (pings are answered by the library
/// and skipped here).
pub async fn ws_next(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("WebSocket frame in time")
            .expect("session still open")
            .expect("frame");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("server sends JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Sends a request and returns the reply carrying its `ref`; fails if a
/// message arrives first (use [`ws_request_collecting`] where one may).
pub async fn ws_request(
    ws: &mut Ws,
    request: serde_json::Value,
    reference: &str,
) -> serde_json::Value {
    let mut early = Vec::new();
    let reply = ws_request_collecting(ws, request, reference, &mut early).await;
    assert!(
        early.is_empty(),
        "unexpected frames before the reply: {early:?}"
    );
    reply
}

/// Sends a request and returns the reply carrying its `ref`; frames that
/// arrive before it are kept in `early`, in order.
pub async fn ws_request_collecting(
    ws: &mut Ws,
    mut request: serde_json::Value,
    reference: &str,
    early: &mut Vec<serde_json::Value>,
) -> serde_json::Value {
    request["ref"] = reference.into();
    ws_send(ws, request).await;
    loop {
        let reply = ws_next(ws).await;
        if reply["ref"] == reference {
            return reply;
        }
        early.push(reply);
    }
}

/// Waits for the close frame and returns its code.
pub async fn ws_close_code(ws: &mut Ws) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("error instead of a close frame: {e}"),
        }
    }
}
