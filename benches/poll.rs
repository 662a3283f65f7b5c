//! CPU cost of one poll's diff on a 1 MB JSON document: unchanged (the
//! common case: one hash), and changed under each mode (body hash, json-items,
//! json-patch). `cargo bench --bench poll` measures; `cargo test
//! --all-targets` runs each once as a check.
//!
//! Upstream requests per second against subscriber count is measured end to
//! end, not here: see docs/polling.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ssegate::config::PollDiff;
use ssegate::sources::diff::{compare, Compared, State};
use std::hint::black_box;
use std::time::Duration;

/// About 1 MB: `{"data":[{"id":0,"name":"item 0","price":0,"tags":[..]}, ..]}`;
/// `bump` changes every 100th item's price.
fn document(bump: u64) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..10_000u64)
        .map(|i| {
            let price = if i % 100 == 0 { i + bump } else { i };
            serde_json::json!({"id": i, "name": format!("item {i}"), "price": price, "tags": ["a", "b", "c"], "note": "x".repeat(40)})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "data": items })).unwrap_or_default()
}

fn baseline(mode: &PollDiff, body: &[u8]) -> State {
    match compare(mode, None, body) {
        Ok(Compared::Changed { state, .. }) => state,
        other => panic!("baseline: {other:?}"),
    }
}

fn diffing(c: &mut Criterion) {
    let old = document(0);
    let new = document(1);
    let mut g = c.benchmark_group("diff_1mb");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Bytes(new.len() as u64));
    let modes = [
        ("body", PollDiff::Body),
        (
            "json_items",
            PollDiff::JsonItems {
                items: "/data".into(),
                key: "id".into(),
            },
        ),
        ("json_patch", PollDiff::JsonPatch),
    ];
    for (name, mode) in &modes {
        let prev = baseline(mode, &old);
        // Each bench checks once that it measures what it says.
        match compare(mode, Some(&prev), &new) {
            Ok(Compared::Changed { changes, .. }) => {
                let want = if name == &"json_items" { 100 } else { 1 };
                assert_eq!(changes.len(), want, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(matches!(
            compare(mode, Some(&prev), &old),
            Ok(Compared::Unchanged)
        ));
        g.bench_function(format!("{name}/unchanged"), |b| {
            b.iter(|| compare(mode, Some(&prev), black_box(&old)))
        });
        g.bench_function(format!("{name}/changed"), |b| {
            b.iter(|| compare(mode, Some(&prev), black_box(&new)))
        });
    }
    g.finish();
}

criterion_group!(benches, diffing);
criterion_main!(benches);
