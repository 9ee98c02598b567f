//! The log on disk, in-process: retained values and every client's place
//! in the stream survive a restart of the bridge on the same directory,
//! and a resume older than the replay ring is read back from the log.
//! (Process kills and a cut-off tail are in `binary.rs`.)

mod common;

use std::path::Path;

use common::{Device, SseClient, TestBridge};
use tidewater::log::{Fsync, Kind};

async fn on_disk(dir: &Path, replay_capacity: usize) -> TestBridge {
    let dir = dir.to_path_buf();
    common::start_with(move |config| {
        config.log.kind = Kind::Disk;
        config.log.dir = dir;
        config.log.fsync = Fsync::Never;
        config.sse.replay_capacity = replay_capacity;
    })
    .await
}

async fn publish(bridge: &TestBridge, topic: &str, body: &str) {
    let response = common::post(bridge.http, &format!("/publish/{topic}"), body.as_bytes()).await;
    assert_eq!(response.status, 202, "publish {topic}");
}

/// The id's two halves: epoch and position.
fn parts(id: &str) -> (u64, u64) {
    let (epoch, seq) = id.split_once('-').expect("an id is <epoch>-<position>");
    (
        u64::from_str_radix(epoch, 16).expect("a hex epoch"),
        u64::from_str_radix(seq, 16).expect("a hex position"),
    )
}

#[tokio::test]
async fn retained_values_and_every_place_in_the_stream_survive_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 1_000).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/%23", &[]).await;
    publish(&bridge, "home/kitchen/temperature?retain=true", "19").await;
    assert_eq!(sse.expect_event().await.data, "19");
    let mut ids = Vec::new();
    for body in ["a1", "a2", "a3"] {
        publish(&bridge, "home/hall/motion", body).await;
        let event = sse.expect_event().await;
        assert_eq!(event.data, body);
        ids.push(event.id.expect("a live message has an id"));
    }
    drop(sse);
    bridge.shutdown().await;

    let bridge = on_disk(dir.path(), 1_000).await;
    // Where the client left off, to the message: nothing lost, nothing
    // twice, and the ids go on in the same epoch.
    let mut resumed = SseClient::connect(
        bridge.http,
        "/events?topic=home/%23",
        &[("Last-Event-ID", &ids[0])],
    )
    .await;
    for (body, id) in [("a2", &ids[1]), ("a3", &ids[2])] {
        let event = resumed.expect_event().await;
        assert_eq!((event.data.as_str(), event.id.as_ref()), (body, Some(id)));
    }
    publish(&bridge, "home/hall/motion", "b1").await;
    let event = resumed.expect_event().await;
    assert_eq!(event.data, "b1");
    let (epoch, seq) = parts(event.id.as_deref().expect("an id"));
    assert_eq!((epoch, seq), (parts(&ids[2]).0, parts(&ids[2]).1 + 1));

    // The retained value is current state for every new subscriber, web
    // and MQTT alike.
    let mut fresh = SseClient::connect(bridge.http, "/events?topic=home/kitchen/%23", &[]).await;
    let event = fresh.expect_event().await;
    assert_eq!((event.data.as_str(), event.id), ("19", None));
    let mut device = Device::connect(bridge.mqtt, "after-restart").await;
    device.subscribe("home/kitchen/#").await;
    let retained = device.next().await;
    assert_eq!(
        (
            retained.topic.as_str(),
            &retained.payload[..],
            retained.retain
        ),
        ("home/kitchen/temperature", &b"19"[..], true)
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_resume_older_than_the_ring_is_read_from_the_log() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 4).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=t/%23", &[]).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        // Other topics in between: the resume filters them out.
        publish(&bridge, "other", "x").await;
        publish(&bridge, "t/x", &i.to_string()).await;
        let event = sse.expect_event().await;
        assert_eq!(event.data, i.to_string());
        ids.push(event.id.expect("a live message has an id"));
    }
    drop(sse);
    let mut resumed = SseClient::connect(
        bridge.http,
        "/events?topic=t/%23",
        &[("Last-Event-ID", &ids[4])],
    )
    .await;
    for (i, id) in ids.iter().enumerate().skip(5) {
        let event = resumed.expect_event().await;
        assert_eq!((event.data, event.id.as_ref()), (i.to_string(), Some(id)));
    }
    publish(&bridge, "t/x", "live").await;
    assert_eq!(resumed.expect_event().await.data, "live");
    let stats = bridge.stats();
    assert_eq!(stats.log_resumes, 1);
    assert!(stats.log_messages_read >= 30, "{}", stats.log_messages_read);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_directory_in_use_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 16).await;
    let mut config = common::test_config();
    config.log.kind = Kind::Disk;
    config.log.dir = dir.path().to_path_buf();
    let error = tidewater::Bridge::start(config, Default::default())
        .await
        .expect_err("a second bridge on the same directory");
    let text = error.to_string();
    assert!(
        text.contains("in use") && text.contains(&dir.path().display().to_string()),
        "{text}"
    );
    bridge.shutdown().await;
}

