//! Where a web request carries its token, in the order the bridge looks:
//! the `Authorization: Bearer` header, the configured cookie, then the
//! `access_token` query parameter (a first `EventSource` connection cannot
//! set headers; `docs/security.md` weighs the options). And the one check a
//! cookie needs that the others do not: browsers attach cookies to requests
//! other sites make, so a state-changing request with a cookie token must
//! come from an origin the bridge trusts.

use percent_encoding::percent_decode_str;

use super::token::TokenError;

/// The query parameter a token may travel in.
pub const QUERY_PARAMETER: &str = "access_token";

/// Longest token accepted, in bytes: well above any real JWT, and small
/// enough that a hostile header costs nothing to refuse.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where a token was found; a cookie is sent by browsers on their own, so
/// state-changing requests check the origin when it came from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Cookie,
    Query,
}

/// The request's parts a token may be in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Carriers<'a> {
    pub authorization: Option<&'a str>,
    /// Every `Cookie` header's value.
    pub cookies: &'a [&'a str],
    /// The raw query string (without `?`).
    pub query: &'a str,
}

/// Finds the token in a request: the `Authorization` header, then the
/// cookie `cookie_name`, then (if allowed) the `access_token` query
/// parameter. A malformed carrier (a non-Bearer `Authorization`, a token
/// in two query parameters) is an error rather than ignored.
pub fn extract(
    carriers: Carriers<'_>,
    cookie_name: Option<&str>,
    query_allowed: bool,
) -> Result<Option<(String, Source)>, TokenError> {
    if let Some(header) = carriers.authorization {
        let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
        return checked(token.trim()).map(|t| Some((t, Source::Header)));
    }
    if let Some(name) = cookie_name {
        let found = carriers
            .cookies
            .iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name);
        if let Some((_, value)) = found {
            return checked(value.trim().trim_matches('"')).map(|t| Some((t, Source::Cookie)));
        }
    }
    if query_allowed {
        let mut found = None;
        for pair in carriers.query.split('&') {
            let Some(value) = pair
                .strip_prefix(QUERY_PARAMETER)
                .and_then(|r| r.strip_prefix('='))
            else {
                continue;
            };
            if found.is_some() {
                return Err(TokenError::Malformed(
                    "access_token is given more than once".into(),
                ));
            }
            let value = percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| TokenError::Malformed("access_token is not UTF-8".into()))?;
            found = Some(checked(&value)?);
        }
        return Ok(found.map(|t| (t, Source::Query)));
    }
    Ok(None)
}

/// Whether a request that carried its token in a cookie may change state
/// (publish, open a WebSocket). Browsers attach cookies to requests that
/// other sites make, so such a request must come from the bridge's own
/// origin (its `Host`) or an origin listed in `allowed`, or carry no
/// `Origin` at all (not a browser). `*` in `allowed` does not count.
pub fn cookie_origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host);
    same_origin || allowed.iter().any(|a| a != "*" && a == origin)
}

fn checked(token: &str) -> Result<String, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Malformed("the token is empty".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "the token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The header wins over the cookie, which wins over the query; escapes in
    /// the query decode; a non-Bearer header or a repeated parameter is refused.
    #[test]
    fn extraction_order_and_errors() {
        let carriers = Carriers {
            authorization: Some("Bearer h"),
            cookies: &["a=1; tw=c"],
            query: "topic=x&access_token=q",
        };
        assert_eq!(
            extract(carriers, Some("tw"), true),
            Ok(Some(("h".into(), Source::Header)))
        );
        let no_header = Carriers {
            authorization: None,
            ..carriers
        };
        assert_eq!(
            extract(no_header, Some("tw"), true),
            Ok(Some(("c".into(), Source::Cookie)))
        );
        assert_eq!(
            extract(no_header, None, true),
            Ok(Some(("q".into(), Source::Query)))
        );
        assert_eq!(extract(no_header, None, false), Ok(None));
        let escaped = Carriers {
            query: "access_token=a%2Eb",
            ..Carriers::default()
        };
        assert_eq!(
            extract(escaped, None, true),
            Ok(Some(("a.b".into(), Source::Query)))
        );
        let basic = Carriers {
            authorization: Some("Basic dTpw"),
            ..Carriers::default()
        };
        assert!(extract(basic, None, true).is_err());
        let twice = Carriers {
            query: "access_token=a&access_token=b",
            ..Carriers::default()
        };
        assert!(extract(twice, None, true).is_err());
    }

    /// A cookie token may change state only from the bridge's own origin, a
    /// listed origin, or a client that sends no `Origin` (not a browser).
    #[test]
    fn cookie_origins() {
        let allowed = ["https://dash.example".to_owned(), "*".to_owned()];
        let host = Some("bridge.example:8080");
        assert!(cookie_origin_allowed(None, host, &allowed));
        assert!(cookie_origin_allowed(
            Some("https://bridge.example:8080"),
            host,
            &allowed
        ));
        assert!(cookie_origin_allowed(
            Some("https://dash.example"),
            host,
            &allowed
        ));
        assert!(!cookie_origin_allowed(
            Some("https://evil.example"),
            host,
            &allowed
        ));
        assert!(!cookie_origin_allowed(Some("null"), host, &allowed));
    }

    proptest! {
    /// Whatever a client puts in the header, cookies and query, extraction
    /// answers without panicking, and a found token is non-empty.
    #[test]
    fn extraction_never_panics(
        authorization in proptest::option::of("\\PC{0,40}"),
        cookie in "\\PC{0,40}",
        query in "[a-z_=&%0-9A-F.]{0,60}",
    ) {
        let cookies = [cookie.as_str()];
        let carriers = Carriers { authorization: authorization.as_deref(), cookies: &cookies, query: &query };
        if let Ok(Some((token, _))) = extract(carriers, Some("tw"), true) {
            prop_assert!(!token.is_empty());
        }
    }
    }
}
