//! MQTT over WebSocket at the gate: the upgrade (subprotocol `mqtt`, any
//! path, as rumqttd's own listener), then binary frames carried to and
//! from a gate session as one byte stream.
//!
//! The session reads and writes bytes; a WebSocket carries frames, and an
//! MQTT packet may span frames or share one. An in-memory pipe joins the
//! two: one loop copies the client's binary frames into the pipe, another
//! sends what the session writes as binary frames. The two loops run
//! side by side, never one waiting on the other, because a pump that
//! blocked in one direction could stall the other and, through the broker,
//! itself.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::{session, Shared};

/// Bytes the pipe holds in each direction before its writer waits.
const PIPE_BYTES: usize = 16 * 1024;

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
type Stream<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

/// Upgrades one connection (plain, or TLS already accepted) and relays it
/// through a gate session.
pub async fn run<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A frame or message may hold a whole packet, no more.
    let limits = WebSocketConfig::default()
        .max_message_size(Some(shared.max_packet + 8))
        .max_frame_size(Some(shared.max_packet + 8));
    #[allow(clippy::result_large_err)] // the callback type tungstenite requires
    let callback = |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim() == "mqtt");
        if offered {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
        }
        Ok(response)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(limits));
    let ws = match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT over WebSocket upgrade refused.");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "MQTT over WebSocket upgrade timed out.");
            return;
        }
    };
    let (gate_end, pump_end) = tokio::io::duplex(PIPE_BYTES);
    let (pipe_rx, pipe_tx) = tokio::io::split(pump_end);
    let (sink, stream) = ws.split();
    // The session ends when either loop does: `select!` then drops both
    // loops and with them both halves of the pipe's far end, which the
    // session reads as the client going away.
    tokio::join!(session::run(gate_end, peer, shared, cancel), async {
        tokio::select! {
            () = frames_in(stream, pipe_tx) => {}
            () = frames_out(pipe_rx, sink) => {}
        }
    });
}

/// The client's binary frames, into the pipe.
async fn frames_in<S>(mut stream: Stream<S>, mut pipe: WriteHalf<DuplexStream>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Binary(bytes)) => {
                if pipe.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Pings are answered by the library; MQTT travels in binary only.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Text(_)) => {
                tracing::debug!("MQTT over WebSocket: a text frame, closing.");
                return;
            }
            Ok(Message::Close(_)) => return,
            Err(e) => {
                tracing::debug!(error = %e, "MQTT over WebSocket read failed.");
                return;
            }
        }
    }
}

/// What the session writes, as binary frames; a close frame at its end.
async fn frames_out<S>(mut pipe: ReadHalf<DuplexStream>, mut sink: Sink<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PIPE_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tokio::time::timeout(session::WRITE_TIMEOUT, sink.close()).await;
                return;
            }
            Ok(n) => {
                let frame = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                let sent = tokio::time::timeout(session::WRITE_TIMEOUT, sink.send(frame)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}
