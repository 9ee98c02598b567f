//! The router on its own: dispatch, fan-out, overflow, resume and removal,
//! with the broker side replaced by the channels it would read.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::auth::Principal;
use crate::broker::stamp::Meta;

const BOUNDS: FilterBounds = FilterBounds {
    max_filters: 4,
    max_filter_bytes: 64,
    budget_bytes: usize::MAX,
};

struct Harness {
    router: Router,
}

fn harness(replay_capacity: usize) -> Harness {
    let router = Router::new(
        RouterSettings {
            replay_capacity,
            replay_max_bytes: usize::MAX,
            routes: vec![Route {
                filter: "home/+/temperature".into(),
                event: "temperature".into(),
            }],
            policy: Arc::new(crate::auth::Policy::allow_all()),
            device_events_capacity: 16,
            read_page: 16,
            max_replay: 1_000,
            max_retained: 100,
            topics: crate::topic::Limits::MQTT,
        },
        Arc::new(Stats::default()),
        Arc::new(crate::log::memory::MemoryLog::new(1_000)),
    );
    Harness { router }
}

fn request(filters: &[&str], resume: Option<EventId>, queue: usize) -> SubscribeRequest {
    SubscribeRequest {
        principal: Principal::Anonymous,
        filters: filters.iter().map(|f| f.to_string()).collect(),
        start: resume.map_or(Start::Now, Start::After),
        queue: QueueBound {
            messages: queue,
            bytes: usize::MAX,
        },
        bounds: BOUNDS,
    }
}

