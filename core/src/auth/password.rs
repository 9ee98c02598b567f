//! Passwords of MQTT users: argon2 hashes in `bridge.toml` (never the
//! passwords themselves; `tidewater hash-password` makes one), and the check
//! the embedded broker calls on every CONNECT that carries a username.
//!
//! rumqttd calls [`MqttAuth::check`] from its own listener threads, each a
//! single-threaded runtime serving every connection of that listener. An
//! argon2 verification is deliberately slow (tens of milliseconds and 19 MiB
//! with the default parameters), so it never runs there: it runs on the
//! blocking pool, at most one per CPU at a time, while the listener thread
//! goes on serving everyone else. Unknown users are checked against a dummy
//! hash so that the answer takes as long as for a real one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::config::UserConfig;
use crate::stats::{AuthFailure, Protocol, Stats};

/// Checked for unknown usernames: the argon2id hash, with the default
/// parameters, of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$FaVl8GDYOFETP5fRziG2lg$CV0Tr8wx3ih1FVLGy0n12LoGvEi1UoH/JT9vRc/MTNg";

/// The username of the bridge's own startup probe (configured usernames
/// cannot start with `$`).
pub const PROBE_USER: &str = "$tidewater-probe";

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password is empty")]
    Empty,
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// An argon2id hash of `password` with the default parameters and a fresh
/// random salt, as a PHC string (`$argon2id$v=19$...`).
pub fn hash(password: &str) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(HashError::Hash)
}

/// Checks that `text` is an argon2 PHC string; the reason if not.
pub fn check_hash(text: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(text).map_err(|e| {
        format!("not a PHC password hash ({e}); make one with `tidewater hash-password`")
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "`{}` hashes are not supported: use argon2 (`tidewater hash-password`)",
            parsed.algorithm
        ));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    Ok(())
}

/// Whether `password` matches the PHC string `hash`. Slow on purpose: call
/// it off any thread that serves connections.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// How MQTT clients of the embedded broker are admitted.
pub struct MqttAuth {
    users: HashMap<String, String>,
    anonymous: bool,
    /// Verifications running at once; the rest wait their turn.
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
    probe: Probe,
}

impl std::fmt::Debug for MqttAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAuth")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// A one-time credential for the bridge's own check that the broker's
/// listeners answer: random, never written anywhere, and refused once
/// startup is over.
struct Probe {
    password: String,
    open: AtomicBool,
}

impl MqttAuth {
    pub fn new(users: &[UserConfig], anonymous: bool, stats: Arc<Stats>) -> Self {
        let secret = argon2::password_hash::generate_salt();
        let password = secret.iter().map(|b| format!("{b:02x}")).collect();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            anonymous,
            permits: Arc::new(Semaphore::new(cpus)),
            stats,
            probe: Probe {
                password,
                open: AtomicBool::new(true),
            },
        }
    }

    /// Whether rumqttd needs the hook: without it, it admits every CONNECT.
    /// With it, rumqttd refuses a CONNECT without a username before asking.
    pub fn enabled(&self) -> bool {
        !(self.anonymous && self.users.is_empty())
    }

    /// The probe's username and password, while startup lasts.
    pub fn probe_login(&self) -> Option<(&str, &str)> {
        (self.enabled() && self.probe.open.load(Ordering::Acquire))
            .then_some((PROBE_USER, self.probe.password.as_str()))
    }

    /// Refuses the probe credential from now on.
    pub fn close_probe(&self) {
        self.probe.open.store(false, Ordering::Release);
    }

    /// The check rumqttd runs for a CONNECT with a username.
    pub async fn check(
        self: Arc<Self>,
        client_id: String,
        username: String,
        password: String,
    ) -> bool {
        if username == PROBE_USER {
            let open = self.probe.open.load(Ordering::Acquire);
            return open && constant_time_eq(password.as_bytes(), self.probe.password.as_bytes());
        }
        let hash = self
            .users
            .get(&username)
            .cloned()
            .unwrap_or_else(|| DUMMY_HASH.to_owned());
        let known = self.users.contains_key(&username);
        let ok = match self.permits.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let _permit = permit;
                verify(&password, &hash)
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        };
        let admitted = ok && known;
        if !admitted {
            self.stats.refuse_auth(Protocol::Mqtt, AuthFailure::Invalid);
            tracing::info!(
                client_id,
                username,
                "MQTT CONNECT refused: bad username or password."
            );
        }
        admitted
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: hash(password).expect("hash"),
            roles: Vec::new(),
        }
    }

    /// A hash verifies its own password and no other, and is a PHC string
    /// that never contains the password.
    #[test]
    fn hash_and_verify() {
        let hashed = hash("correct horse").expect("hash");
        assert!(hashed.starts_with("$argon2id$"));
        assert!(!hashed.contains("correct horse"));
        assert_eq!(check_hash(&hashed), Ok(()));
        assert!(verify("correct horse", &hashed));
        assert!(!verify("correct horse ", &hashed));
        assert!(matches!(hash(""), Err(HashError::Empty)));
    }

    /// Plain text, other schemes and truncated hashes are refused by
    /// configuration with a reason.
    #[test]
    fn only_argon2_hashes_are_accepted() {
        assert!(check_hash("hunter2").is_err());
        assert!(check_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
        assert!(check_hash("$argon2id$v=19$m=19456,t=2,p=1").is_err());
        assert_eq!(check_hash(DUMMY_HASH), Ok(()));
    }

    /// The broker's check admits a known user with the right password and
    /// refuses (and counts) a wrong password and an unknown user.
    #[tokio::test]
    async fn broker_check() {
        let stats = Arc::new(Stats::default());
        let auth = Arc::new(MqttAuth::new(
            &[user("dev1", "s3cret")],
            false,
            stats.clone(),
        ));
        let check = |u: &str, p: &str| auth.clone().check("c".into(), u.into(), p.into());
        assert!(check("dev1", "s3cret").await);
        assert!(!check("dev1", "wrong").await);
        assert!(!check("nobody", "s3cret").await);
        assert_eq!(stats.snapshot().auth_failures, 2);
    }

    /// The probe credential works during startup only.
    #[tokio::test]
    async fn probe_closes() {
        let auth = Arc::new(MqttAuth::new(&[], false, Arc::new(Stats::default())));
        let (user, password) = auth.probe_login().expect("probe during startup");
        let (user, password) = (user.to_owned(), password.to_owned());
        assert!(
            auth.clone()
                .check("p".into(), user.clone(), password.clone())
                .await
        );
        assert!(
            !auth
                .clone()
                .check("p".into(), user.clone(), "guess".into())
                .await
        );
        auth.close_probe();
        assert!(auth.probe_login().is_none());
        assert!(!auth.clone().check("p".into(), user, password).await);
    }

    /// Anonymous access with no users needs no hook at all.
    #[test]
    fn hook_only_when_needed() {
        let stats = Arc::new(Stats::default());
        assert!(!MqttAuth::new(&[], true, stats.clone()).enabled());
        assert!(MqttAuth::new(&[], false, stats.clone()).enabled());
        assert!(MqttAuth::new(&[user("a", "b")], false, stats).enabled());
    }
}
