//! Who an HTTP request is from: its token (header, cookie or query),
//! checked by the bridge's [`WebAuth`](crate::auth::token::WebAuth), or
//! anonymous where that is allowed. A refusal is a 401 with a JSON body and
//! a `WWW-Authenticate` challenge, counted by protocol and reason.

use actix_web::http::header;
use actix_web::HttpRequest;

use super::{ApiError, AppState};
use crate::auth::carrier::{self, Carriers, Source};
use crate::auth::token::TokenError;
use crate::auth::{Action, Principal};
use crate::stats::Protocol;

/// Authenticates `req`. With `changes_state` (a publish), a token that came
/// in a cookie is accepted only from an allowed origin: see
/// [`carrier::cookie_origin_allowed`].
pub fn principal(
    req: &HttpRequest,
    state: &AppState,
    protocol: Protocol,
    changes_state: bool,
) -> Result<Principal, ApiError> {
    let stats = &state.services.stats;
    let refuse = |error: TokenError| {
        stats.refuse_auth(protocol, error.kind());
        ApiError::unauthorized(&error)
    };
    let headers = req.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| {
            refuse(TokenError::Malformed(
                "the Authorization header is not text".into(),
            ))
        })?;
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .collect();
    let carriers = Carriers {
        authorization,
        cookies: &cookies,
        query: req.query_string(),
    };
    let (principal, source) = state.auth.authenticate(carriers).map_err(refuse)?;
    if changes_state && source == Some(Source::Cookie) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !carrier::cookie_origin_allowed(origin, host, &state.config.http.cors_allowed_origins) {
            stats.deny(protocol, Action::Publish);
            return Err(ApiError::forbidden(format!(
                "a token in a cookie cannot be used from origin `{}`: it is neither this bridge nor in http.cors_allowed_origins",
                origin.unwrap_or_default()
            )));
        }
    }
    Ok(principal)
}