async fn payloads(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        match sub.next().await {
            Some(Delivery::Message(m)) => {
                out.push(String::from_utf8_lossy(&m.payload).into_owned())
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// Messages get consecutive ids in one epoch, and the routed event name.
#[tokio::test]
async fn ids_are_sequential_and_events_routed() {
    let h = harness(10);
    let mut sub = h
        .router
        .subscribe(request(&["#"], None, 8))
        .expect("subscribe");
    h.router.dispatch(
        "home/kitchen/temperature",
        Bytes::from_static(b"1"),
        Meta::default(),
    );
    h.router
        .dispatch("other", Bytes::from_static(b"2"), Meta::default());
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for _ in 0..2 {
        let Some(Delivery::Message(m)) = sub.next().await else {
            panic!("message expected")
        };
        ids.push(m.id.expect("id"));
        events.push(m.event.to_string());
    }
    assert_eq!(ids[0].epoch, h.router.epoch());
    assert_eq!(ids[1].seq, ids[0].seq + 1);
    assert_eq!(events, vec!["temperature", "message"]);
}

/// A subscriber whose filters overlap receives each message once.
#[tokio::test]
async fn overlapping_filters_deliver_once() {
    let h = harness(10);
    let mut sub = h
        .router
        .subscribe(request(&["a/#", "a/+", "a/b"], None, 8))
        .expect("subscribe");
    h.router
        .dispatch("a/b", Bytes::from_static(b"x"), Meta::default());
    h.router
        .dispatch("a/c", Bytes::from_static(b"y"), Meta::default());
    assert_eq!(payloads(&mut sub, 2).await, vec!["x", "y"]);
    assert_eq!(h.router.stats().snapshot().deliveries, 2);
}

/// A full queue ends that subscription (after what it already holds) and
/// is counted; other subscribers are unaffected.
#[tokio::test]
async fn full_queue_ends_only_that_subscription() {
    let h = harness(10);
    let mut slow = h.router.subscribe(request(&["t"], None, 2)).expect("slow");
    let mut fast = h.router.subscribe(request(&["t"], None, 16)).expect("fast");
    for i in 0..5 {
        h.router
            .dispatch("t", Bytes::from(i.to_string()), Meta::default());
    }
    assert_eq!(payloads(&mut fast, 5).await, vec!["0", "1", "2", "3", "4"]);
    assert_eq!(payloads(&mut slow, 2).await, vec!["0", "1"]);
    assert!(
        slow.next().await.is_none(),
        "the slow subscription has ended"
    );
    assert_eq!(h.router.stats().snapshot().slow_consumer_disconnects, 1);
    assert_eq!(h.router.subscriber_count(), 1);
}

/// A message larger than the whole byte bound still reaches a subscriber
/// whose queue is empty: the bound limits a backlog, not a message.
#[tokio::test]
async fn one_large_message_fits_an_empty_queue() {
    let h = harness(10);
    let mut sub = h.router.open(QueueBound {
        messages: 16,
        bytes: 100,
    });
    sub.add(&Principal::Anonymous, &["t".into()], None, BOUNDS)
        .expect("add");
    h.router
        .dispatch("t", Bytes::from(vec![b'x'; 1_000]), Meta::default());
    assert_eq!(payloads(&mut sub, 1).await[0].len(), 1_000);
    h.router
        .dispatch("t", Bytes::from(vec![b'y'; 1_000]), Meta::default());
    assert_eq!(payloads(&mut sub, 1).await[0].len(), 1_000);
    assert_eq!(h.router.stats().snapshot().slow_consumer_disconnects, 0);
}

/// The byte bound ends a subscription that falls behind on large messages
/// long before its message count would; what it takes out makes room again.
#[tokio::test]
async fn queued_bytes_are_bounded_too() {
    let h = harness(10);
    let bound = QueueBound {
        messages: 1_000,
        bytes: 3 * 1_001,
    };
    let mut keeping_up = h.router.open(bound);
    keeping_up
        .add(&Principal::Anonymous, &["t".into()], None, BOUNDS)
        .expect("add");
    let mut slow = h.router.open(bound);
    slow.add(&Principal::Anonymous, &["t".into()], None, BOUNDS)
        .expect("add");
    let big = Bytes::from(vec![b'x'; 1_000]); // 1,001 bytes with its topic
    for _ in 0..3 {
        h.router.dispatch("t", big.clone(), Meta::default());
    }
    assert_eq!(payloads(&mut keeping_up, 3).await.len(), 3);
    h.router.dispatch("t", big.clone(), Meta::default());
    assert_eq!(
        payloads(&mut keeping_up, 1).await.len(),
        1,
        "taking messages out made room for the fourth"
    );
    assert_eq!(payloads(&mut slow, 3).await.len(), 3);
    assert!(
        slow.next().await.is_none(),
        "the fourth overflowed its bytes"
    );
    assert_eq!(h.router.stats().snapshot().slow_consumer_disconnects, 1);
    assert_eq!(h.router.subscriber_count(), 1);
}

/// Resuming replays exactly the later matching messages, then live ones.
#[tokio::test]
async fn resume_replays_then_goes_live() {
    let h = harness(100);
    let mut first = h
        .router
        .subscribe(request(&["r/#"], None, 16))
        .expect("subscribe");
    h.router
        .dispatch("r/1", Bytes::from_static(b"1"), Meta::default());
    let Some(Delivery::Message(m)) = first.next().await else {
        panic!("message expected")
    };
    let last = m.id.expect("id");
    drop(first);
    h.router
        .dispatch("r/2", Bytes::from_static(b"2"), Meta::default());
    h.router
        .dispatch("elsewhere", Bytes::from_static(b"no"), Meta::default());
    h.router
        .dispatch("r/3", Bytes::from_static(b"3"), Meta::default());
    let mut resumed = h
        .router
        .subscribe(request(&["r/#"], Some(last), 16))
        .expect("resume");
    h.router
        .dispatch("r/4", Bytes::from_static(b"4"), Meta::default());
    assert_eq!(payloads(&mut resumed, 3).await, vec!["2", "3", "4"]);
    assert_eq!(h.router.stats().snapshot().replay_hits, 1);
}

/// An id from another epoch yields a gap, then the retained values.
#[tokio::test]
async fn foreign_epoch_yields_gap_then_retained() {
    let h = harness(10);
    let retained = Meta {
        qos: 1,
        retain: true,
    };
    h.router
        .dispatch("s/1", Bytes::from_static(b"on"), retained);
    h.router.dispatch("x", Bytes::from_static(b"no"), retained);
    let old = EventId { epoch: 1, seq: 9 };
    let mut sub = h
        .router
        .subscribe(request(&["s/#"], Some(old), 8))
        .expect("subscribe");
    assert!(matches!(sub.next().await, Some(Delivery::Gap { after }) if after == old));
    match sub.next().await {
        Some(Delivery::Message(m)) => {
            assert_eq!(
                (&m.payload[..], m.id, m.qos, m.delivered_retained()),
                (&b"on"[..], None, 1, true)
            );
        }
        other => panic!("expected the retained value, got {other:?}"),
    }
}

/// A new subscriber gets the retained values set before it subscribed, and
/// one set after only live: never both.
#[tokio::test]
async fn a_retained_value_arrives_once_as_state_or_live() {
    let h = harness(10);
    let retained = Meta {
        qos: 0,
        retain: true,
    };
    h.router.dispatch("r/a", Bytes::from_static(b"1"), retained);
    let mut sub = h
        .router
        .subscribe(request(&["r/#"], None, 8))
        .expect("subscribe");
    // Set again after the subscribe, before the subscriber reads anything.
    h.router.dispatch("r/a", Bytes::from_static(b"2"), retained);
    h.router
        .dispatch("r/b", Bytes::from_static(b"3"), Meta::default());
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.next().await {
            Some(Delivery::Message(m)) => got.push((
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.id.is_some(),
            )),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(got, [("2".to_owned(), true), ("3".to_owned(), true)]);
    assert!(
        sub.try_next().is_none(),
        "nothing more: \"1\" was replaced before it was read"
    );
}

/// Dropping a subscription removes it from the index.
#[tokio::test]
async fn drop_unsubscribes() {
    let h = harness(10);
    let sub = h
        .router
        .subscribe(request(&["d/+", "e"], None, 8))
        .expect("subscribe");
    assert_eq!(h.router.subscriber_count(), 1);
    drop(sub);
    assert_eq!(h.router.subscriber_count(), 0);
    assert!(h.router.lock().trie.is_empty());
}

/// Invalid or too many filters are refused before anything is registered.
#[test]
fn filters_are_checked() {
    let h = harness(10);
    assert!(matches!(
        h.router.subscribe(request(&[], None, 8)),
        Err(SubscribeError::NoFilters)
    ));
    assert!(matches!(
        h.router
            .subscribe(request(&["a", "b", "c", "d", "e"], None, 8)),
        Err(SubscribeError::TooManyFilters { count: 5, max: 4 })
    ));
    assert!(matches!(
        h.router.subscribe(request(&["a/#/b"], None, 8)),
        Err(SubscribeError::InvalidFilter { .. })
    ));
    assert_eq!(h.router.subscriber_count(), 0);
}

/// Adding filters with a resume point replays what they missed, except
/// messages an earlier filter already delivered live.
#[tokio::test]
async fn added_filters_replay_without_duplicates() {
    let h = harness(100);
    h.router
        .dispatch("warmup", Bytes::from_static(b"w"), Meta::default());
    let mut sub = h.router.open(QueueBound {
        messages: 16,
        bytes: usize::MAX,
    });
    sub.add(&Principal::Anonymous, &["x/#".to_owned()], None, BOUNDS)
        .expect("add x/#");
    h.router
        .dispatch("x/y", Bytes::from_static(b"both"), Meta::default());
    h.router
        .dispatch("z", Bytes::from_static(b"z-only"), Meta::default());
    assert_eq!(payloads(&mut sub, 1).await, vec!["both"]);
    let since = EventId {
        epoch: h.router.epoch(),
        seq: 1,
    };
    sub.add(
        &Principal::Anonymous,
        &["x/y".to_owned(), "z".to_owned()],
        Some(since),
        BOUNDS,
    )
    .expect("add with since");
    h.router
        .dispatch("z", Bytes::from_static(b"live"), Meta::default());
    assert_eq!(payloads(&mut sub, 2).await, vec!["z-only", "live"]);
    assert_eq!(sub.remove(&["z".to_owned(), "nope".to_owned()]), 1);
    h.router
        .dispatch("z", Bytes::from_static(b"gone"), Meta::default());
    h.router
        .dispatch("x/y", Bytes::from_static(b"still"), Meta::default());
    assert_eq!(payloads(&mut sub, 1).await, vec!["still"]);
}
