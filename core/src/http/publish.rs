//! `POST /publish/{topic}`: the request body becomes an MQTT message on
//! `topic`, entering through the broker so devices, SSE streams and every
//! other subscriber receive it.
//!
//! `qos=0` (default) answers 202 once the message is queued for the broker;
//! `qos=1` answers 200 once the broker has appended it to its log.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use percent_encoding::percent_decode_str;

use super::{identity, ApiError, AppState};
use crate::auth::{Action, Principal};
use crate::broker::PublishError;
use crate::stats::{Limit, Protocol, Stats};

#[derive(Debug, PartialEq, Eq)]
struct PublishQuery {
    qos: u8,
    retain: bool,
}

pub async fn publish(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = identity::principal(&req, &state, Protocol::Http, true)?;
    let topic = topic_from_path(req.uri().path())?;
    let query = parse_query(req.query_string())?;
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
    let Ok(_reserved) = state.body_budget.clone().try_acquire_many_owned(reserve) else {
        stats.limit(Protocol::Http, Limit::Bodies);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many request bodies are arriving at once (http.max_body_bytes_in_flight); retry shortly",
        )
        .retry_after(1));
    };
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
    let payload = read.await.map_err(|_| {
        stats.limit(Protocol::Http, Limit::Bodies);
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the body did not arrive within http.body_timeout_secs ({} s)",
                state.config.http.body_timeout_secs
            ),
        )
    })??;
    // Checked once the body is read, so a client over its rate keeps its
    // keep-alive connection (actix closes one whose body went unread).
    // Keyed by user; anonymous clients by address (behind a proxy, they
    // share the proxy's).
    let client = match &principal {
        Principal::User(identity) => format!("user:{}", identity.name),
        _ => format!(
            "addr:{}",
            req.peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
    };
    if let Err(wait) = state.publish_limiter.check(&client) {
        stats.limit(Protocol::Http, Limit::Rate);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "more than limits.publish_rate ({}/s) publishes; retry in {} ms",
                state.config.limits.publish_rate,
                wait.as_millis()
            ),
        )
        .with(
            "retry_after_ms",
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        )
        .retry_after(crate::limits::retry_after_secs(wait)));
    }
    let bytes = payload.len();
    state
        .services
        .broker
        .publish(
            crate::stats::Protocol::Http,
            &principal,
            &topic,
            payload.freeze(),
            query.retain,
            query.qos == 1,
        )
        .await
        .map_err(|e| {
            if matches!(e, PublishError::Denied(_)) {
                state.services.stats.deny(Protocol::Http, Action::Publish);
            }
            publish_error(e)
        })?;
    Stats::incr(&state.services.stats.http_publishes);
    let status = if query.qos == 1 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status).json(serde_json::json!({
        "topic": topic,
        "bytes": bytes,
        "qos": query.qos,
        "retain": query.retain,
    })))
}

/// The topic is the rest of the path after `/publish/`, percent-decoded
/// (so `%2F` and `/` both separate levels, and `%23` is a `#`, refused later).
fn topic_from_path(path: &str) -> Result<String, ApiError> {
    let rest = path.strip_prefix("/publish").unwrap_or_default();
    let raw = rest.strip_prefix('/').unwrap_or(rest);
    percent_decode_str(raw)
        .decode_utf8()
        .map(|t| t.into_owned())
        .map_err(|_| ApiError::bad_request("invalid-topic", "the topic is not valid UTF-8"))
}

fn parse_query(query: &str) -> Result<PublishQuery, ApiError> {
    let mut parsed = PublishQuery {
        qos: 0,
        retain: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("qos", "0") => parsed.qos = 0,
            ("qos", "1") => parsed.qos = 1,
            ("qos", other) => {
                return Err(ApiError::bad_request(
                    "invalid-qos",
                    format!("qos must be 0 or 1, not `{other}`"),
                ))
            }
            ("retain", "true") => parsed.retain = true,
            ("retain", "false") => parsed.retain = false,
            ("retain", other) => {
                return Err(ApiError::bad_request(
                    "invalid-retain",
                    format!("retain must be true or false, not `{other}`"),
                ))
            }
            // Read by the authentication that ran first.
            (crate::auth::carrier::QUERY_PARAMETER, _) => {}
            (other, _) => {
                return Err(ApiError::bad_request(
                    "unknown-parameter",
                    format!("unknown query parameter `{other}`: use qos, retain or access_token"),
                ))
            }
        }
    }
    Ok(parsed)
}

fn publish_error(error: PublishError) -> ApiError {
    match &error {
        PublishError::InvalidTopic { topic, source } => {
            ApiError::bad_request("invalid-topic", error.to_string())
                .with("topic", topic.clone())
                .with("rule", source.rule())
        }
        PublishError::Denied(denied) => ApiError::forbidden(denied.to_string()),
        PublishError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            error.to_string(),
        ),
        PublishError::TopicTooLong { .. } => ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "topic-too-long",
            error.to_string(),
        ),
        PublishError::TopicTooDeep { .. } => ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "topic-too-deep",
            error.to_string(),
        ),
        PublishError::TopicLimit => ApiError::new(
            actix_web::http::StatusCode::INSUFFICIENT_STORAGE,
            "topic-limit",
            error.to_string(),
        ),
        PublishError::Busy => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", error.to_string()).retry_after(1)
        }
        PublishError::StorageFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-full",
            error.to_string(),
        )
        .retry_after(5),
        PublishError::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            error.to_string(),
        ),
        PublishError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "broker-timeout",
            error.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic is everything after `/publish/`, with escapes decoded.
    #[test]
    fn topic_comes_from_the_path() {
        assert_eq!(
            topic_from_path("/publish/home/light/1/set").ok(),
            Some("home/light/1/set".into())
        );
        assert_eq!(
            topic_from_path("/publish/a%2Fb%20c").ok(),
            Some("a/b c".into())
        );
        assert_eq!(topic_from_path("/publish/").ok(), Some(String::new()));
        assert_eq!(topic_from_path("/publish").ok(), Some(String::new()));
    }

    /// qos and retain take only their documented values.
    #[test]
    fn query_values_are_checked() {
        assert_eq!(
            parse_query("qos=1&retain=true").ok(),
            Some(PublishQuery {
                qos: 1,
                retain: true
            })
        );
        assert!(parse_query("qos=2").is_err());
        assert!(parse_query("retain=yes").is_err());
        assert!(parse_query("ttl=5").is_err());
        assert!(parse_query("qos=1&access_token=x.y.z").is_ok());
    }

    proptest::proptest! {
        /// Any query string and path is parsed or refused, never a panic;
        /// what parses has a documented QoS.
        #[test]
        fn any_query_and_path_are_answered(
            query in "[a-z=&%0-9.]{0,60}",
            path in "/publish[a-zA-Z/%0-9+#\u{e9}]{0,40}",
        ) {
            if let Ok(parsed) = parse_query(&query) {
                proptest::prop_assert!(parsed.qos <= 1);
            }
            let _ = topic_from_path(&path);
        }
    }
}