/// Milliseconds since `start`, as a relative `since` that reaches back
/// to it.
fn since(start: std::time::Instant) -> String {
    format!("-{}ms", start.elapsed().as_millis())
}

#[tokio::test]
async fn history_by_time_replays_then_goes_on_live_without_a_seam() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 4).await;
    let mut live = SseClient::connect(bridge.http, "/events?topic=room/%23", &[]).await;
    publish(&bridge, "room/state?retain=true", "on").await;
    assert_eq!(live.expect_event().await.data, "on");
    let mut sent = Vec::new();
    let mut between = None;
    for i in 0..12 {
        if i == 8 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            between = Some(std::time::Instant::now());
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        publish(&bridge, "room/t", &i.to_string()).await;
        let event = live.expect_event().await;
        sent.push((event.data, event.id.expect("an id")));
    }
    bridge.shutdown().await;

    // After a restart, from the log: the retained value first, then every
    // message since the time (older than the ring, so from disk), then live.
    let bridge = on_disk(dir.path(), 4).await;
    for (path, from) in [
        ("/events?topic=room/%23&since=-5m".to_owned(), 0),
        (
            format!(
                "/events?topic=room/%23&since={}",
                since(between.expect("a time"))
            ),
            8,
        ),
        (
            "/events?topic=room/%23&since=2000-01-01T00:00:00Z".to_owned(),
            0,
        ),
    ] {
        let mut replay = SseClient::connect(bridge.http, &path, &[]).await;
        let first = replay.expect_event().await;
        assert_eq!((first.data.as_str(), first.id), ("on", None), "{path}");
        if from == 0 {
            // The retained value's own publish is history too.
            let publish = replay.expect_event().await;
            assert_eq!(publish.data, "on", "{path}");
            assert!(publish.id.is_some(), "{path}");
        }
        for (data, id) in &sent[from..] {
            let event = replay.expect_event().await;
            assert_eq!((&event.data, event.id.as_ref()), (data, Some(id)), "{path}");
        }
        publish(&bridge, "room/t", "live").await;
        let event = replay.expect_event().await;
        assert_eq!(event.data, "live", "{path}");
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_since_past_the_replay_limit_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = {
        let dir = dir.path().to_path_buf();
        common::start_with(move |config| {
            config.log.kind = Kind::Disk;
            config.log.dir = dir;
            config.sse.max_replay = 5;
        })
        .await
    };
    let mut live = SseClient::connect(bridge.http, "/events?topic=t", &[]).await;
    for i in 0..10 {
        publish(&bridge, "t", &i.to_string()).await;
        live.expect_event().await;
    }
    let refused = common::get(bridge.http, "/events?topic=t&since=-5m").await;
    assert_eq!(refused.status, 400);
    let body = refused.json();
    assert_eq!(
        (body["error"].as_str(), body["max_replay"].as_u64()),
        (Some("replay-too-long"), Some(5))
    );
    let malformed = common::get(bridge.http, "/events?topic=t&since=yesterday").await;
    assert_eq!(
        (malformed.status, malformed.json()["error"].as_str()),
        (400, Some("malformed-since"))
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_websocket_since_is_a_time_as_well_as_an_id() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 2).await;
    let mut live = SseClient::connect(bridge.http, "/events?topic=w", &[]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        publish(&bridge, "w", &i.to_string()).await;
        ids.push(live.expect_event().await.id.expect("an id"));
    }
    for (since, from) in [("-5m".to_owned(), 0), (ids[2].clone(), 3)] {
        let mut ws = common::ws_connect(bridge.ws).await;
        let request = serde_json::json!({"op": "subscribe", "topics": ["w"], "since": since});
        let mut early = Vec::new();
        let ack = common::ws_request_collecting(&mut ws, request, "s", &mut early).await;
        assert_eq!(ack["op"], "ack", "{ack}");
        while early.len() < 6 - from {
            early.push(common::ws_next(&mut ws).await);
        }
        let got: Vec<_> = early
            .iter()
            .map(|m| m["payload"].as_str().unwrap_or("?").to_owned())
            .collect();
        let expected: Vec<_> = (from..6).map(|i| i.to_string()).collect();
        assert_eq!(got, expected, "since {since}");
    }
    bridge.shutdown().await;
}

