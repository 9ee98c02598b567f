//! `POST /publish/{topic}`: the request body becomes an MQTT message on
//! `topic`, entering through the broker so devices, SSE streams and every
//! other subscriber receive it.
//!
//! `qos=0` (default) answers 202 once the message is queued for the broker;
//! `qos=1` answers 200 once the broker has appended it to its log.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
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
    let topic = topic_from_path(req.uri().path(), "/publish")?;
    let query = parse_query(req.query_string())?;
    let payload = super::body::read(&req, &mut body, &state).await?;
    // Checked once the body is read, so a client over its rate keeps its
    // keep-alive connection (actix closes one whose body went unread).
    check_rate(&state, &client_key(&req, &principal))?;
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
            if matches!(e, PublishError::Denied(_) | PublishError::Reserved) {
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

/// Who a request counts against, for rates and pending commands: its
/// user, or its address when anonymous (behind a proxy, anonymous clients
/// share the proxy's).
pub(super) fn client_key(req: &HttpRequest, principal: &Principal) -> String {
    match principal {
        Principal::User(identity) => format!("user:{}", identity.name),
        _ => format!(
            "addr:{}",
            req.peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        ),
    }
}

/// Takes one publish from `client`'s allowance, or the 429 to answer.
pub(super) fn check_rate(state: &AppState, client: &str) -> Result<(), ApiError> {
    let Err(wait) = state.publish_limiter.check(client) else {
        return Ok(());
    };
    state.services.stats.limit(Protocol::Http, Limit::Rate);
    Err(ApiError::new(
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
    .retry_after(crate::limits::retry_after_secs(wait)))
}

/// The topic is the rest of the path after `prefix/`, percent-decoded
/// (so `%2F` and `/` both separate levels, and `%23` is a `#`, refused later).
pub(super) fn topic_from_path(path: &str, prefix: &str) -> Result<String, ApiError> {
    let rest = path.strip_prefix(prefix).unwrap_or_default();
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

pub(super) fn publish_error(error: PublishError) -> ApiError {
    match &error {
        PublishError::InvalidTopic { topic, source } => {
            ApiError::bad_request("invalid-topic", error.to_string())
                .with("topic", topic.clone())
                .with("rule", source.rule())
        }
        PublishError::Denied(denied) => ApiError::forbidden(denied.to_string()),
        PublishError::Reserved => ApiError::forbidden(error.to_string()),
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
            topic_from_path("/publish/home/light/1/set", "/publish").ok(),
            Some("home/light/1/set".into())
        );
        assert_eq!(
            topic_from_path("/publish/a%2Fb%20c", "/publish").ok(),
            Some("a/b c".into())
        );
        assert_eq!(
            topic_from_path("/publish/", "/publish").ok(),
            Some(String::new())
        );
        assert_eq!(
            topic_from_path("/publish", "/publish").ok(),
            Some(String::new())
        );
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
            let _ = topic_from_path(&path, "/publish");
        }
    }
}
