//! Who may connect, read and write, end to end against a real bridge: every
//! protocol against every kind of credential, and no message reaching a
//! subscriber it should not.

mod common;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tidewater::auth::acl::{Actions, Effect};
use tidewater::config::{AclRuleConfig, JwtConfig};
use tidewater::Config;

use common::raw::{self, RawMqtt};
use common::{
    request, start_with, ws_connect_with, ws_next, ws_request, Device, SseClient, TestBridge,
    TIMEOUT,
};

const SECRET: &str = "a test secret that is 32 bytes or more";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn rule(principal: &str, effect: Effect, action: Actions, filter: &str) -> AclRuleConfig {
    AclRuleConfig {
        principal: principal.into(),
        effect,
        action,
        filter: filter.into(),
    }
}

/// Tokens required, no anonymous web access, and rules: nobody reads or
/// writes `home/secret/#`; residents, and the anonymous MQTT devices that
/// publish the tests' messages, read and write the rest of `home/#`; every
/// user has `users/%u/#`.
fn secure(config: &mut Config) {
    config.auth.anonymous_web = false;
    config.auth.jwt = Some(JwtConfig {
        secret: SECRET.into(),
        audience: "tidewater".into(),
        leeway_secs: 0,
        ..JwtConfig::default()
    });
    config.auth.acl = vec![
        rule("any", Effect::Deny, Actions::Both, "home/secret/#"),
        rule("role:resident", Effect::Allow, Actions::Both, "home/#"),
        rule("anonymous", Effect::Allow, Actions::Both, "home/#"),
        rule("authenticated", Effect::Allow, Actions::Both, "users/%u/#"),
    ];
}

async fn start_secure() -> TestBridge {
    start_with(secure).await
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}

/// A resident's token, valid for ten minutes.
fn resident() -> String {
    sign(
        &json!({"sub": "ann", "aud": "tidewater", "exp": now() + 600, "roles": ["resident"]}),
        SECRET,
    )
}

/// Kinds of credentials a client may present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// Nothing at all.
    None,
    /// A token signed with another secret.
    BadSignature,
    /// A resident's token whose `exp` has passed.
    Expired,
    /// A resident's valid token, asking for what residents may do.
    Allowed,
    /// A resident's valid token, asking for `home/secret/#`.
    Denied,
}

const ALL: [Credential; 5] = [
    Credential::None,
    Credential::BadSignature,
    Credential::Expired,
    Credential::Allowed,
    Credential::Denied,
];

impl Credential {
    fn token(self) -> Option<String> {
        let claims =
            |exp: u64| json!({"sub": "ann", "aud": "tidewater", "exp": exp, "roles": ["resident"]});
        match self {
            Self::None => None,
            Self::BadSignature => Some(sign(
                &claims(now() + 600),
                "some other secret, 32 bytes long",
            )),
            Self::Expired => Some(sign(&claims(now() - 60), SECRET)),
            Self::Allowed | Self::Denied => Some(resident()),
        }
    }

    fn authorization(self) -> Option<String> {
        self.token().map(|t| format!("Bearer {t}"))
    }

    /// The topic this column asks for.
    fn topic(self) -> &'static str {
        match self {
            Self::Denied => "home/secret/door",
            _ => "home/kitchen/temperature",
        }
    }

    /// The refusal expected for it, if any: status and `error` code.
    fn refusal(self) -> Option<(u16, &'static str)> {
        match self {
            Self::None => Some((401, "missing-token")),
            Self::BadSignature => Some((401, "invalid-token")),
            Self::Expired => Some((401, "token-expired")),
            Self::Allowed => None,
            Self::Denied => Some((403, "forbidden")),
        }
    }
}

fn headers(authorization: &Option<String>) -> Vec<(&str, &str)> {
    authorization
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default()
}

/// SSE: no token, a bad signature and an expired token are 401 with their
/// codes; a denied filter is 403; an allowed one streams the device's message.
#[tokio::test]
async fn sse_matrix() {
    let bridge = start_secure().await;
    let device = Device::connect(bridge.mqtt, "sse-matrix").await;
    for credential in ALL {
        let authorization = credential.authorization();
        let path = format!("/events?topic={}", credential.topic());
        match credential.refusal() {
            Some((status, code)) => {
                let response =
                    request(bridge.http, "GET", &path, &headers(&authorization), b"").await;
                assert_eq!(response.status, status, "{credential:?}");
                assert_eq!(response.json()["error"], code, "{credential:?}");
                if status == 401 {
                    assert!(response
                        .header("www-authenticate")
                        .is_some_and(|c| c.starts_with("Bearer")));
                }
            }
            None => {
                let mut sse =
                    SseClient::connect(bridge.http, &path, &headers(&authorization)).await;
                device.publish(credential.topic(), "21", false).await;
                assert_eq!(sse.expect_event().await.data, "21");
            }
        }
    }
    let stats = bridge.stats();
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.access_denied, 1);
    bridge.shutdown().await;
}

