//! One relayed connection: the client's CONNECT read and decided on, a
//! connection to the broker's internal listener for its protocol version,
//! then two pumps, one per direction, until either side goes.
//!
//! The pumps are in [`pump`](super::pump); what they decide on each packet,
//! in [`upstream`](super::upstream) and [`downstream`](super::downstream).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::downstream::Downstream;
use super::packet::{self, kind, PacketError, Piece, Version};
use super::presence::{Ending, Presence};
use super::pump::{self, read_frame, UpEnd, READ_CHUNK};
use super::upstream::{Upstream, NOT_AUTHORIZED};
use super::{Refused, Shared};
use crate::auth::Action;
use crate::broker::{name, stamp};
use crate::stats::{Limit, Protocol, Stats};

/// The longest a write to a client may wait: a client that stops reading
/// is closed rather than holding its connection (and its slot) forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// MQTT 3.1.1 CONNACK return codes.
const V311_UNACCEPTABLE_VERSION: u8 = 1;
const V311_IDENTIFIER_REJECTED: u8 = 2;
const V311_UNAVAILABLE: u8 = 3;
pub const V311_NOT_AUTHORIZED: u8 = 5;
/// MQTT 5 CONNACK reason codes.
const V5_UNSUPPORTED_VERSION: u8 = 0x84;
const V5_UNAVAILABLE: u8 = 0x88;
const V5_CLIENT_ID_NOT_VALID: u8 = 0x85;
const V5_TOPIC_NAME_INVALID: u8 = 0x90;
const V5_QUOTA_EXCEEDED: u8 = 0x97;

/// The keep-alive the broker is told for a device that asked for none
/// (keep-alive 0); the gate pings the broker at half of it.
const BROKER_KEEP_ALIVE_SECS: u16 = 60;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the first packet was not a CONNECT")]
    NotConnect,
    #[error("no CONNECT in time")]
    ConnectTimeout,
    #[error("the {0} side stopped reading its answers")]
    Overflow(&'static str),
    #[error("the client stopped reading")]
    WriteTimeout,
}

/// One connection in `mqtt_connections_open`, for as long as it lives,
/// however its task ends.
struct OpenConnection<'a>(&'a Stats);

impl<'a> OpenConnection<'a> {
    fn count(stats: &'a Stats) -> Self {
        Stats::incr(&stats.mqtt_connections_opened);
        Stats::incr(&stats.mqtt_connections_open);
        Self(stats)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        Stats::decr(&self.0.mqtt_connections_open);
    }
}

/// Serves one client connection from `peer` until it or the broker
/// closes, or `cancel`.
pub async fn run<C>(client: C, peer: SocketAddr, shared: Arc<Shared>, cancel: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _open = OpenConnection::count(&shared.stats);
    let presence = OnceLock::new();
    let result = tokio::select! {
        () = cancel.cancelled() => Ok(Ending::Shutdown),
        result = relay(client, peer, &shared, &presence) => result,
    };
    if let Some(presence) = presence.get() {
        match &result {
            Ok(ending) => presence.ended(*ending),
            Err(e) => presence.ended(Ending::Error(e)),
        }
    }
    if let Err(e) = result {
        if let SessionError::Packet(PacketError::TooLarge { .. }) = e {
            shared.stats.limit(Protocol::Mqtt, Limit::Payload);
        }
        if let SessionError::Overflow(_) = e {
            Stats::incr(&shared.stats.mqtt_gate_overflows);
        }
        // A client that took no bytes for a whole write timeout is a slow
        // consumer like an SSE stream whose queue overflowed: counted alike.
        if let SessionError::WriteTimeout = e {
            Stats::incr(&shared.stats.slow_consumer_disconnects);
        }
        tracing::debug!(error = %e, "MQTT gate connection closed.");
    }
}

