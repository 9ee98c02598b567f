//! `GET /events`: Server-Sent Event streams of the messages matching one or
//! more topic filters, resumable with `Last-Event-ID`.
//!
//! Query: `topic=<filter>` (repeatable), `format=raw|json`,
//! `lastEventId=<id>` (a first `EventSource` connection cannot set headers;
//! the `Last-Event-ID` header, which the browser sends on reconnect, wins).
//! The query is percent-decoded but a literal `+` stays `+`, the MQTT
//! wildcard: write a space as `%20`.

pub mod frame;
mod stream;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use percent_encoding::percent_decode_str;

use crate::auth::Action;
use crate::http::{identity, ApiError, AppState};
use crate::router::{EventId, FilterBounds, QueueBound, Start, SubscribeError, SubscribeRequest};
use crate::stats::{Limit, Protocol};
pub use frame::Format;

/// What a client asked for in the query string.
#[derive(Debug, Default, PartialEq)]
struct EventsQuery {
    topics: Vec<String>,
    format: Option<Format>,
    last_event_id: Option<String>,
    /// A time to replay from (`-5m`, RFC 3339), checked when read.
    since: Option<u64>,
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = identity::principal(&req, &state, Protocol::Sse, false)?;
    let query = parse_query(req.query_string())?;
    let stats = &state.services.stats;
    let Ok(slot) = state.sse_slots.clone().try_acquire_owned() else {
        stats.limit(Protocol::Sse, Limit::Connections);
        return Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            format!(
                "the bridge serves at most {} SSE streams (sse.max_streams); retry later",
                state.config.sse.max_streams
            ),
        )
        .retry_after(5));
    };
    let format = query.format.unwrap_or(Format::Raw);
    let header_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| {
            ApiError::bad_request("malformed-id", "the Last-Event-ID header is not text")
        })?;
    let resume = header_id
        .or(query.last_event_id)
        .filter(|id| !id.is_empty())
        .map(|id| id.parse::<EventId>())
        .transpose()
        .map_err(|e| ApiError::bad_request("malformed-id", e.to_string()))?;

    let sse = &state.config.sse;
    let valid_until = principal.valid_until();
    let subscription = state
        .services
        .router
        .subscribe(SubscribeRequest {
            principal,
            filters: query.topics,
            // An id the browser sends on reconnect wins over `since`: the
            // page asked for history once, and resumes exactly after it.
            start: match (resume, query.since) {
                (Some(id), _) => Start::After(id),
                (None, Some(time)) => Start::Since(time),
                (None, None) => Start::Now,
            },
            queue: QueueBound {
                messages: sse.queue_capacity,
                bytes: sse.queue_max_bytes,
            },
            bounds: FilterBounds {
                max_filters: sse.max_filters,
                max_filter_bytes: sse.max_filter_bytes,
                budget_bytes: sse.filter_budget_bytes,
            },
        })
        .map_err(|e| {
            if let SubscribeError::Denied(_) = e {
                stats.deny(Protocol::Sse, Action::Subscribe);
            }
            if let Some(limit) = e.limit() {
                stats.limit(Protocol::Sse, limit);
            }
            subscribe_error(e)
        })?;

    let body = stream::SseStream::new(subscription, format, sse, &state, valid_until, slot);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body.into_stream()))
}

fn subscribe_error(error: SubscribeError) -> ApiError {
    match &error {
        SubscribeError::NoFilters => ApiError::bad_request(
            "missing-topic",
            "give at least one topic filter: /events?topic=home/%2B/temperature",
        ),
        SubscribeError::TooManyFilters { .. } => {
            ApiError::bad_request("too-many-filters", error.to_string())
        }
        SubscribeError::OverBudget { max, .. } => {
            ApiError::bad_request("filter-budget", error.to_string())
                .with("filter_budget_bytes", *max)
        }
        SubscribeError::InvalidFilter { filter, source } => {
            ApiError::bad_request("invalid-filter", error.to_string())
                .with("filter", filter.clone())
                .with("rule", source.rule())
        }
        SubscribeError::Denied(denied) => ApiError::forbidden(denied.to_string()),
        SubscribeError::ReplayTooLong { max, .. } => {
            ApiError::bad_request("replay-too-long", error.to_string()).with("max_replay", *max)
        }
        // A subscription this young cannot have overflowed yet.
        SubscribeError::Ended => ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "subscription-ended",
            error.to_string(),
        ),
    }
}

fn parse_query(query: &str) -> Result<EventsQuery, ApiError> {
    let mut parsed = EventsQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8().map_err(|_| {
            ApiError::bad_request(
                "invalid-query",
                format!("the value of `{key}` is not UTF-8"),
            )
        })?;
        match key {
            "topic" => parsed.topics.push(value.into_owned()),
            "format" => {
                parsed.format = Some(match value.as_ref() {
                    "raw" => Format::Raw,
                    "json" => Format::Json,
                    other => {
                        return Err(ApiError::bad_request(
                            "invalid-format",
                            format!("unknown format `{other}`: use raw or json"),
                        ))
                    }
                })
            }
            "lastEventId" => parsed.last_event_id = Some(value.into_owned()),
            "since" => {
                let time = crate::router::start::parse_time(&value, crate::router::now_ms())
                    .map_err(|e| ApiError::bad_request("malformed-since", e.to_string()))?;
                parsed.since = Some(time);
            }
            // Read by the authentication that ran first.
            crate::auth::carrier::QUERY_PARAMETER => {}
            other => {
                return Err(ApiError::bad_request(
                    "unknown-parameter",
                    format!("unknown query parameter `{other}`: use topic, format, lastEventId, since or access_token"),
                ))
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeated `topic` parameters collect in order; `+` stays the wildcard
    /// and percent-escapes decode.
    #[test]
    fn query_topics_and_wildcards() {
        let q = parse_query("topic=home/+/temperature&topic=a%2Fb%2B&format=json&lastEventId=1-2")
            .expect("valid query");
        assert_eq!(q.topics, vec!["home/+/temperature", "a/b+"]);
        assert_eq!(q.format, Some(Format::Json));
        assert_eq!(q.last_event_id.as_deref(), Some("1-2"));
    }

    /// A misspelt parameter is refused by name rather than ignored.
    #[test]
    fn unknown_parameter_is_refused() {
        assert!(parse_query("topics=a").is_err());
        assert!(parse_query("topic=a&format=xml").is_err());
    }

    /// The token parameter is accepted here (authentication reads it).
    #[test]
    fn access_token_is_a_known_parameter() {
        let q = parse_query("topic=a&access_token=x.y.z").expect("valid query");
        assert_eq!(q.topics, vec!["a"]);
    }

    proptest::proptest! {
        /// Any query string is parsed or refused with a code, never a panic.
        #[test]
        fn any_query_is_answered(query in "[a-zA-Z=&%+#/0-9.\\-_\u{e9}]{0,80}") {
            if let Err(error) = parse_query(&query) {
                proptest::prop_assert!(error.to_string().contains('('));
            }
        }

        /// Filters percent-encoded into the query come back exactly, in
        /// order, whatever they contain.
        #[test]
        fn encoded_filters_round_trip(filters in proptest::collection::vec("\\PC{1,16}", 1..5)) {
            use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
            let query: Vec<String> = filters
                .iter()
                .map(|f| format!("topic={}", utf8_percent_encode(f, NON_ALPHANUMERIC)))
                .collect();
            let parsed = parse_query(&query.join("&")).expect("valid query");
            proptest::prop_assert_eq!(parsed.topics, filters);
        }
    }
}
