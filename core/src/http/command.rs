//! `POST /command/{topic}?timeout_ms=…`: the body is published on `topic`
//! and the request waits for the device's answer on `{topic}/reply` (see
//! `crate::command`): 200 with the answer as the body, 504 when none came
//! in time, 404 when nothing is subscribed to the topic at all.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::publish::{check_rate, client_key, publish_error, topic_from_path};
use super::{identity, ApiError, AppState};
use crate::auth::Action;
use crate::broker::PublishError;
use crate::command::{Command, CommandError};
use crate::stats::Protocol;

/// The header naming the topic the answer came on.
pub const REPLY_TOPIC_HEADER: &str = "X-Tidewater-Reply-Topic";

pub async fn command(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = identity::principal(&req, &state, Protocol::Http, true)?;
    let topic = topic_from_path(req.uri().path(), "/command")?;
    let timeout_ms = parse_query(req.query_string())?;
    let payload = super::body::read(&req, &mut body, &state).await?;
    let client = client_key(&req, &principal);
    check_rate(&state, &client)?;
    let services = &state.services;
    let reply = services
        .commands
        .send(
            services,
            Command {
                protocol: Protocol::Http,
                principal: &principal,
                client,
                topic: &topic,
                payload: payload.freeze(),
                timeout_ms,
            },
        )
        .await
        .map_err(|e| {
            if matches!(
                e,
                CommandError::Publish(PublishError::Denied(_) | PublishError::Reserved)
            ) {
                services.stats.deny(Protocol::Http, Action::Publish);
            }
            command_error(e)
        })?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((REPLY_TOPIC_HEADER, reply.topic))
        .body(reply.payload))
}

/// `timeout_ms` (absent: the configured default), next to `access_token`.
fn parse_query(query: &str) -> Result<Option<u64>, ApiError> {
    let mut timeout = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "timeout_ms" => {
                let ms = value.parse::<u64>().ok().filter(|&ms| ms > 0).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-timeout",
                        format!("timeout_ms must be a whole number of milliseconds above 0, not `{value}`"),
                    )
                })?;
                timeout = Some(ms);
            }
            crate::auth::carrier::QUERY_PARAMETER => {}
            other => {
                return Err(ApiError::bad_request(
                    "unknown-parameter",
                    format!("unknown query parameter `{other}`: use timeout_ms or access_token"),
                ))
            }
        }
    }
    Ok(timeout)
}

fn command_error(error: CommandError) -> ApiError {
    let code = error.code();
    let message = error.to_string();
    match error {
        CommandError::Publish(e) => publish_error(e),
        CommandError::Topic { topic, source } => ApiError::bad_request(code, message)
            .with("topic", topic)
            .with("rule", source.rule()),
        CommandError::TimeoutTooLong { max, .. } => {
            ApiError::bad_request(code, message).with("max_timeout_ms", max)
        }
        CommandError::NoSubscriber(_) => ApiError::new(StatusCode::NOT_FOUND, code, message),
        CommandError::ReplyDenied(_) => ApiError::forbidden(message),
        CommandError::InFlight(_) => ApiError::new(StatusCode::CONFLICT, code, message),
        CommandError::TooManyForClient(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(1)
        }
        CommandError::TooMany(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
        }
        CommandError::Timeout { timeout_ms } => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, code, message).with("timeout_ms", timeout_ms)
        }
        CommandError::Subscribe(_) | CommandError::Flooded => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `timeout_ms` is a positive whole number; the token may ride along;
    /// anything else is named in the refusal.
    #[test]
    fn the_query_takes_a_timeout_and_a_token() {
        assert_eq!(parse_query("").ok(), Some(None));
        assert_eq!(parse_query("timeout_ms=2000").ok(), Some(Some(2_000)));
        assert_eq!(
            parse_query("access_token=x&timeout_ms=1").ok(),
            Some(Some(1))
        );
        for bad in [
            "timeout_ms=0",
            "timeout_ms=-1",
            "timeout_ms=1.5",
            "timeout_ms=",
            "qos=1",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
