//! The WebSocket listener: one connection carries subscriptions, deliveries
//! and publishes both ways, in the JSON protocol of [`protocol`], with the
//! same ids, resume, access check and slow-consumer handling as SSE.
//!
//! Runs on its own port (tokio-tungstenite), not inside actix-web, so its
//! frame and buffer limits are set here explicitly, for every connection.

pub mod protocol;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as FrameLimits;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebSocketConfig;
use crate::router::Router;
use crate::stats::Stats;

/// A client has this long to complete the upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `cancel` fires; sessions are spawned on
/// `tracker` so shutdown can wait for their close frames.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: Arc<WebSocketConfig>,
    max_payload_bytes: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = frame_limits(&config, max_payload_bytes);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "WebSocket accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (router, config, cancel) = (router.clone(), config.clone(), cancel.clone());
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let Some(ws) = handshake(stream, &config, limits).await else {
                return;
            };
            let stats = router.stats().clone();
            Stats::incr(&stats.ws_sessions_opened);
            Stats::incr(&stats.ws_sessions_open);
            session::Session::new(ws, router, config).run(cancel).await;
        });
    }
}

/// Frame and buffer limits, explicit so an idle connection costs a few KiB
/// rather than the library's defaults, and no client can make the bridge
/// buffer without bound.
fn frame_limits(config: &WebSocketConfig, max_payload_bytes: usize) -> FrameLimits {
    // Room for the largest broker payload, base64-encoded inside JSON.
    let largest_outgoing = max_payload_bytes / 3 * 4 + 4096;
    FrameLimits::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        .max_write_buffer_size(config.write_buffer_bytes + 2 * largest_outgoing)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
}

async fn handshake(
    stream: TcpStream,
    config: &WebSocketConfig,
    limits: FrameLimits,
) -> Option<tokio_tungstenite::WebSocketStream<TcpStream>> {
    #[allow(clippy::result_large_err)] // the callback type tungstenite requires
    let check = |request: &Request, response: Response| check_request(config, request, response);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(limits));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket handshake refused.");
            None
        }
        Err(_) => {
            tracing::debug!("WebSocket handshake timed out.");
            None
        }
    }
}

/// Accepts only the configured path and, when configured, allowed origins.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn check_request(
    config: &WebSocketConfig,
    request: &Request,
    response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != config.path {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no WebSocket endpoint here: connect to {}", config.path),
        ));
    }
    if !config.allowed_origins.is_empty() {
        let origin = request
            .headers()
            .get("origin")
            .and_then(|o| o.to_str().ok())
            .unwrap_or_default();
        if !config
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
        {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                format!("origin `{origin}` is not in websocket.allowed_origins"),
            ));
        }
    }
    Ok(response)
}

fn refusal(status: StatusCode, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() = status;
    response
}