/// Relays one connection; how it ended, for its device event.
async fn relay<C>(
    client: C,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    presence: &OnceLock<Arc<Presence>>,
) -> Result<Ending<'static>, SessionError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let mut from_client = BytesMut::with_capacity(READ_CHUNK);
    // `mqtt.connection_timeout_ms` covers the CONNECT and its login
    // together: a client waiting for a password check gets no longer than
    // one sending its CONNECT slowly.
    let deadline = tokio::time::Instant::now() + shared.connect_timeout;
    let frame = tokio::time::timeout_at(
        deadline,
        read_frame(&mut client_rx, &mut from_client, shared.max_packet),
    )
    .await
    .map_err(|_| SessionError::ConnectTimeout)??;
    let Some(frame) = frame else {
        return Ok(Ending::ClientClosed);
    };
    if frame.kind() != kind::CONNECT {
        return Err(SessionError::NotConnect);
    }
    let connect = match packet::parse_connect(&from_client, &frame) {
        Ok(connect) => connect,
        Err(PacketError::UnsupportedLevel(level)) => {
            // 3.1.1's code is the one every version of the protocol reads.
            let answer = packet::connack_refusal(Version::V311, V311_UNACCEPTABLE_VERSION);
            let _ = write_client(&mut client_tx, &answer).await;
            tracing::debug!(level, "MQTT CONNECT refused: unsupported protocol level.");
            return Ok(Ending::ClientClosed);
        }
        Err(e) => return Err(e.into()),
    };
    let version = connect.version;
    let refuse = |v311: u8, v5: u8| {
        packet::connack_refusal(version, if version == Version::V5 { v5 } else { v311 })
    };
    // A session has to be found again by its id: an empty one cannot keep
    // a session (MQTT 3.1.1 [MQTT-3.1.3-8]; rumqttd 0.20 answers MQTT 5
    // with the wrong reason).
    if connect.client_id.is_empty() && !connect.clean_start {
        tracing::debug!("MQTT CONNECT refused: an empty client id cannot keep a session.");
        let answer = refuse(V311_IDENTIFIER_REJECTED, V5_CLIENT_ID_NOT_VALID);
        write_client(&mut client_tx, &answer).await?;
        return Ok(Ending::ClientClosed);
    }
    let admitted = tokio::time::timeout_at(deadline, shared.admit(&connect, peer.ip()))
        .await
        .unwrap_or_else(|_| {
            shared.stats.limit(Protocol::Mqtt, Limit::Logins);
            tracing::info!(
                client_id = connect.client_id,
                %peer,
                "MQTT CONNECT refused: its login was not checked within mqtt.connection_timeout_ms."
            );
            Err(Refused::Busy)
        });
    let principal = match admitted {
        Ok(principal) => principal,
        Err(refused) => {
            let (v311, v5) = refused.codes();
            write_client(&mut client_tx, &refuse(v311, v5)).await?;
            return Ok(Ending::ClientClosed);
        }
    };
    if let Some(will) = &connect.will_topic {
        let allowed = if crate::topic::is_reserved(will) {
            Err(crate::auth::Denied {
                action: Action::Publish,
                topic: will.clone(),
                reason: "topics under $tidewater/ are the bridge's own".into(),
            })
        } else {
            shared.policy.authorize(&principal, Action::Publish, will)
        };
        if let Err(denied) = allowed {
            shared.stats.deny(Protocol::Mqtt, Action::Publish);
            Stats::incr(&shared.stats.mqtt_publishes_denied);
            tracing::info!(client_id = connect.client_id, %principal, reason = %denied, "MQTT CONNECT refused: its will topic is denied.");
            write_client(&mut client_tx, &refuse(V311_NOT_AUTHORIZED, NOT_AUTHORIZED)).await?;
            return Ok(Ending::ClientClosed);
        }
    }
    // A will topic is a topic the broker is given, bounded the same way
    // (see `broker::census`).
    if let Some(will) = &connect.will_topic {
        let refusal = if let Err(e) = shared.topics.topic(will) {
            Limit::of_topic(&e).map(|limit| (limit, V5_TOPIC_NAME_INVALID))
        } else if !shared.census.admit_topic(&name::topic_in(will)) {
            Some((Limit::Topics, V5_QUOTA_EXCEEDED))
        } else {
            None
        };
        if let Some((limit, v5)) = refusal {
            shared.stats.limit(Protocol::Mqtt, limit);
            tracing::info!(
                client_id = connect.client_id,
                "MQTT CONNECT refused: its will topic is past a limit."
            );
            write_client(&mut client_tx, &refuse(V311_UNAVAILABLE, v5)).await?;
            return Ok(Ending::ClientClosed);
        }
    }
    let Some(address) = shared.upstream(version) else {
        write_client(
            &mut client_tx,
            &refuse(V311_UNACCEPTABLE_VERSION, V5_UNSUPPORTED_VERSION),
        )
        .await?;
        return Ok(Ending::ClientClosed);
    };
    // rumqttd 0.20 assigns its outgoing topic aliases per subscription
    // filter, not per topic: through a wildcard filter, messages on other
    // topics would arrive under the first topic's alias, and the gate
    // could not tell which topic it is withholding. A Topic Alias Maximum
    // of 0 tells the broker to name every topic (the client is free not to
    // be sent aliases); nothing else of the CONNECT changes, and the broker
    // still checks the password.
    if let Some(at) = connect.topic_alias_maximum_at {
        from_client[at] = 0;
        from_client[at + 1] = 0;
    }
    // Keep-alive 0 means "off" in MQTT, but rumqttd 0.20 refuses it: the
    // broker is told a keep-alive of its own and the gate keeps that side
    // alive with PINGREQs of its own (their PINGRESPs stay at the gate),
    // so the device may stay silent for as long as it likes.
    let gate_pings = (connect.keep_alive == 0).then(|| {
        let at = connect.keep_alive_at;
        from_client[at..at + 2].copy_from_slice(&BROKER_KEEP_ALIVE_SECS.to_be_bytes());
        Duration::from_secs(u64::from(BROKER_KEEP_ALIVE_SECS) / 2)
    });
    // The client id is this connection's from now on: a connection that
    // held it is closed (MQTT's takeover, done here; see `registry`). The
    // broker gets it in its own form (see `broker::name`), and a session
    // that ends with its connection gets an id of its own there.
    let persistent = !connect.clean_start || connect.session_expiry > 0;
    let claim = if connect.client_id.is_empty() {
        None
    } else {
        Some(shared.registry.claim(&connect.client_id, persistent).await)
    };
    let client_id = match &claim {
        Some(claim) => Cow::Owned(claim.broker_client_id(persistent, version)),
        None => Cow::Borrowed(""),
    };
    let takeover = claim
        .as_ref()
        .map_or_else(CancellationToken::new, |c| c.takeover.clone());
    // The will topic in the broker's form too.
    let client_id = match client_id {
        Cow::Owned(id) if id == connect.client_id => Cow::Borrowed(connect.client_id.as_str()),
        other => other,
    };
    let will = connect.will_topic.as_deref().map(name::topic_in);
    if [Some(&client_id), will.as_ref()]
        .iter()
        .flatten()
        .any(|s| s.len() > usize::from(u16::MAX))
    {
        return Err(SessionError::Protocol("a client id or will topic too long"));
    }
    let mut edits = Vec::new();
    if let Cow::Owned(id) = &client_id {
        edits.push((connect.client_id_range.clone(), Piece::Field(id.as_bytes())));
    }
    // A will's MQTT 5 properties go the way of a PUBLISH's (see
    // `upstream`): rumqttd 0.20 would hand them to 3.1.1 subscribers and
    // its 3.1.1 writer panics on them. The will is kept, plain.
    if let Some(range) = connect
        .will_properties_range
        .clone()
        .filter(|r| r.len() > 1)
    {
        Stats::incr(&shared.stats.mqtt_properties_dropped);
        edits.push((range, Piece::Raw(&[0])));
    }
    if let (Some(Cow::Owned(topic)), Some(range)) = (&will, &connect.will_topic_range) {
        edits.push((range.clone(), Piece::Field(topic.as_bytes())));
    }
    // The will's payload carries its QoS and retain flag, as every payload
    // in the broker does (see `broker::stamp`).
    if let Some(range) = &connect.will_payload_range {
        let data = &from_client[range.start + 2..range.end];
        let meta = stamp::Meta {
            qos: connect.will_qos,
            retain: connect.will_retain,
        };
        if let Some(byte) = stamp::byte(meta, data.len()) {
            if data.len() >= usize::from(u16::MAX) {
                return Err(SessionError::Protocol("a will payload too long"));
            }
            edits.push((range.clone(), Piece::StampedField(byte, data)));
        }
    }
    // The broker admits the gate's login only (see `auth::password`): the
    // device's own was checked above.
    let mut rewritten = Vec::with_capacity(frame.len + 128);
    packet::write_connect(
        &mut rewritten,
        &from_client,
        &frame,
        &edits,
        (connect.flags_at, connect.login_at),
        shared.auth.broker_login(),
    );
    from_client.advance(frame.len);
    let Some((broker_rx, broker_tx, from_broker)) =
        connect_broker(address, &rewritten, shared).await
    else {
        write_client(&mut client_tx, &refuse(V311_UNAVAILABLE, V5_UNAVAILABLE)).await?;
        return Ok(Ending::ClientClosed);
    };

    let connection = shared.device_filters.connection();
    let device = Arc::new(Presence::new(
        &connect,
        &principal,
        shared.devices.clone(),
        connection,
    ));
    let _ = presence.set(device.clone());
    let (to_down, from_up) = mpsc::channel(shared.notes);
    let (to_up, from_down) = mpsc::channel(shared.notes);
    let up = Upstream::new(shared.clone(), version, principal.clone())
        .with_connection(connection)
        .with_gate_pings(gate_pings)
        .with_presence(device.clone());
    let down = Downstream::new(shared.clone(), version, principal)
        .with_connection(connection)
        .with_presence(device)
        .with_max_packet(connect.maximum_packet_size);
    let client_to_broker = pump::up(
        up,
        client_rx,
        from_client,
        broker_tx,
        from_down,
        to_down,
        shared.max_packet,
    );
    let broker_to_client = pump::down(
        down,
        broker_rx,
        from_broker,
        client_tx,
        from_up,
        to_up,
        shared.max_packet,
    );
    // Either side ending ends the connection; after a DISCONNECT, the
    // broker's side is read until the broker closes (briefly), so that the
    // broker surely has the DISCONNECT before the connection goes.
    tokio::pin!(broker_to_client);
    tokio::select! {
        () = takeover.cancelled() => Ok(Ending::TakenOver),
        result = client_to_broker => match result? {
            (UpEnd::Closed, _) => Ok(Ending::ClientClosed),
            (UpEnd::Disconnected, broker) => {
                drop(broker);
                let _ = tokio::time::timeout(DISCONNECT_LINGER, &mut broker_to_client).await;
                Ok(Ending::ClientClosed)
            }
            // Time for the client to be told (MQTT 5's DISCONNECT).
            (UpEnd::Refused(reason), broker) => {
                drop(broker);
                let _ = tokio::time::timeout(REFUSAL_LINGER, &mut broker_to_client).await;
                Err(SessionError::Protocol(reason))
            }
        },
        result = &mut broker_to_client => result.map(|()| Ending::BrokerClosed),
    }
}

