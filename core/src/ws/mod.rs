//! The WebSocket listener: one connection carries subscriptions, deliveries
//! and publishes both ways, in the JSON protocol of [`protocol`], with the
//! same ids, resume, access check and slow-consumer handling as SSE.
//!
//! Runs on its own port (tokio-tungstenite), not inside actix-web, so its
//! frame and buffer limits are set here explicitly, for every connection.
//! The upgrade request is where a client proves who it is (a token in the
//! `Authorization` header, a cookie, or the `access_token` query parameter)
//! and where the connection limit applies, once it has: a refusal is an
//! HTTP status with a JSON body, before any WebSocket frame. Connections
//! that have not proved anything yet have a bound of their own
//! ([`handshakes`]).

mod handshakes;
pub mod protocol;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as FrameLimits;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::carrier::{self, Carriers, Source};
use crate::auth::token::{TokenError, WebAuth};
use crate::auth::Principal;
use crate::config::{LimitsConfig, WebSocketConfig};
use crate::services::Services;
use crate::stats::{Limit, Protocol, Stats};
use handshakes::{Handshake, Handshakes};

/// What every session of the listener shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// Stats, rules, log, router and broker (see `crate::services`).
    pub services: Services,
    pub config: Arc<WebSocketConfig>,
    pub auth: Arc<WebAuth>,
    /// Each session's publish rate.
    pub limits: LimitsConfig,
    /// The broker's largest payload (`mqtt.max_payload_bytes`): larger
    /// publishes are refused here rather than by the broker.
    pub max_payload_bytes: usize,
    /// Serves `wss://` when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What the listener's connections share besides the context.
#[derive(Debug, Clone)]
struct Room {
    /// One permit per session (`websocket.max_connections`), taken once
    /// its client has proved who it is.
    slots: Arc<Semaphore>,
    /// Connections still in their upgrade request.
    handshakes: Arc<Handshakes>,
    limits: FrameLimits,
}

/// Accepts connections until `cancel` fires; sessions are spawned on
/// `tracker` so shutdown can wait for their close frames.
pub async fn serve(
    listener: TcpListener,
    context: Context,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let room = Room {
        slots: Arc::new(Semaphore::new(context.config.max_connections)),
        handshakes: Handshakes::new(
            context.config.max_handshakes,
            context.services.stats.clone(),
        ),
        limits: frame_limits(&context.config, context.max_payload_bytes),
    };
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "WebSocket accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (context, room, cancel) = (context.clone(), room.clone(), cancel.clone());
        // Entered before TLS: a TLS handshake proves nothing either.
        let handshake = room.handshakes.enter();
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            // Each kind boxed: a task's future is as large as its largest
            // state, and a plain session should not carry the TLS
            // handshake's and stream's (measured in BENCHMARKS.md, S3).
            match context.tls.clone() {
                None => Box::pin(run(stream, peer, context, room, handshake, cancel)).await,
                Some(tls) => {
                    Box::pin(run_tls(stream, peer, tls, context, room, handshake, cancel)).await
                }
            }
        });
    }
}

/// Completes the TLS handshake within its deadline, then serves the session.
async fn run_tls(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    context: Context,
    room: Room,
    handshake: Handshake,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accept = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let accepted = tokio::select! {
        () = cancel.cancelled() => return,
        () = handshake.evicted.cancelled() => {
            tracing::debug!("WebSocket TLS handshake dropped for a newer one (websocket.max_handshakes).");
            return;
        }
        accepted = accept => accepted,
    };
    match accepted {
        Ok(Ok(tls)) => run(tls, peer, context, room, handshake, cancel).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "WebSocket TLS handshake failed."),
        Err(_) => tracing::debug!("WebSocket TLS handshake timed out."),
    }
}

