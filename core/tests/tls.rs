//! TLS end to end: a certificate authority made by the test signs the
//! bridge's certificate; clients that trust it reach HTTPS (SSE and
//! publish), `wss://` and MQTT over TLS; clients that do not, and plain
//! clients on TLS ports, are refused while everyone else is served.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::{start_with, TestBridge, TIMEOUT};

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed,
/// written as PEM files for `[tls]`.
struct Pki {
    ca: CertificateDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
    dir: PathBuf,
}

impl Pki {
    fn new(label: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tidewater test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let dir =
            std::env::temp_dir().join(format!("tidewater-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert_path = dir.join("bridge.crt");
        let key_path = dir.join("bridge.key");
        // The chain: the server's certificate, then its issuer's.
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), ca_cert.pem())).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Self {
            ca: ca_cert.der().clone(),
            cert_path,
            key_path,
            dir,
        }
    }

    /// A client connector trusting this CA only.
    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("trust the test CA");
        connector(roots)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connector(roots: rustls::RootCertStore) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Every listener on TLS, with the test's certificate.
async fn start_tls(pki: &Pki) -> TestBridge {
    let (cert, key) = (pki.cert_path.clone(), pki.key_path.clone());
    start_with(move |c| {
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
        c.http.tls = true;
        c.websocket.tls = true;
        c.mqtt.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await
}

async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
}

/// Reads until `needle` has arrived, returning everything read.
async fn read_until(stream: &mut (impl AsyncReadExt + Unpin), needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("data in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    seen
}

async fn https_post(connector: &TlsConnector, addr: SocketAddr, path: &str, body: &str) -> String {
    let mut stream = tls_connect(connector, addr).await.expect("HTTPS connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// An SSE stream over HTTPS receives what is published over HTTPS.
#[tokio::test]
async fn https_streams_and_publishes() {
    let pki = Pki::new("https");
    let bridge = start_tls(&pki).await;
    let connector = pki.connector();
    let mut sse = tls_connect(&connector, bridge.http)
        .await
        .expect("HTTPS connect");
    sse.write_all(b"GET /events?topic=tls/%23 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let head = read_until(&mut sse, b"retry:").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let response = https_post(&connector, bridge.http, "/publish/tls/a", "over-tls").await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    read_until(&mut sse, b"data: over-tls").await;
    bridge.shutdown().await;
}

/// A `wss://` session subscribes and receives.
#[tokio::test]
async fn secure_websocket_sessions() {
    let pki = Pki::new("wss");
    let bridge = start_tls(&pki).await;
    let connector = pki.connector();
    let stream = tls_connect(&connector, bridge.ws)
        .await
        .expect("TLS connect");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("WebSocket upgrade over TLS");
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let subscribe = json!({"op": "subscribe", "topics": ["tls/#"], "ref": "s"});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("send");
    let publish = json!({"op": "publish", "topic": "tls/ws", "payload": "wss", "ref": "p"});
    ws.send(Message::Text(publish.to_string().into()))
        .await
        .expect("send");
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|m: &serde_json::Value| m["op"] == "message")
    {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            seen.push(serde_json::from_str(&text).expect("JSON"));
        }
    }
    let message = seen
        .iter()
        .find(|m| m["op"] == "message")
        .expect("a message");
    assert_eq!(message["payload"], "wss");
    bridge.shutdown().await;
}

/// An MQTT client over TLS connects, subscribes and receives.
#[tokio::test]
async fn mqtt_over_tls() {
    let pki = Pki::new("mqtts");
    let bridge = start_tls(&pki).await;
    let connector = pki.connector();
    let addr = bridge.mqtt_tls.expect("MQTT TLS listener");
    let mut mqtt = tls_connect(&connector, addr).await.expect("TLS connect");
    // CONNECT (MQTT 3.1.1, clean session, keep-alive 30 s, id "tls").
    mqtt.write_all(&[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3, b't', b'l', b's',
    ])
    .await
    .expect("CONNECT");
    let connack = read_until(&mut mqtt, &[0x20, 0x02]).await;
    assert_eq!(connack.last(), Some(&0), "CONNACK accepted");
    // SUBSCRIBE packet id 1 to "tls/#" at QoS 0.
    mqtt.write_all(&[0x82, 10, 0, 1, 0, 5, b't', b'l', b's', b'/', b'#', 0])
        .await
        .expect("SUBSCRIBE");
    read_until(&mut mqtt, &[0x90, 3, 0, 1, 0]).await;
    let response = https_post(&connector, bridge.http, "/publish/tls/m", "to-mqtt").await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    read_until(&mut mqtt, b"tls/mto-mqtt").await;
    bridge.shutdown().await;
}

/// A client that does not trust the CA fails its handshake on every TLS
/// listener, a plain client gets no answer from the HTTPS port, and a
/// silent connection to the MQTT TLS port does not hold up the next
/// client; the bridge serves on.
#[tokio::test]
async fn untrusted_and_plain_clients_are_refused() {
    let pki = Pki::new("refused");
    let bridge = start_tls(&pki).await;
    let mqtt_tls = bridge.mqtt_tls.expect("MQTT TLS listener");
    let stranger = connector(rustls::RootCertStore::empty());
    for addr in [bridge.http, bridge.ws, mqtt_tls] {
        assert!(tls_connect(&stranger, addr).await.is_err(), "{addr}");
    }
    let mut plain = TcpStream::connect(bridge.http).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP must not be served on the HTTPS port"
    );
    let _silent = TcpStream::connect(mqtt_tls).await.expect("connect");
    let connector = pki.connector();
    assert!(tls_connect(&connector, mqtt_tls).await.is_ok());
    let response = https_post(&connector, bridge.http, "/publish/tls/still", "up").await;
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    bridge.shutdown().await;
}

/// With access rules configured, MQTT over TLS goes through the gate like
/// every other MQTT listener: a denied filter gets a SUBACK failure, an
/// allowed one receives.
#[tokio::test]
async fn mqtt_over_tls_follows_the_rules() {
    let pki = Pki::new("mqtts-rules");
    let (cert, key) = (pki.cert_path.clone(), pki.key_path.clone());
    let bridge = start_with(move |c| {
        common::gated(c);
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
        c.mqtt.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let addr = bridge.mqtt_tls.expect("MQTT TLS listener");
    let stream = tls_connect(&pki.connector(), addr)
        .await
        .expect("TLS connect");
    let password = common::password("sensor");
    let options = common::raw::Connect {
        level: 5,
        client_id: "sensor-tls",
        login: Some(("sensor", &password)),
        will_topic: None,
    };
    let (mut sensor, code) = common::raw::RawMqtt::connect_over(Box::new(stream), options).await;
    assert_eq!(code, Some(0));
    let codes = sensor
        .subscribe(1, &[("home/secret/#", 0), ("home/kitchen/#", 0)])
        .await;
    assert_eq!(codes, [0x87, 0]);
    sensor.publish("home/kitchen/tls", b"over tls", 0, 0).await;
    assert_eq!(sensor.next_publish().await.topic, "home/kitchen/tls");
    bridge.shutdown().await;
}

/// MQTT over `wss://` (`mqtt.websocket_tls`) goes through the gate: the
/// same rules hold as over plain TCP.
#[tokio::test]
async fn mqtt_over_secure_websocket_follows_the_rules() {
    let pki = Pki::new("mqtt-wss");
    let (cert, key) = (pki.cert_path.clone(), pki.key_path.clone());
    let bridge = start_with(move |c| {
        common::gated(c);
        c.tls.cert_path = Some(cert);
        c.tls.key_path = Some(key);
        c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.mqtt.websocket_tls = true;
    })
    .await;
    let addr = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 101"),
        "a plain upgrade is not accepted on a wss:// listener"
    );
    let options = || common::raw::Connect {
        level: 4,
        client_id: "sensor-wss",
        login: None,
        will_topic: None,
    };
    let stream = tls_connect(&pki.connector(), addr)
        .await
        .expect("TLS connect");
    let password = common::password("sensor");
    let options = common::raw::Connect {
        login: Some(("sensor", &password)),
        ..options()
    };
    let (mut sensor, code) =
        common::raw::RawMqtt::connect_ws_over(Box::new(stream), "wss://localhost/mqtt", options)
            .await;
    assert_eq!(code, Some(0));
    let codes = sensor
        .subscribe(1, &[("home/secret/#", 0), ("home/kitchen/#", 0)])
        .await;
    assert_eq!(codes, [0x80, 0], "MQTT 3.1.1: 0x80 for the denied filter");
    sensor.publish("home/kitchen/wss", b"over wss", 0, 0).await;
    assert_eq!(sensor.next_publish().await.topic, "home/kitchen/wss");
    bridge.shutdown().await;
}
