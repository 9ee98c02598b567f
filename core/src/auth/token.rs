//! JSON Web Tokens for web clients: checking one, and the identity it names
//! (where a request carries it is [`super::carrier`]).
//!
//! A token is accepted when its signature
//! verifies with a configured key (HS256 shared secret, RS256 or ES256
//! public keys), it carries `sub`, `exp` and the configured `aud` (and `iss`
//! when one is configured), and the clock is between its `nbf` and `exp`,
//! give or take the configured leeway.
//!
//! Claims: `sub` is the user; the configured roles claim (default `roles`)
//! a list of role names; `client_id`, if present, is `%c` in rules; a
//! `tidewater` object `{"subscribe": [filters], "publish": [filters]}`
//! narrows what the rules allow (see [`super::Grants`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::carrier::{extract, Carriers, Source};
use super::{Grants, Identity, Principal};
use crate::config::JwtConfig;
use crate::topic;

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `Authorization: Bearer <token>`, the cookie, or ?access_token=")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify with any configured key")]
    BadSignature,
    #[error("the token is not for this bridge (aud)")]
    WrongAudience,
    #[error("the token is not from the configured issuer (iss)")]
    WrongIssuer,
    #[error("the token's algorithm `{0}` is not accepted here")]
    Algorithm(String),
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's claims are unusable: {0}")]
    Claims(String),
}

impl TokenError {
    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing-token",
            Self::Expired => "token-expired",
            _ => "invalid-token",
        }
    }

    /// How the refusal is counted.
    pub fn kind(&self) -> crate::stats::AuthFailure {
        use crate::stats::AuthFailure;
        match self {
            Self::Missing => AuthFailure::Missing,
            Self::Expired => AuthFailure::Expired,
            _ => AuthFailure::Invalid,
        }
    }
}

/// A configured key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.jwt.public_keys: cannot read `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.jwt.public_keys: `{path}` is neither an RSA nor an EC public key in PEM")]
    NotAKey { path: PathBuf },
}

struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// How web clients prove who they are, as `[auth]` configures it.
pub struct WebAuth {
    anonymous: bool,
    verifier: Option<Verifier>,
}

impl std::fmt::Debug for WebAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAuth")
            .field("anonymous", &self.anonymous)
            .field("tokens", &self.verifier.is_some())
            .finish()
    }
}

impl WebAuth {
    /// Anonymous access as configured, and tokens if `[auth.jwt]` is set;
    /// reads the key files.
    pub fn new(anonymous: bool, jwt: Option<&JwtConfig>) -> Result<Self, KeyError> {
        Ok(Self {
            anonymous,
            verifier: jwt.map(Verifier::new).transpose()?,
        })
    }

    /// Everyone is anonymous and welcome: for tests and tools.
    pub fn open() -> Self {
        Self {
            anonymous: true,
            verifier: None,
        }
    }

    /// Who the request is from, and where its token was. A token that is
    /// present but invalid is refused even where anonymous access is on: a
    /// client that meant to authenticate must learn that it did not.
    /// Without `[auth.jwt]` no request carries a token: an `Authorization`
    /// header meant for something else (a proxy's Basic login) is ignored.
    pub fn authenticate(
        &self,
        carriers: Carriers<'_>,
    ) -> Result<(Principal, Option<Source>), TokenError> {
        let found = match &self.verifier {
            Some(verifier) => extract(
                carriers,
                verifier.cookie.as_deref(),
                verifier.query_parameter,
            )?,
            None => None,
        };
        match (found, &self.verifier) {
            (Some((token, source)), Some(verifier)) => {
                let identity = verifier.verify(&token)?;
                Ok((Principal::User(Arc::new(identity)), Some(source)))
            }
            _ if self.anonymous => Ok((Principal::Anonymous, None)),
            _ => Err(TokenError::Missing),
        }
    }
}

/// Checks tokens against the configured keys and claims.
struct Verifier {
    keys: Vec<Key>,
    audience: String,
    issuer: Option<String>,
    leeway: u64,
    roles_claim: String,
    cookie: Option<String>,
    query_parameter: bool,
}