/// WebSocket: credentials are checked at the upgrade (401 with a JSON
/// body); a denied subscription is an `error` and the session stays open.
#[tokio::test]
async fn websocket_matrix() {
    let bridge = start_secure().await;
    let device = Device::connect(bridge.mqtt, "ws-matrix").await;
    for credential in ALL {
        let authorization = credential.authorization();
        let connected = ws_connect_with(bridge.ws, "/ws", &headers(&authorization)).await;
        match (credential.refusal(), connected) {
            (Some((401, code)), Err((status, body))) => {
                assert_eq!(status, 401, "{credential:?}");
                assert_eq!(body["error"], code, "{credential:?}");
            }
            (Some((403, code)), Ok(mut ws)) => {
                let subscribe = json!({"op": "subscribe", "topics": [credential.topic()]});
                let reply = ws_request(&mut ws, subscribe, "s").await;
                assert_eq!(reply["op"], "error");
                assert_eq!(reply["code"], code);
                let pong = ws_request(&mut ws, json!({"op": "ping"}), "p").await;
                assert_eq!(pong["op"], "pong", "the session stays open");
            }
            (None, Ok(mut ws)) => {
                let subscribe = json!({"op": "subscribe", "topics": [credential.topic()]});
                assert_eq!(ws_request(&mut ws, subscribe, "s").await["op"], "ack");
                device.publish(credential.topic(), "22", false).await;
                assert_eq!(ws_next(&mut ws).await["payload"], "22");
            }
            (expected, got) => panic!(
                "{credential:?}: expected {expected:?}, got {:?}",
                got.map(|_| "a session")
            ),
        }
    }
    let stats = bridge.stats();
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.access_denied, 1);
    bridge.shutdown().await;
}

/// HTTP publish: 401 and 403 as for SSE; an allowed publish reaches a
/// subscriber, and a refused one reaches nobody.
#[tokio::test]
async fn http_publish_matrix() {
    let bridge = start_secure().await;
    let mut device = Device::connect(bridge.mqtt, "publish-matrix").await;
    device.subscribe("home/#").await;
    for credential in ALL {
        let authorization = credential.authorization();
        let path = format!("/publish/{}", credential.topic());
        let response = request(bridge.http, "POST", &path, &headers(&authorization), b"x").await;
        match credential.refusal() {
            Some((status, code)) => {
                assert_eq!(response.status, status, "{credential:?}");
                assert_eq!(response.json()["error"], code, "{credential:?}");
            }
            None => assert_eq!(response.status, 202, "{credential:?}"),
        }
    }
    let received = device.next().await;
    assert_eq!(received.topic, Credential::Allowed.topic());
    // Nothing else arrives: the refused publishes never entered the broker.
    let post = request(
        bridge.http,
        "POST",
        "/publish/home/last",
        &headers(&Credential::Allowed.authorization()),
        b"end",
    )
    .await;
    assert_eq!(post.status, 202);
    assert_eq!(device.next().await.topic, "home/last");
    bridge.shutdown().await;
}

/// A subscription that overlaps a denied area gets the allowed topics only:
/// the denied ones are withheld (and counted), whoever published them.
/// (Here an MQTT device may write what nobody may read.)
#[tokio::test]
async fn overlapping_subscriptions_are_filtered_per_message() {
    let bridge = start_with(|c| {
        secure(c);
        let writer = rule(
            "anonymous",
            Effect::Allow,
            Actions::Publish,
            "home/secret/#",
        );
        c.auth.acl.insert(0, writer);
    })
    .await;
    let token = format!("Bearer {}", resident());
    let mut sse = SseClient::connect(
        bridge.http,
        "/events?topic=home/%2B/temperature",
        &[("Authorization", &token)],
    )
    .await;
    let mut ws = ws_connect_with(bridge.ws, "/ws", &[("Authorization", &token)])
        .await
        .expect("session");
    let ack = ws_request(
        &mut ws,
        json!({"op": "subscribe", "topics": ["home/#"]}),
        "s",
    )
    .await;
    assert_eq!(ack["op"], "ack");
    let device = Device::connect(bridge.mqtt, "filtered").await;
    device
        .publish("home/secret/temperature", "hidden", false)
        .await;
    device
        .publish("home/hall/temperature", "visible", false)
        .await;
    assert_eq!(sse.expect_event().await.data, "visible");
    let message = ws_next(&mut ws).await;
    assert_eq!(message["topic"], "home/hall/temperature");
    assert!(bridge.stats().deliveries_withheld >= 2);
    bridge.shutdown().await;
}

