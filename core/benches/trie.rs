//! Topic-trie matching against 10k and 100k registered filters: the cost
//! the router pays per message before any fan-out.
//!
//! The filters mimic a deployment: one exact filter per device, a `+`
//! filter per site and some `#` filters, so a topic matches a handful of
//! them and the walk must skip the rest.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tidewater::router::trie::FilterTrie;

/// `count` filters: 90 % exact device topics, 9 % `+` per site, 1 % `#`.
fn filters(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 100 {
            0 => format!("site/{}/#", i / 100),
            1..=9 => format!("site/{}/+/telemetry", i / 10),
            _ => format!("site/{}/dev{i}/telemetry", i / 100),
        })
        .collect()
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    group.throughput(Throughput::Elements(1));
    for count in [10_000usize, 100_000] {
        let mut trie = FilterTrie::new();
        for (id, filter) in filters(count).iter().enumerate() {
            trie.insert(filter, id as u64);
        }
        // A topic that matches an exact, a `+` and a `#` filter, and one
        // that matches nothing.
        let hit = format!("site/{}/dev{}/telemetry", count / 200, count / 2 + 50);
        let miss = "elsewhere/a/b/c".to_owned();
        for (name, topic) in [("hit", &hit), ("miss", &miss)] {
            group.bench_with_input(BenchmarkId::new(name, count), topic, |b, topic| {
                b.iter(|| {
                    let mut matched = 0u64;
                    trie.for_each_match(black_box(topic), |id| matched += id);
                    matched
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
