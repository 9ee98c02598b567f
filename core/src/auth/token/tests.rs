//! Tokens minted here with each algorithm and every way of being wrong.

use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::JwtConfig;

const SECRET: &str = "an HS256 secret of at least 32 bytes!";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn config() -> JwtConfig {
    JwtConfig {
        secret: SECRET.into(),
        audience: "tidewater".into(),
        ..JwtConfig::default()
    }
}

fn claims() -> serde_json::Value {
    json!({"sub": "ann", "aud": "tidewater", "exp": now() + 600, "roles": ["resident"]})
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn verify(config: &JwtConfig, token: &str) -> Result<Identity, TokenError> {
    Verifier::new(config).expect("keys load").verify(token)
}

/// A file in a fresh directory of the system's temporary space.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tidewater-token-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write key");
    path
}

/// A valid HS256 token names its user, roles, client id, grants and expiry.
#[test]
fn valid_token_gives_an_identity() {
    let mut claims = claims();
    claims["client_id"] = json!("phone");
    claims["tidewater"] = json!({"subscribe": ["home/+/temperature"], "publish": []});
    let identity = verify(&config(), &hs256(&claims, SECRET)).expect("valid");
    assert_eq!(identity.name, "ann");
    assert_eq!(identity.roles, ["resident"]);
    assert_eq!(identity.client_id.as_deref(), Some("phone"));
    assert_eq!(
        identity.grants,
        Some(Grants {
            subscribe: vec!["home/+/temperature".into()],
            publish: vec![],
        })
    );
    assert_eq!(
        identity.expires_at,
        claims["exp"].as_u64().map(|exp| exp + config().leeway_secs),
        "valid until exp plus the leeway"
    );
}

/// Signature, expiry, not-before and audience are each checked.
#[test]
fn each_check_refuses_by_name() {
    let config = config();
    let token = hs256(&claims(), "another secret, also 32 bytes long");
    assert_eq!(verify(&config, &token), Err(TokenError::BadSignature));

    let mut expired = claims();
    expired["exp"] = json!(now() - 3_600);
    assert_eq!(
        verify(&config, &hs256(&expired, SECRET)),
        Err(TokenError::Expired)
    );

    let mut early = claims();
    early["nbf"] = json!(now() + 3_600);
    assert_eq!(
        verify(&config, &hs256(&early, SECRET)),
        Err(TokenError::NotYetValid)
    );

    let mut elsewhere = claims();
    elsewhere["aud"] = json!("another-service");
    assert_eq!(
        verify(&config, &hs256(&elsewhere, SECRET)),
        Err(TokenError::WrongAudience)
    );

    for missing in ["aud", "exp", "sub"] {
        let mut partial = claims();
        partial.as_object_mut().expect("object").remove(missing);
        assert!(
            matches!(
                verify(&config, &hs256(&partial, SECRET)),
                Err(TokenError::Claims(_))
            ),
            "a token without `{missing}` is refused"
        );
    }
}

/// A time claim of the wrong type is refused, never treated as absent
/// (the type confusion of CVE-2026-25537).
#[test]
fn mistyped_time_claims_are_refused() {
    let mut early = claims();
    early["nbf"] = json!((now() + 3_600).to_string());
    assert!(verify(&config(), &hs256(&early, SECRET)).is_err());
    let mut forever = claims();
    forever["exp"] = json!("never");
    assert!(verify(&config(), &hs256(&forever, SECRET)).is_err());
}

/// An issuer, when configured, is required and checked.
#[test]
fn issuer_is_checked_when_configured() {
    let config = JwtConfig {
        issuer: Some("https://id.example".into()),
        ..config()
    };
    assert!(matches!(
        verify(&config, &hs256(&claims(), SECRET)),
        Err(TokenError::Claims(_))
    ));
    let mut other = claims();
    other["iss"] = json!("https://evil.example");
    assert_eq!(
        verify(&config, &hs256(&other, SECRET)),
        Err(TokenError::WrongIssuer)
    );
    let mut right = claims();
    right["iss"] = json!("https://id.example");
    assert!(verify(&config, &hs256(&right, SECRET)).is_ok());
}

/// Unusable claims are refused rather than half-applied.
#[test]
fn unusable_claims_are_refused() {
    for (key, value) in [
        ("roles", json!("resident")),
        ("client_id", json!(7)),
        ("tidewater", json!({"subscribe": ["a/#/b"]})),
        ("tidewater", json!({"read": ["a"]})),
        ("tidewater", json!(["a"])),
        ("sub", json!("")),
    ] {
        let mut bad = claims();
        bad[key] = value.clone();
        assert!(
            matches!(
                verify(&config(), &hs256(&bad, SECRET)),
                Err(TokenError::Claims(_))
            ),
            "{key}: {value}"
        );
    }
}

