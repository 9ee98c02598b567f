//! Request bodies (`POST /publish`, `POST /command`): read whole, within
//! `http.max_publish_bytes`, within `http.body_timeout_secs`, and with the
//! bytes all requests may be receiving at once bounded by
//! `http.max_body_bytes_in_flight`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::{ApiError, AppState};
use crate::stats::{Limit, Protocol, Stats};

/// The whole body of `req`, or the refusal to answer instead.
pub async fn read(
    req: &HttpRequest,
    body: &mut web::Payload,
    state: &AppState,
) -> Result<BytesMut, ApiError> {
    let stats = &state.services.stats;
    let limit = state.config.http.max_publish_bytes;
    let too_large = || {
        stats.limit(Protocol::Http, Limit::Payload);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is larger than http.max_publish_bytes ({limit} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    // The body's bytes are reserved before any is read (a body without a
    // length may grow to the limit), so half-sent bodies hold a bounded
    // amount between them; a client is refused at once rather than queued.
    let reserve = u32::try_from(declared.unwrap_or(limit)).unwrap_or(u32::MAX);
    let Ok(permit) = state.body_budget.clone().try_acquire_many_owned(reserve) else {
        stats.limit(Protocol::Http, Limit::Bodies);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many request bodies are arriving at once (http.max_body_bytes_in_flight); retry shortly",
        )
        .retry_after(1));
    };
    let _reserved = Reserved::new(permit, reserve, stats.clone());
    let deadline = std::time::Duration::from_secs(state.config.http.body_timeout_secs);
    let read = tokio::time::timeout(deadline, async {
        let mut payload = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request("invalid-body", e.to_string()))?;
            if payload.len() + chunk.len() > limit {
                return Err(too_large());
            }
            payload.extend_from_slice(&chunk);
        }
        Ok(payload)
    });
    // An unread body leaves actix no way to find the next request: it
    // closes the connection after this answer.
    read.await.map_err(|_| {
        stats.limit(Protocol::Http, Limit::Bodies);
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the body did not arrive within http.body_timeout_secs ({} s)",
                state.config.http.body_timeout_secs
            ),
        )
    })?
}

/// Body bytes reserved for one request, shown in
/// `tidewater_http_body_bytes_in_flight` while held.
struct Reserved {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: u64,
    stats: std::sync::Arc<Stats>,
}

impl Reserved {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        bytes: u32,
        stats: std::sync::Arc<Stats>,
    ) -> Self {
        let bytes = u64::from(bytes);
        Stats::add(&stats.http_body_bytes_in_flight, bytes);
        Self {
            _permit: permit,
            bytes,
            stats,
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        Stats::sub(&self.stats.http_body_bytes_in_flight, self.bytes);
    }
}
