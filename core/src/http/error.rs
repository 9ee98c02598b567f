//! The one error body every HTTP refusal uses:
//! `{"error": "<kebab-case code>", "message": "<sentence>", ...details}`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 401 for missing, invalid or expired credentials, with the
    /// `WWW-Authenticate` challenge of RFC 6750 (`invalid_token` when a
    /// token was presented).
    pub fn unauthorized(error: &crate::auth::token::TokenError) -> Self {
        use crate::auth::token::TokenError;
        let challenge = match error {
            TokenError::Missing => r#"Bearer realm="tidewater""#.to_owned(),
            other => format!(
                r#"Bearer realm="tidewater", error="invalid_token", error_description="{}""#,
                other.to_string().replace(['"', '\\'], "'")
            ),
        };
        Self::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
            .header("WWW-Authenticate", challenge)
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds a field to the body, e.g. the filter that was refused.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Asks the client to retry after `seconds` (503 on a full queue).
    pub fn retry_after(self, seconds: u32) -> Self {
        self.header("Retry-After", seconds.to_string())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.clone().into());
        body.extend(self.details.clone());
        let mut response = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            response.insert_header((*name, value.as_str()));
        }
        response.json(Value::Object(body))
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _req: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}