/// RS256 and ES256 tokens verify with their PEM public keys; a key of one
/// kind does not accept tokens of the other, and an HS256 token signed with
/// a public key as its secret is refused (algorithm confusion).
#[test]
fn public_key_algorithms() {
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let ec_pub = ec.public_key_pem();
    let rsa_pub = rsa.public_key_pem();
    let config = JwtConfig {
        secret: String::new(),
        public_keys: vec![temp_file("ec.pem", &ec_pub), temp_file("rsa.pem", &rsa_pub)],
        ..config()
    };
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC signing key"),
    )
    .expect("ES256");
    let rs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("RSA signing key"),
    )
    .expect("RS256");
    assert_eq!(verify(&config, &es256).expect("ES256 valid").name, "ann");
    assert_eq!(verify(&config, &rs256).expect("RS256 valid").name, "ann");

    let only_ec = JwtConfig {
        public_keys: vec![temp_file("ec.pem", &ec_pub)],
        ..config.clone()
    };
    assert!(matches!(
        verify(&only_ec, &rs256),
        Err(TokenError::Algorithm(_))
    ));
    let confused = hs256(&claims(), &rsa_pub);
    assert!(matches!(
        verify(&config, &confused),
        Err(TokenError::Algorithm(_))
    ));
    let not_a_key = JwtConfig {
        public_keys: vec![temp_file("junk.pem", "hello")],
        ..config
    };
    assert!(matches!(
        Verifier::new(&not_a_key),
        Err(KeyError::NotAKey { .. })
    ));
}

/// Garbage in any part of the token is `invalid-token`, not a panic.
#[test]
fn garbage_is_malformed() {
    for token in ["x", "a.b.c", "....", "eyJhbGciOiJub25lIn0.e30."] {
        let error = verify(&config(), token).expect_err("refused");
        assert_eq!(error.code(), "invalid-token", "{token}: {error}");
    }
}

/// Anonymous access admits requests without a token, never with a bad one.
#[test]
fn anonymous_access() {
    let open = WebAuth::new(true, Some(&config())).expect("web auth");
    let none = Carriers::default();
    assert_eq!(
        open.authenticate(none).expect("anonymous").0,
        Principal::Anonymous
    );
    let bad = Carriers {
        authorization: Some("Bearer nonsense"),
        ..none
    };
    assert!(open.authenticate(bad).is_err());
    let closed = WebAuth::new(false, Some(&config())).expect("web auth");
    assert_eq!(closed.authenticate(none), Err(TokenError::Missing));
    let token = format!("Bearer {}", hs256(&claims(), SECRET));
    let good = Carriers {
        authorization: Some(&token),
        ..none
    };
    let (principal, source) = closed.authenticate(good).expect("valid token");
    assert!(matches!(principal, Principal::User(_)));
    assert_eq!(source, Some(Source::Header));
    // Without tokens configured, an Authorization header for something
    // else (a proxy's Basic login) is not a token.
    let basic = Carriers {
        authorization: Some("Basic dTpw"),
        ..none
    };
    let anonymous = WebAuth::new(true, None).expect("web auth");
    assert_eq!(
        anonymous.authenticate(basic).expect("anonymous").0,
        Principal::Anonymous
    );
}

proptest! {
    /// Random strings are never accepted as tokens.
    #[test]
    fn random_tokens_are_refused(token in "[A-Za-z0-9_.-]{0,80}") {
        prop_assert!(verify(&config(), &token).is_err());
    }
}

/// JWT dates are any JSON number; a fraction is dropped, never rounded
/// up, and what is no number is not a date.
#[test]
fn jwt_dates_are_read_in_whole_seconds() {
    assert_eq!(
        whole_seconds(&serde_json::json!(1_700_000_000)),
        Some(1_700_000_000)
    );
    assert_eq!(
        whole_seconds(&serde_json::json!(1_700_000_004.5)),
        Some(1_700_000_004)
    );
    assert_eq!(whole_seconds(&serde_json::json!(-3.5)), Some(0));
    assert_eq!(whole_seconds(&serde_json::json!(1e300)), Some(u64::MAX));
    assert_eq!(whole_seconds(&serde_json::json!("soon")), None);
}

/// `exp` and `nbf` are honoured whatever JSON number type carries them:
/// an integer, a float with a fraction, a float without one, each in the
/// future and in the past; any other type is refused.
#[test]
fn time_claims_of_every_number_type_are_honoured() {
    let at = |claim: &str, value: serde_json::Value| {
        let mut c = claims();
        c[claim] = value;
        verify(&config(), &hs256(&c, SECRET))
    };
    let soon = now() + 600;
    let past = now() - 600;
    let leeway = config().leeway_secs;
    for (kind, future, gone) in [
        ("integer", json!(soon), json!(past)),
        (
            "fraction",
            json!(soon as f64 + 0.5),
            json!(past as f64 + 0.5),
        ),
        ("whole float", json!(soon as f64), json!(past as f64)),
    ] {
        let identity = at("exp", future.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(identity.expires_at, Some(soon + leeway), "exp as {kind}");
        assert!(
            matches!(at("exp", gone.clone()), Err(TokenError::Expired)),
            "exp as {kind} in the past"
        );
        assert!(
            matches!(at("nbf", future), Err(TokenError::NotYetValid)),
            "nbf as {kind} in the future"
        );
        assert!(at("nbf", gone).is_ok(), "nbf as {kind} in the past");
    }
    for other in [json!(true), json!(null), json!([soon]), json!({"at": soon})] {
        assert!(at("exp", other.clone()).is_err(), "exp {other}");
        assert!(at("nbf", other.clone()).is_err(), "nbf {other}");
    }
}