/// Attempts at the broker's CONNACK for one admitted client.
const BROKER_CONNECT_ATTEMPTS: u32 = 5;

/// The pause before the first retry; doubled for each later one.
const BROKER_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Opens the broker's side of a connection: `connect` sent, and the
/// broker's first bytes (its CONNACK) read into the buffer returned. rumqttd
/// 0.20 now and then closes a CONNECT without a word when its client id was
/// in use a moment before (it is still tearing that connection down); the
/// client was admitted already, so the gate tries again, a few times,
/// before answering "server unavailable" (`None`).
async fn connect_broker(
    address: std::net::SocketAddr,
    connect: &[u8],
    shared: &Shared,
) -> Option<(OwnedReadHalf, OwnedWriteHalf, BytesMut)> {
    let mut delay = BROKER_RETRY_DELAY;
    for attempt in 1..=BROKER_CONNECT_ATTEMPTS {
        let answer = async {
            let broker = TcpStream::connect(address).await?;
            let _ = broker.set_nodelay(true);
            let (mut rx, mut tx) = broker.into_split();
            tx.write_all(connect).await?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let frame = read_frame(&mut rx, &mut buf, shared.max_packet).await?;
            Ok::<_, SessionError>(frame.map(|_| (rx, tx, buf)))
        };
        match tokio::time::timeout(shared.connect_timeout, answer).await {
            Ok(Ok(Some(opened))) => return Some(opened),
            Ok(Ok(None)) => {
                tracing::debug!(attempt, "The broker closed a CONNECT without answering.")
            }
            Ok(Err(e)) => {
                tracing::warn!(%address, attempt, error = %e, "MQTT gate cannot reach the broker.")
            }
            Err(_) => {
                tracing::warn!(%address, attempt, "The broker did not answer a CONNECT in time.")
            }
        }
        if attempt < BROKER_CONNECT_ATTEMPTS {
            Stats::incr(&shared.stats.mqtt_connect_retries);
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    None
}

/// How long the gate waits for the broker to close after a client's
/// DISCONNECT.
const DISCONNECT_LINGER: Duration = Duration::from_secs(1);

/// How long a connection the gate ends lives on for the client to read why.
const REFUSAL_LINGER: Duration = Duration::from_millis(100);

/// Writes to the client, flushed (a TLS stream holds records until then),
/// within [`WRITE_TIMEOUT`].
pub async fn write_client<W: AsyncWrite + Unpin>(
    client: &mut W,
    bytes: &[u8],
) -> Result<(), SessionError> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| SessionError::WriteTimeout)?
        .map_err(SessionError::from)
}
