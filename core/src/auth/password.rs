//! Passwords of MQTT users: argon2 hashes in `bridge.toml` (never the
//! passwords themselves; `tidewater hash-password` makes one), checked by
//! the MQTT gate on every CONNECT that carries a username; and the
//! per-start secret the embedded broker demands of every connection, which
//! only the gate knows, so nothing but the gate gets in.
//!
//! An argon2 verification is deliberately slow (tens of milliseconds and
//! 19 MiB with the default parameters), so it runs on the blocking pool, at
//! most one per CPU at a time, and at most `mqtt.max_pending_logins`
//! CONNECTs wait for one: past that a CONNECT is refused as "server busy"
//! (counted) rather than queueing memory and time without bound. The
//! queue is shared fairly: one address (an IPv6 /64) may have at most
//! `mqtt.max_pending_logins_per_address` of them waiting, so a flood of
//! bogus logins from one place fills its own share and no more, and a
//! device elsewhere waits for a few checks, not for the flood. Unknown
//! users are checked against a dummy hash so that the answer takes as long
//! as for a real one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::Semaphore;

use super::client_id::ClientIds;
use crate::config::UserConfig;
use crate::stats::{AuthFailure, Limit, Protocol, Stats};

/// Checked for unknown usernames: the argon2id hash, with the default
/// parameters, of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$FaVl8GDYOFETP5fRziG2lg$CV0Tr8wx3ih1FVLGy0n12LoGvEi1UoH/JT9vRc/MTNg";

/// The username the gate gives the broker for every client (configured
/// usernames cannot start with `$`).
pub const GATE_USER: &str = "$tidewater-gate";

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
pub fn verify(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password (the two are not told apart).
    #[error("bad username or password")]
    Invalid,
    /// `mqtt.max_pending_logins` CONNECTs are already waiting.
    #[error("too many logins waiting for a password check")]
    Busy,
}

/// How MQTT clients are admitted, at the gate and at the broker behind it.
pub struct MqttAuth {
    users: HashMap<String, String>,
    anonymous: bool,
    client_ids: ClientIds,
    /// Verifications running at once; the rest wait their turn.
    permits: Arc<Semaphore>,
    /// CONNECTs waiting for a verification or in one.
    pending: Arc<Semaphore>,
    /// The same, per address; an entry lives while its count is above
    /// zero, so there are never more than `pending` has permits.
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
    stats: Arc<Stats>,
    /// The broker's password for [`GATE_USER`]: random per start, held in
    /// memory only.
    broker_secret: String,
}