impl Verifier {
    fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if !config.secret.is_empty() {
            keys.push(Key {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(config.secret.as_bytes()),
            });
        }
        for path in &config.public_keys {
            keys.push(load_public_key(path)?);
        }
        Ok(Self {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway: config.leeway_secs,
            roles_claim: config.roles_claim.clone(),
            cookie: Some(config.cookie.clone()).filter(|c| !c.is_empty()),
            query_parameter: config.query_parameter,
        })
    }

    fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(&e))?;
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidAudience => return Err(TokenError::WrongAudience),
                        ErrorKind::InvalidIssuer => return Err(TokenError::WrongIssuer),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            return Err(TokenError::Claims(format!("`{claim}` is missing")))
                        }
                        ErrorKind::InvalidClaimFormat(claim) => {
                            return Err(TokenError::Claims(format!("`{claim}` has the wrong type")))
                        }
                        _ => malformed(&e),
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(&self, mut claims: Map<String, Value>) -> Result<Identity, TokenError> {
        let name = match claims.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            _ => {
                return Err(TokenError::Claims(
                    "`sub` must be a non-empty string".into(),
                ))
            }
        };
        let roles = match claims.remove(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => strings(value).ok_or_else(|| {
                TokenError::Claims(format!("`{}` must be a list of strings", self.roles_claim))
            })?,
        };
        let client_id = match claims.remove("client_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id),
            Some(_) => return Err(TokenError::Claims("`client_id` must be a string".into())),
        };
        let grants = match claims.remove("tidewater") {
            None | Some(Value::Null) => None,
            Some(value) => Some(grants(value)?),
        };
        // The moment the token stops being accepted: a session that ended
        // earlier would be refused nothing on reconnecting, and loop. JWT
        // dates are any JSON number, so `exp` may carry a fraction: whole
        // seconds are kept (ending the session up to a second early, never
        // late), and an `exp` that is no number at all is refused rather
        // than read as a session that never ends.
        let expires_at = match claims.get("exp") {
            None => None,
            Some(exp) => Some(
                whole_seconds(exp)
                    .ok_or_else(|| TokenError::Claims("`exp` must be a number".into()))?
                    .saturating_add(self.leeway),
            ),
        };
        Ok(Identity {
            name,
            roles,
            client_id,
            grants,
            expires_at,
        })
    }
}

/// A JWT date (seconds since the Unix epoch, any JSON number) in whole
/// seconds, rounded down; a negative one is 0.
fn whole_seconds(date: &Value) -> Option<u64> {
    if let Some(seconds) = date.as_u64() {
        return Some(seconds);
    }
    let seconds = date.as_f64()?;
    if seconds.is_nan() {
        return None;
    }
    // `as` saturates: a date past u64 is the end of time, a negative one 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(seconds.floor() as u64)
}

/// The `tidewater` claim: `{"subscribe": [...], "publish": [...]}`, every
/// entry a valid filter.
fn grants(value: Value) -> Result<Grants, TokenError> {
    let Value::Object(mut object) = value else {
        return Err(TokenError::Claims("`tidewater` must be an object".into()));
    };
    let mut list = |key: &str| -> Result<Vec<String>, TokenError> {
        let filters = match object.remove(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => strings(value).ok_or_else(|| {
                TokenError::Claims(format!("`tidewater.{key}` must be a list of strings"))
            })?,
        };
        for filter in &filters {
            topic::validate_filter(filter, topic::MAX_TOPIC_BYTES).map_err(|e| {
                TokenError::Claims(format!("`tidewater.{key}` holds `{filter}`: {e}"))
            })?;
        }
        Ok(filters)
    };
    let subscribe = list("subscribe")?;
    let publish = list("publish")?;
    if let Some(unknown) = object.keys().next() {
        return Err(TokenError::Claims(format!(
            "unknown key `tidewater.{unknown}`: use subscribe and publish"
        )));
    }
    Ok(Grants { subscribe, publish })
}

fn strings(value: Value) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        return None;
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn malformed(error: &jsonwebtoken::errors::Error) -> TokenError {
    match error.kind() {
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Algorithm("unknown".into())
        }
        _ => TokenError::Malformed(error.to_string()),
    }
}

fn load_public_key(path: &Path) -> Result<Key, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    Err(KeyError::NotAKey {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests;
