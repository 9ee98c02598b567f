//! The HTTP server (actix-web): SSE streams, `POST /publish/{topic}`,
//! `GET /healthz`, `GET /plugins`, CORS, who a request is from, and JSON
//! error bodies for every refusal.

mod body;
pub mod command;
mod error;
pub mod identity;
mod publish;

pub use error::ApiError;

use std::net::TcpListener;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::auth::token::WebAuth;
use crate::config::{Config, HttpConfig};
use crate::plugin::PluginStatuses;
use crate::services::Services;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Stats, rules, log, router and broker (see `crate::services`).
    pub services: Services,
    pub config: Arc<Config>,
    /// Cancelled on shutdown; long-lived responses end when it is.
    pub cancel: CancellationToken,
    /// What `/metrics` exposes.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// Every configured plugin, for `GET /plugins`.
    pub plugins: PluginStatuses,
    /// How web clients prove who they are.
    pub auth: Arc<WebAuth>,
    /// Publish rates of HTTP clients, by user or address.
    pub publish_limiter: Arc<crate::limits::RateLimiter>,
    /// One permit per SSE stream open (`sse.max_streams`).
    pub sse_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per body byte being received (`http.max_body_bytes_in_flight`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
}

/// Builds the server on an already bound listener, serving HTTPS with `tls`
/// if given. Signals are left to the caller, which owns shutdown through
/// the cancellation token.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<actix_web::dev::Server> {
    let http = state.config.http.clone();
    let workers = if http.workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        http.workers
    };
    let data = web::Data::new(state);
    let static_dir = http.static_dir.clone();
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .wrap(cors(&http))
            .route("/events", web::get().to(crate::sse::events))
            .route("/publish", web::post().to(publish::publish))
            .route("/publish/{tail:.*}", web::post().to(publish::publish))
            .route("/command/{tail:.*}", web::post().to(command::command))
            .route("/healthz", web::get().to(health))
            .route("/metrics", web::get().to(metrics))
            .route("/plugins", web::get().to(plugins))
            .route("/devices", web::get().to(devices));
        // Static files last, so the API's paths always win.
        match &static_dir {
            Some(dir) => app.service(
                actix_files::Files::new("/", dir)
                    .index_file("index.html")
                    .default_handler(web::to(not_found)),
            ),
            None => app.default_service(web::to(not_found)),
        }
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(3);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, (*tls).clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// CORS for the listed origins. With credentials, the origins are exact
/// (configuration refuses `*` then), and a browser may send the token's
/// cookie and `Authorization` header.
fn cors(config: &HttpConfig) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers(["content-type", "last-event-id", "authorization"])
        .expose_headers([command::REPLY_TOPIC_HEADER])
        .max_age(3600);
    if config.cors_allow_credentials {
        cors = cors.supports_credentials();
    }
    for origin in &config.cors_allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// 200 while the broker works; 503 once it has failed, with the cause
/// (the bridge then stops, see `broker::health`).
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.services.stats.snapshot();
    let cause = state.services.broker.health().cause();
    let up = cause.is_none() && stats.broker_link_failures == 0;
    let log = state.services.log.status();
    // A failing log turns publishes away but keeps every stream serving:
    // degraded, not down (a restart would not give the disk room).
    let status = match (up, log.state) {
        (false, _) => "broker-down",
        (true, "ok") => "ok",
        (true, _) => "degraded",
    };
    let body = serde_json::json!({
        "status": status,
        "cause": cause,
        "log": log,
        "epoch": state.services.router.epoch(),
        "subscribers": state.services.router.subscriber_count(),
        "stats": stats,
    });
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition of every counter.
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = crate::metrics::render(&state.metrics).map_err(|_| {
        ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "metrics-unavailable",
            "the metrics could not be encoded",
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// `[{"name", "version", "state", "messages_in", "messages_out", ...,
/// "last_error"}]`, one per configured plugin, in configuration order.
async fn plugins(state: web::Data<AppState>) -> HttpResponse {
    let list: Vec<_> = state.plugins.iter().map(|p| p.snapshot()).collect();
    HttpResponse::Ok().json(list)
}

/// `[{"client_id", "username", "online", "since", "reason", "will_sent"}]`:
/// every device whose presence topic the caller may read, in client id
/// order (the same rules as a subscription to it).
async fn devices(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = identity::principal(&req, &state, crate::stats::Protocol::Http, false)?;
    let policy = &state.services.policy;
    let list: Vec<_> = state
        .services
        .presence
        .devices()
        .into_iter()
        .filter(|d| {
            let topic = d.topic();
            policy
                .authorize(&principal, crate::auth::Action::Subscribe, &topic)
                .is_ok()
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn not_found() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::NOT_FOUND,
        "not-found",
        "no such endpoint: try GET /events?topic=…, POST /publish/{topic}, POST /command/{topic}, GET /devices, GET /healthz, GET /metrics or GET /plugins",
    )
}