/// A power cut, as the disk sees it: the last record cut short. The log
/// cuts it off and begins a new epoch: a client that saw the lost message
/// is told of a gap, one from before it resumes exactly, and the position
/// is given again only under the new epoch.
#[tokio::test]
async fn a_tail_cut_off_is_a_gap_for_whoever_saw_it_and_nothing_else() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 1_000).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=p", &[]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        publish(&bridge, "p", &i.to_string()).await;
        ids.push(sse.expect_event().await.id.expect("an id"));
    }
    drop(sse);
    bridge.shutdown().await;
    let segments = dir.path().join("segments");
    let segment = std::fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("an entry").path())
        .max()
        .expect("a segment");
    let len = std::fs::metadata(&segment).expect("its size").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open");
    file.set_len(len - 3).expect("cut the tail");
    drop(file);

    let bridge = on_disk(dir.path(), 1_000).await;
    let mut lost = SseClient::connect(
        bridge.http,
        "/events?topic=p",
        &[("Last-Event-ID", &ids[9])],
    )
    .await;
    assert_eq!(lost.expect_event().await.event, "gap");
    let mut exact = SseClient::connect(
        bridge.http,
        "/events?topic=p",
        &[("Last-Event-ID", &ids[6])],
    )
    .await;
    for (i, id) in ids.iter().enumerate().take(9).skip(7) {
        let event = exact.expect_event().await;
        assert_eq!(event.data, i.to_string());
        assert_eq!(parts(event.id.as_deref().expect("an id")).1, parts(id).1);
    }
    publish(&bridge, "p", "after").await;
    let event = exact.expect_event().await;
    assert_eq!(event.data, "after");
    let (epoch, seq) = parts(event.id.as_deref().expect("an id"));
    assert_eq!(seq, parts(&ids[9]).1, "position 10 again");
    assert_ne!(epoch, parts(&ids[9]).0, "but in a new epoch");
    bridge.shutdown().await;
}

/// A start that fails half way (here a required plugin that cannot load,
/// after the log and the broker have started) undoes what it started: the
/// log's directory is released, so the next start on it succeeds, with
/// everything the log held.
#[tokio::test]
async fn a_failed_start_releases_the_log_for_the_next_one() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bridge = on_disk(dir.path(), 1_000).await;
    publish(&bridge, "home/kitchen/temperature?retain=true", "19").await;
    common::eventually("the retained value is in the log", || {
        bridge.router.log().retained().len() == 1
    })
    .await;
    bridge.shutdown().await;

    let mut config = common::test_config();
    config.log.kind = Kind::Disk;
    config.log.dir = dir.path().to_path_buf();
    config.plugins.push(tidewater::config::PluginConfig {
        name: "missing".into(),
        path: dir.path().join("no-such-driver.so"),
        required: true,
        inbox_capacity: 16,
        config: serde_json::Map::new(),
    });
    let error = tidewater::Bridge::start(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a required plugin that cannot load stops the start");
    assert!(matches!(error, tidewater::StartError::Plugin(_)), "{error}");

    let bridge = on_disk(dir.path(), 1_000).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/%23", &[]).await;
    assert_eq!(sse.expect_event().await.data, "19");
    bridge.shutdown().await;
}