impl std::fmt::Debug for MqttAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAuth")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl MqttAuth {
    pub fn new(
        users: &[UserConfig],
        anonymous: bool,
        max_pending: usize,
        max_per_address: usize,
        stats: Arc<Stats>,
    ) -> Self {
        let mut secret = String::new();
        for _ in 0..2 {
            for b in argon2::password_hash::generate_salt() {
                secret.push_str(&format!("{b:02x}"));
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            anonymous,
            client_ids: ClientIds::new(users),
            permits: Arc::new(Semaphore::new(cpus)),
            pending: Arc::new(Semaphore::new(max_pending.max(1))),
            per_address: Arc::default(),
            max_per_address: max_per_address.max(1),
            stats,
            broker_secret: secret,
        }
    }

    /// Whether a username must come with its password: without users, a
    /// username is a claim nobody can check, and its client is anonymous.
    pub fn passwords_checked(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether clients without a username are let in.
    pub fn anonymous(&self) -> bool {
        self.anonymous
    }

    pub fn client_ids(&self) -> &ClientIds {
        &self.client_ids
    }

    /// What the gate logs the broker in with, for every client.
    pub fn broker_login(&self) -> (&str, &str) {
        (GATE_USER, &self.broker_secret)
    }

    /// The broker's hook: only the gate's login gets in.
    pub fn broker_admits(&self, username: &str, password: &str) -> bool {
        username == GATE_USER
            && constant_time_eq(password.as_bytes(), self.broker_secret.as_bytes())
    }

    /// Checks `password` against `username`'s hash for a client at
    /// `peer`, counting and logging a refusal.
    pub async fn verify(
        &self,
        client_id: &str,
        username: &str,
        password: &[u8],
        peer: IpAddr,
    ) -> Result<(), LoginError> {
        let Some(_share) = self.take_share(peer) else {
            self.stats.limit(Protocol::Mqtt, Limit::Logins);
            tracing::info!(
                client_id,
                username,
                %peer,
                "MQTT CONNECT refused: mqtt.max_pending_logins_per_address password checks from this address are waiting."
            );
            return Err(LoginError::Busy);
        };
        let Ok(_pending) = self.pending.clone().try_acquire_owned() else {
            self.stats.limit(Protocol::Mqtt, Limit::Logins);
            tracing::warn!(
                client_id,
                username,
                "MQTT CONNECT refused: mqtt.max_pending_logins password checks are waiting."
            );
            return Err(LoginError::Busy);
        };
        let known = self.users.get(username);
        let hash = known.cloned().unwrap_or_else(|| DUMMY_HASH.to_owned());
        let password = password.to_vec();
        let ok = match self.permits.clone().acquire_owned().await {
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let _permit = permit;
                verify(&password, &hash)
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        };
        if ok && known.is_some() {
            return Ok(());
        }
        self.stats.refuse_auth(Protocol::Mqtt, AuthFailure::Invalid);
        tracing::info!(
            client_id,
            username,
            "MQTT CONNECT refused: bad username or password."
        );
        Err(LoginError::Invalid)
    }
}

impl MqttAuth {
    /// One of `peer`'s places in the login queue, or `None` if it holds
    /// all it may.
    fn take_share(&self, peer: IpAddr) -> Option<Share> {
        let source = source_of(peer);
        let mut counts = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(source).or_insert(0);
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(Share {
            counts: self.per_address.clone(),
            source,
        })
    }
}

/// Where a login comes from, for fairness: the address, or for IPv6 its
/// /64 (one site's usual allocation, so that one host cannot take a share
/// per address it can pick).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A place in the login queue held by one source; given back on drop.
struct Share {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn user(name: &str, password: &str) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: hash(password).expect("hash"),
            roles: Vec::new(),
            client_ids: Vec::new(),
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
        assert!(verify(b"correct horse", &hashed));
        assert!(!verify(b"correct horse ", &hashed));
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

    /// A known user with the right password is admitted; a wrong password
    /// and an unknown user are refused alike, and counted.
    #[tokio::test]
    async fn the_gate_checks_passwords() {
        let stats = Arc::new(Stats::default());
        let auth = MqttAuth::new(&[user("dev1", "s3cret")], false, 8, 8, stats.clone());
        assert_eq!(auth.verify("c", "dev1", b"s3cret", HERE).await, Ok(()));
        assert_eq!(
            auth.verify("c", "dev1", b"wrong", HERE).await,
            Err(LoginError::Invalid)
        );
        assert_eq!(
            auth.verify("c", "nobody", b"s3cret", HERE).await,
            Err(LoginError::Invalid)
        );
        assert_eq!(stats.snapshot().auth_failures, 2);
    }

    /// Past `max_pending` CONNECTs waiting, the next is refused at once as
    /// busy (and counted) instead of queueing.
    #[tokio::test]
    async fn waiting_logins_are_bounded() {
        let stats = Arc::new(Stats::default());
        let auth = Arc::new(MqttAuth::new(
            &[user("dev1", "s3cret")],
            false,
            1,
            8,
            stats.clone(),
        ));
        let first = tokio::spawn({
            let auth = auth.clone();
            async move { auth.verify("a", "dev1", b"s3cret", HERE).await }
        });
        // The first holds the only place until its check ends.
        while auth.pending.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            auth.verify("b", "dev1", b"s3cret", HERE).await,
            Err(LoginError::Busy)
        );
        assert_eq!(first.await.expect("first"), Ok(()));
        assert_eq!(stats.refusals.limited(Protocol::Mqtt, Limit::Logins), 1);
        assert_eq!(auth.verify("c", "dev1", b"s3cret", HERE).await, Ok(()));
    }

    /// One address may hold only its share of the queue: past it, its next
    /// login is refused at once, while another address still gets a place.
    #[tokio::test]
    async fn one_address_holds_only_its_share_of_the_queue() {
        let stats = Arc::new(Stats::default());
        let auth = Arc::new(MqttAuth::new(
            &[user("dev1", "s3cret")],
            false,
            8,
            2,
            stats.clone(),
        ));
        let flood: IpAddr = "127.0.0.2".parse().expect("address");
        let held: Vec<_> = (0..2)
            .map(|_| auth.take_share(flood).expect("a share"))
            .collect();
        assert_eq!(
            auth.verify("x", "dev1", b"wrong", flood).await,
            Err(LoginError::Busy)
        );
        assert_eq!(auth.verify("y", "dev1", b"s3cret", HERE).await, Ok(()));
        drop(held);
        assert!(auth.per_address.lock().expect("lock").is_empty());
        assert_eq!(auth.verify("z", "dev1", b"s3cret", flood).await, Ok(()));
        assert_eq!(stats.refusals.limited(Protocol::Mqtt, Limit::Logins), 1);
    }

    /// IPv6 addresses of one /64 share a place in line; IPv4 addresses,
    /// mapped or not, are their own.
    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("mapped");
        assert_eq!(source_of(mapped), "10.0.0.7".parse::<IpAddr>().expect("v4"));
        assert_ne!(
            source_of("10.0.0.7".parse().expect("v4")),
            source_of("10.0.0.8".parse().expect("v4"))
        );
    }

    /// The broker admits the gate's login, fresh each start, and nothing
    /// else: not a user's own password, not a guess.
    #[test]
    fn the_broker_admits_only_the_gate() {
        let stats = Arc::new(Stats::default());
        let auth = MqttAuth::new(&[user("dev1", "s3cret")], false, 8, 8, stats.clone());
        let (name, secret) = auth.broker_login();
        assert!(auth.broker_admits(name, secret));
        assert!(!auth.broker_admits("dev1", "s3cret"));
        assert!(!auth.broker_admits(name, "guess"));
        assert!(!auth.broker_admits("dev1", secret));
        let other = MqttAuth::new(&[], true, 8, 8, stats);
        assert_ne!(other.broker_login().1, secret, "a secret per start");
        assert!(secret.len() >= 32);
    }
}