/// A session ends when its token expires: the SSE stream closes and the
/// WebSocket session closes with 1008. An `exp` with a fraction of a second
/// (JWT allows any number) ends it too: it was once read as an integer
/// only, and such a session never ended.
#[tokio::test]
async fn sessions_end_when_the_token_expires() {
    let bridge = start_secure().await;
    #[allow(clippy::cast_precision_loss)] // a date in seconds fits an f64 exactly
    let fractional = now() as f64 + 2.5;
    for exp in [json!(now() + 2), json!(fractional)] {
        let short = sign(
            &json!({"sub": "ann", "aud": "tidewater", "exp": exp, "roles": ["resident"]}),
            SECRET,
        );
        let authorization = format!("Bearer {short}");
        let mut sse = SseClient::connect(
            bridge.http,
            "/events?topic=home/%23",
            &[("Authorization", &authorization)],
        )
        .await;
        let mut ws = ws_connect_with(bridge.ws, "/ws", &[("Authorization", &authorization)])
            .await
            .expect("session");
        let ended = tokio::time::timeout(TIMEOUT, sse.next_event()).await;
        assert_eq!(ended, Ok(None), "the stream ends at exp = {exp}");
        let code = tokio::time::timeout(TIMEOUT, common::ws_close_code(&mut ws)).await;
        assert_eq!(code, Ok(1008), "the session ends at exp = {exp}");
    }
    bridge.shutdown().await;
}

/// A first `EventSource` cannot set headers: the token may come in the
/// `access_token` query parameter, or a cookie, instead.
#[tokio::test]
async fn tokens_in_the_query_or_a_cookie() {
    let bridge = start_secure().await;
    let path = format!("/events?topic=home/%23&access_token={}", resident());
    let sse = SseClient::open(bridge.http, &path, &[]).await;
    assert_eq!(sse.status(), 200);
    let cookie = format!("tidewater_token={}", resident());
    let sse = SseClient::open(
        bridge.http,
        "/events?topic=home/%23",
        &[("Cookie", &cookie)],
    )
    .await;
    assert_eq!(sse.status(), 200);
    bridge.shutdown().await;
}