/// Upgrades one connection and serves its session. The upgrade gives up
/// its place among the handshakes once done, and holds a session slot
/// from the moment its client proved who it is.
async fn run<S>(
    stream: S,
    peer: std::net::SocketAddr,
    context: Context,
    room: Room,
    handshake: Handshake,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_secs(context.config.handshake_timeout_secs);
    let upgraded = tokio::select! {
        () = cancel.cancelled() => return,
        () = handshake.evicted.cancelled() => {
            tracing::debug!("WebSocket handshake dropped for a newer one (websocket.max_handshakes).");
            return;
        }
        upgraded = tokio::time::timeout(timeout, upgrade(stream, &context, &room)) => upgraded,
    };
    drop(handshake);
    let (ws, principal, slot) = match upgraded {
        Ok(Some(upgraded)) => upgraded,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!("WebSocket handshake timed out (websocket.handshake_timeout_secs).");
            return;
        }
    };
    let stats = context.services.stats.clone();
    Stats::incr(&stats.ws_sessions_opened);
    Stats::incr(&stats.ws_sessions_open);
    session::Session::new(ws, &context, principal, peer)
        .run(cancel)
        .await;
    drop(slot);
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

/// The upgrade: the request checked, the client admitted with a session
/// slot, or refused with an HTTP status.
async fn upgrade<S>(
    stream: S,
    context: &Context,
    room: &Room,
) -> Option<(
    tokio_tungstenite::WebSocketStream<S>,
    Principal,
    OwnedSemaphorePermit,
)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut admitted = None;
    #[allow(clippy::result_large_err)] // the callback type tungstenite requires
    let check = |request: &Request, response: Response| {
        admitted = Some(check_request(context, request, &room.slots)?);
        Ok(response)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(room.limits));
    match upgrade.await {
        Ok(ws) => admitted.map(|(principal, slot)| (ws, principal, slot)),
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket handshake refused.");
            None
        }
    }
}

/// Accepts only the configured path, allowed origins, while there is room,
/// from a client that proves who it is (or anonymously where allowed).
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn check_request(
    context: &Context,
    request: &Request,
    slots: &Arc<Semaphore>,
) -> Result<(Principal, OwnedSemaphorePermit), ErrorResponse> {
    let config = &context.config;
    let stats = &context.services.stats;
    if request.uri().path() != config.path {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no WebSocket endpoint here: connect to {}", config.path),
        ));
    }
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN);
    if !config.allowed_origins.is_empty()
        && !config
            .allowed_origins
            .iter()
            .any(|allowed| Some(allowed.as_str()) == origin)
    {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "origin `{}` is not in websocket.allowed_origins",
                origin.unwrap_or_default()
            ),
        ));
    }
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let authorization = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            unauthorized(
                stats,
                TokenError::Malformed("the Authorization header is not text".into()),
            )
        })?),
    };
    let carriers = Carriers {
        authorization,
        cookies: &cookies,
        query: request.uri().query().unwrap_or_default(),
    };
    let (principal, source) = context
        .auth
        .authenticate(carriers)
        .map_err(|e| unauthorized(stats, e))?;
    // Browsers send cookies with WebSocket upgrades from any site, and no
    // CORS applies: a cookie token needs an origin the bridge trusts.
    if source == Some(Source::Cookie)
        && !carrier::cookie_origin_allowed(origin, text(header::HOST), &config.allowed_origins)
    {
        stats.deny(Protocol::WebSocket, crate::auth::Action::Subscribe);
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a token in a cookie cannot be used from origin `{}`: it is neither this bridge nor in websocket.allowed_origins",
                origin.unwrap_or_default()
            ),
        ));
    }
    // Counted once the client proved who it is: connections that prove
    // nothing never hold a session's place.
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        stats.limit(Protocol::WebSocket, Limit::Connections);
        let mut response = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            format!(
                "the bridge serves at most {} WebSocket sessions (websocket.max_connections); retry later",
                config.max_connections
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return Err(response);
    };
    Ok((principal, slot))
}

fn unauthorized(stats: &Stats, error: TokenError) -> ErrorResponse {
    stats.refuse_auth(Protocol::WebSocket, error.kind());
    let mut response = refusal(StatusCode::UNAUTHORIZED, error.code(), error.to_string());
    let challenge = match error {
        TokenError::Missing => r#"Bearer realm="tidewater""#,
        _ => r#"Bearer realm="tidewater", error="invalid_token""#,
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    response
}

/// A refusal with the JSON body every HTTP refusal of the bridge uses.
fn refusal(status: StatusCode, code: &str, message: String) -> ErrorResponse {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
