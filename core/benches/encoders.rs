//! The SSE and WebSocket encoders on a 120-byte JSON payload: the work done
//! once per message and format, before the bytes are shared by every
//! subscriber.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tidewater::router::{EventId, Message};
use tidewater::sse::frame::{self, Format};
use tidewater::ws::protocol;

/// A fresh message each time: encodings are cached per message, and the
/// benchmark measures building one, not reading the cache.
fn message() -> Message {
    let payload = Bytes::from_static(
        br#"{"t0":1732240000123456,"seq":123456,"dev":17,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    );
    let id = EventId {
        epoch: 0x018c_2f3a_1b2c,
        seq: 123_456,
    };
    Message::new(
        Some(id),
        "devices/17/telemetry".into(),
        payload,
        false,
        "message".into(),
    )
}

fn bench_encoders(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sse_raw", |b| {
        b.iter_batched(
            message,
            |m| frame::message(black_box(&m), Format::Raw),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sse_json", |b| {
        b.iter_batched(
            message,
            |m| frame::message(black_box(&m), Format::Json),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("ws_json", |b| {
        b.iter_batched(
            message,
            |m| protocol::message(black_box(&m)),
            BatchSize::SmallInput,
        )
    });
    // What every subscriber after the first pays: a cache hit and a clone.
    let shared = message();
    let _ = frame::message(&shared, Format::Raw);
    group.bench_function("sse_raw_cached", |b| {
        b.iter(|| frame::message(black_box(&shared), Format::Raw))
    });
    group.finish();
}

criterion_group!(benches, bench_encoders);
criterion_main!(benches);