/// A token in a cookie cannot be used by another site to publish or to
/// open a WebSocket (browsers attach cookies to cross-site requests).
#[tokio::test]
async fn cookie_tokens_need_a_trusted_origin() {
    let bridge = start_with(|c| {
        secure(c);
        c.http.cors_allowed_origins = vec!["https://dash.example".into()];
        c.http.cors_allow_credentials = true;
        c.websocket.allowed_origins = vec!["https://dash.example".into()];
    })
    .await;
    let cookie = format!("tidewater_token={}", resident());
    for (origin, expected) in [("https://evil.example", 403), ("https://dash.example", 202)] {
        let response = request(
            bridge.http,
            "POST",
            "/publish/home/light/1/set",
            &[("Cookie", &cookie), ("Origin", origin)],
            b"on",
        )
        .await;
        assert_eq!(response.status, expected, "{origin}");
    }
    let listed = ws_connect_with(
        bridge.ws,
        "/ws",
        &[("Cookie", &cookie), ("Origin", "https://dash.example")],
    )
    .await;
    assert!(listed.is_ok());
    // Without an origin list, a cookie works from the bridge's own origin only.
    let other = start_with(secure).await;
    let refused = ws_connect_with(
        other.ws,
        "/ws",
        &[("Cookie", &cookie), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.err().map(|(status, _)| status), Some(403));
    let own_origin = format!("http://{}", other.ws);
    let own = ws_connect_with(
        other.ws,
        "/ws",
        &[("Cookie", &cookie), ("Origin", &own_origin)],
    )
    .await;
    assert!(own.is_ok());
    bridge.shutdown().await;
    other.shutdown().await;
}

/// A token's own `tidewater` grants narrow what the rules allow.
#[tokio::test]
async fn token_grants_narrow_access() {
    let bridge = start_secure().await;
    let narrow = sign(
        &json!({"sub": "kiosk", "aud": "tidewater", "exp": now() + 600, "roles": ["resident"],
                "tidewater": {"subscribe": ["home/hall/#"], "publish": []}}),
        SECRET,
    );
    let authorization = format!("Bearer {narrow}");
    let allowed = SseClient::open(
        bridge.http,
        "/events?topic=home/hall/%23",
        &[("Authorization", &authorization)],
    )
    .await;
    assert_eq!(allowed.status(), 200);
    let wider = request(
        bridge.http,
        "GET",
        "/events?topic=home/%23",
        &[("Authorization", &authorization)],
        b"",
    )
    .await;
    assert_eq!(wider.status, 403);
    let publish = request(
        bridge.http,
        "POST",
        "/publish/home/hall/light",
        &[("Authorization", &authorization)],
        b"on",
    )
    .await;
    assert_eq!(publish.status, 403);
    bridge.shutdown().await;
}

/// `%u` gives every user its own space, and only its own.
#[tokio::test]
async fn users_have_their_own_space() {
    let bridge = start_secure().await;
    let bob = sign(
        &json!({"sub": "bob", "aud": "tidewater", "exp": now() + 600}),
        SECRET,
    );
    let authorization = format!("Bearer {bob}");
    let own = request(
        bridge.http,
        "POST",
        "/publish/users/bob/note",
        &[("Authorization", &authorization)],
        b"hi",
    )
    .await;
    assert_eq!(own.status, 202);
    let other = request(
        bridge.http,
        "POST",
        "/publish/users/ann/note",
        &[("Authorization", &authorization)],
        b"hi",
    )
    .await;
    assert_eq!(other.status, 403);
    bridge.shutdown().await;
}

/// Built-in defaults let no anonymous web client in.
#[tokio::test]
async fn anonymous_web_access_is_off_by_default() {
    let bridge = start_with(|c| c.auth = Default::default()).await;
    let response = request(bridge.http, "GET", "/events?topic=a", &[], b"").await;
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"], "missing-token");
    let ws = ws_connect_with(bridge.ws, "/ws", &[]).await;
    assert_eq!(ws.err().map(|(status, _)| status), Some(401));
    let publish = request(bridge.http, "POST", "/publish/a", &[], b"x").await;
    assert_eq!(publish.status, 401);
    bridge.shutdown().await;
}

/// Devices with passwords: no anonymous MQTT, one user, a resident.
fn secure_mqtt(config: &mut Config) {
    secure(config);
    config.auth.anonymous_mqtt = false;
    config.auth.users = vec![tidewater::config::UserConfig {
        name: "sensor".into(),
        password_hash: tidewater::auth::password::hash("sensor-password").expect("hash"),
        roles: vec!["resident".into()],
        client_ids: Vec::new(),
    }];
}

/// MQTT: no username, a wrong password and an unknown user are refused at
/// CONNECT with a CONNACK, and counted. A device that logged in is held to
/// the same rules as web clients, by the MQTT gate: a denied filter gets a
/// SUBACK failure (one code per filter), a publish on a denied topic is
/// acknowledged but reaches nobody, MQTT or web, and is counted. (Deliveries
/// withheld per message, wills, `%u`/`%c`, MQTT 5, TLS and WebSocket:
/// `core/tests/gate.rs`.)
#[tokio::test]
async fn mqtt_matrix() {
    let bridge = start_with(secure_mqtt).await;
    let none = Device::try_connect(bridge.mqtt, "anon", None).await;
    assert!(none.is_err(), "a CONNECT without a username is refused");
    let wrong = Device::try_connect(bridge.mqtt, "wrong", Some(("sensor", "guess"))).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let unknown = Device::try_connect(bridge.mqtt, "who", Some(("nobody", "x"))).await;
    assert!(unknown.is_err(), "an unknown user is refused");
    assert_eq!(bridge.stats().auth_failures, 3);

    let login = Some(("sensor", "sensor-password"));
    let connect = |client_id| raw::Connect {
        level: 4,
        client_id,
        login,
        will_topic: None,
    };
    let (mut device, code) = RawMqtt::connect(bridge.mqtt, connect("sensor-1")).await;
    assert_eq!(code, Some(0), "the right password connects");
    let (mut peer, code) = RawMqtt::connect(bridge.mqtt, connect("sensor-2")).await;
    assert_eq!(code, Some(0));
    assert_eq!(peer.subscribe(1, &[("home/secret/#", 0)]).await, [0x80]);
    let mixed = [
        ("home/+/temperature", 1),
        ("home/secret/#", 0),
        ("users/sensor/#", 0),
    ];
    assert_eq!(peer.subscribe(2, &mixed).await, [1, 0x80, 0]);
    let token = format!("Bearer {}", resident());
    let mut sse = SseClient::connect(
        bridge.http,
        "/events?topic=home/%23",
        &[("Authorization", &token)],
    )
    .await;

    device.publish("home/secret/door", b"open", 1, 10).await;
    assert_eq!(
        device.ack(4, 10).await,
        0,
        "a refused QoS 1 publish is acknowledged"
    );
    device
        .publish("home/kitchen/temperature", b"20", 1, 11)
        .await;
    assert_eq!(device.ack(4, 11).await, 0);
    device.publish("users/sensor/note", b"end", 0, 0).await;
    assert_eq!(
        peer.topics_until("users/sensor/note").await,
        ["home/kitchen/temperature", "users/sensor/note"]
    );
    assert_eq!(
        sse.expect_event().await.data,
        "20",
        "the web subscriber never sees home/secret"
    );
    let stats = bridge.stats();
    assert_eq!(stats.mqtt_publishes_denied, 1);
    assert_eq!(stats.mqtt_subscriptions_denied, 2);
    assert_eq!(
        stats.deliveries_withheld, 0,
        "the refused publish never entered the broker"
    );
    bridge.shutdown().await;
}

/// The MQTT 3.1.1, MQTT 5 and MQTT-over-WebSocket listeners all check
/// passwords, and refuse with a CONNACK rather than the bare close rumqttd
/// 0.20 gives: no login is "not authorized" (return code 5, reason code
/// 0x87), a wrong password "bad user name or password" (4, 0x86). Every
/// port takes both protocol versions.
#[tokio::test]
async fn every_mqtt_listener_checks_passwords() {
    let bridge = start_with(|c| {
        secure_mqtt(c);
        c.mqtt.listen_v5 = Some("127.0.0.1:0".parse().expect("addr"));
        c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let v5 = bridge.mqtt_v5.expect("v5 listener");
    let ws = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let connect = |level, login| raw::Connect {
        level,
        client_id: "sensor-raw",
        login,
        will_topic: None,
    };
    let right = Some(("sensor", "sensor-password"));
    for (login, v4_code, v5_code) in [(None, 5, 0x87), (Some(("sensor", "guess")), 4, 0x86)] {
        for (addr, level, refused) in [
            (bridge.mqtt, 4, v4_code),
            (v5, 5, v5_code),
            (bridge.mqtt, 5, v5_code),
        ] {
            let (_, code) = RawMqtt::connect(addr, connect(level, login)).await;
            assert_eq!(code, Some(refused), "{login:?} at level {level} on {addr}");
        }
        let (_, code) = RawMqtt::connect_ws(ws, connect(4, login)).await;
        assert_eq!(code, Some(v4_code), "{login:?} over WebSocket");
    }
    for (addr, level) in [(bridge.mqtt, 4), (v5, 5), (bridge.mqtt, 5), (v5, 4)] {
        let (_, code) = RawMqtt::connect(addr, connect(level, right)).await;
        assert_eq!(code, Some(0), "level {level} on {addr}: CONNACK success");
    }
    let (_, code) = RawMqtt::connect_ws(ws, connect(5, right)).await;
    assert_eq!(code, Some(0), "MQTT 5 over WebSocket");
    bridge.shutdown().await;
}

/// Topics an SSE stream (in JSON format) receives, up to and including
/// `last`.
async fn sse_topics_until(sse: &mut SseClient, last: &str) -> Vec<String> {
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some(last) {
        let event = sse.expect_event().await;
        let data: Value = serde_json::from_str(&event.data).expect("JSON event");
        topics.push(data["topic"].as_str().expect("topic").to_owned());
    }
    topics
}

/// Topics a WebSocket session receives, up to and including `last`.
async fn ws_topics_until(ws: &mut common::Ws, last: &str) -> Vec<String> {
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some(last) {
        let frame = ws_next(ws).await;
        if frame["op"] == "message" {
            topics.push(frame["topic"].as_str().expect("topic").to_owned());
        }
    }
    topics
}

/// Everyone publishes, over every protocol, to allowed and denied topics;
/// every subscriber receives exactly what the rules let it read, and
/// nothing that was refused reaches anyone.
#[tokio::test]
async fn no_message_reaches_a_subscriber_it_should_not() {
    let bridge = start_with(secure_mqtt).await;
    let ann = format!("Bearer {}", resident());
    let bob = format!(
        "Bearer {}",
        sign(
            &json!({"sub": "bob", "aud": "tidewater", "exp": now() + 600}),
            SECRET
        )
    );
    let kiosk = format!(
        "Bearer {}",
        sign(
            &json!({"sub": "kiosk", "aud": "tidewater", "exp": now() + 600, "roles": ["resident"],
                    "tidewater": {"subscribe": ["home/hall/#"]}}),
            SECRET
        )
    );
    // Subscribers, each with what it asked for.
    let ann_h = [("Authorization", ann.as_str())];
    let mut ann_sse =
        SseClient::connect(bridge.http, "/events?topic=home/%23&format=json", &ann_h).await;
    let mut ann_ws = ws_connect_with(bridge.ws, "/ws", &ann_h)
        .await
        .expect("ann's session");
    let subscribe = json!({"op": "subscribe", "topics": ["home/+/temperature"]});
    assert_eq!(ws_request(&mut ann_ws, subscribe, "s").await["op"], "ack");
    let bob_h = [("Authorization", bob.as_str())];
    let mut bob_sse = SseClient::connect(
        bridge.http,
        "/events?topic=users/bob/%23&format=json",
        &bob_h,
    )
    .await;
    let bob_home = request(bridge.http, "GET", "/events?topic=home/%23", &bob_h, b"").await;
    assert_eq!(bob_home.status, 403, "bob has no role: no home/#");
    let kiosk_h = [("Authorization", kiosk.as_str())];
    let mut kiosk_ws = ws_connect_with(bridge.ws, "/ws", &kiosk_h)
        .await
        .expect("kiosk's session");
    let subscribe = json!({"op": "subscribe", "topics": ["home/hall/#"]});
    assert_eq!(ws_request(&mut kiosk_ws, subscribe, "s").await["op"], "ack");
    let wider = json!({"op": "subscribe", "topics": ["home/#"]});
    assert_eq!(
        ws_request(&mut kiosk_ws, wider, "w").await["code"],
        "forbidden"
    );

    // Publishers: an MQTT device, ann over HTTP, bob over WebSocket.
    let sensor = Device::try_connect(bridge.mqtt, "sensor-1", Some(("sensor", "sensor-password")))
        .await
        .expect("sensor connects");
    for topic in [
        "home/kitchen/temperature",
        "home/secret/temperature",
        "users/bob/x",
        "users/ann/x",
    ] {
        sensor.publish(topic, "m", false).await;
    }
    // Two publishers keep no order between them: the sensor's messages
    // are in before anyone else publishes.
    assert_eq!(
        sse_topics_until(&mut ann_sse, "home/kitchen/temperature").await,
        ["home/kitchen/temperature"]
    );
    for (topic, status) in [
        ("home/hall/light", 200),
        ("home/secret/a", 403),
        ("users/bob/y", 403),
    ] {
        let path = format!("/publish/{topic}?qos=1");
        let response = request(bridge.http, "POST", &path, &ann_h, b"h").await;
        assert_eq!(response.status, status, "ann publishing {topic}");
    }
    let mut bob_ws = ws_connect_with(bridge.ws, "/ws", &bob_h)
        .await
        .expect("bob's session");
    for (topic, op) in [
        ("users/bob/z", "ack"),
        ("home/hall/temperature", "error"),
        ("users/bob/end", "ack"),
    ] {
        let publish = json!({"op": "publish", "topic": topic, "payload": "w", "qos": 1});
        assert_eq!(
            ws_request(&mut bob_ws, publish, "p").await["op"],
            op,
            "bob publishing {topic}"
        );
    }
    // A marker, after everything else: the broker keeps one order.
    sensor.publish("home/hall/temperature", "end", false).await;

    assert_eq!(
        sse_topics_until(&mut ann_sse, "home/hall/temperature").await,
        ["home/hall/light", "home/hall/temperature"]
    );
    assert_eq!(
        ws_topics_until(&mut ann_ws, "home/hall/temperature").await,
        ["home/kitchen/temperature", "home/hall/temperature"]
    );
    assert_eq!(
        sse_topics_until(&mut bob_sse, "users/bob/end").await,
        ["users/bob/z", "users/bob/end"],
        "the gate refused the sensor's users/bob/x: not its own space"
    );
    assert_eq!(
        ws_topics_until(&mut kiosk_ws, "home/hall/temperature").await,
        ["home/hall/light", "home/hall/temperature"]
    );
    bridge.shutdown().await;
}
