//! Criterion benches for the hot paths: SSE frame encoding, hub fan-out,
//! what each delivery to a client costs besides its write (queue, drain,
//! metrics), history replay on resume, and route matching.
//!
//! `cargo bench --bench hot_paths` measures; `cargo test --all-targets` runs
//! every bench once (criterion's test mode), so setup stays small and each
//! bench checks once that it measures what it claims to.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::Method;
use ssegate::config::load_str;
use ssegate::hub::cursor;
use ssegate::hub::memory::MemoryBroker;
use ssegate::hub::{
    count_written, Broker, Delivery, Event, Payload, Replay, Resume, Source, Subscriber,
};
use ssegate::metrics::Metrics;
use ssegate::routing::host_only;
use ssegate::wire::encode;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// A cursor as the memory broker writes them: `{epoch:x}-{seq}`.
const CURSOR: &str = "19a3f0c2b7e-123456";

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    g
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn broker(history: usize) -> MemoryBroker {
    MemoryBroker::new(history, Duration::from_secs(3600), Arc::new(Metrics::new()))
}

/// A JSON-ish payload of about 200 bytes, as a publisher would send it.
fn json_data(i: usize) -> String {
    format!(
        r#"{{"order":{{"id":"A-{i:06}","status":"shipped","carrier":"postal","eta":"2025-06-01T12:00:00Z","items":[{{"sku":"X-100","qty":2,"price":"19.99"}},{{"sku":"Y-220","qty":1,"price":"5.00"}}],"total":"44.98"}}}}"#
    )
}

fn message(channel: &str, i: usize) -> Event {
    Event::new(
        channel.to_string(),
        None,
        Payload::Message {
            event: Some("order.updated".to_string()),
            data: json_data(i),
        },
        Source::Publish,
    )
}

fn frame_encoding(c: &mut Criterion) {
    let small = "hello";
    // 16 lines of 63 characters + LF = 1024 bytes.
    let multi: String = (0..16)
        .map(|i| format!("{:-<63}\n", format!("line {i} ")))
        .collect();
    assert_eq!(multi.len(), 1024);
    let json = json_data(42);
    assert!((180..=230).contains(&json.len()), "{}", json.len());

    let mut g = group(c, "frame_encode");
    for (name, event, data) in [
        ("small", None, small),
        ("multiline_1k", Some("log"), multi.as_str()),
        ("json_200b", Some("order.updated"), json.as_str()),
    ] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| encode(Some(black_box(CURSOR)), black_box(event), black_box(data)))
        });
    }
    g.finish();
}

/// One publish (a batch of `batch` events on one channel) to `subs`
/// subscribers. Only the publish is timed; every queue is drained after it,
/// as client streams would, so no subscriber ever fills up and gets evicted.
fn fan_out_case(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    subs: usize,
    batch: usize,
) {
    let hub = broker(1000);
    let channels = vec!["room:lobby".to_string()];
    let subscribers: Vec<Arc<Subscriber>> = (0..subs)
        .map(|i| Arc::new(Subscriber::new(i as u64, batch.max(1) * 4)))
        .collect();
    for s in &subscribers {
        rt.block_on(hub.subscribe(s, &channels, &Resume::Live))
            .expect("subscribe");
    }
    let events: Vec<Event> = (0..batch).map(|i| message(&channels[0], i)).collect();
    let mut sink = Vec::with_capacity(batch);
    let mut drain = |expected: usize| {
        for s in &subscribers {
            sink.clear();
            s.drain_into(&mut sink);
            assert_eq!(sink.len(), expected, "a subscriber missed events");
        }
    };

    // Once before measuring: every subscriber gets the whole batch.
    let report = rt.block_on(hub.publish(events.clone())).expect("publish");
    assert_eq!(report.published, batch);
    drain(batch);

    g.throughput(Throughput::Elements((subs * batch) as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let input = events.clone();
                let start = Instant::now();
                let report = rt.block_on(hub.publish(input));
                timed += start.elapsed();
                black_box(report.expect("publish"));
                drain(batch);
            }
            timed
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let rt = runtime();
    let mut g = group(c, "fan_out");
    fan_out_case(&mut g, &rt, "1_event_to_10k_subscribers", 10_000, 1);
    fan_out_case(&mut g, &rt, "100_event_batch_to_1k_subscribers", 1_000, 100);
    g.finish();
}

/// The metrics side of each delivery, as the stream engine counts a batch
/// it wrote: per delivery, one frame alone and in a backlog of 64.
fn delivery_accounting(c: &mut Criterion) {
    let rt = runtime();
    let metrics = Metrics::new();
    let hub = broker(64);
    let sub = Arc::new(Subscriber::new(1, 128));
    rt.block_on(hub.subscribe(&sub, &["room:lobby".to_string()], &Resume::Live))
        .expect("subscribe");
    rt.block_on(hub.publish((0..64).map(|i| message("room:lobby", i)).collect()))
        .expect("publish");
    let mut batch: Vec<Delivery> = Vec::new();
    sub.drain_into(&mut batch);
    assert_eq!(batch.len(), 64);
    let before = metrics.delivered.get();
    count_written(&batch, &metrics);
    assert_eq!(
        metrics.delivered.get() - before,
        64,
        "every delivery is counted"
    );

    let mut g = group(c, "delivery");
    g.throughput(Throughput::Elements(1));
    g.bench_function("count_1_frame", |b| {
        b.iter(|| count_written(black_box(&batch[..1]), &metrics))
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("count_64_frame_backlog", |b| {
        b.iter(|| count_written(black_box(&batch), &metrics))
    });
    g.finish();
}

/// One event to 1,000 subscribers, then each drains its queue and counts
/// what it would write: the whole per-delivery path except the socket.
fn delivery_path(c: &mut Criterion) {
    const SUBS: usize = 1000;
    let rt = runtime();
    let hub = broker(100);
    let metrics = Metrics::new();
    let channels = vec!["room:lobby".to_string()];
    let subscribers: Vec<Arc<Subscriber>> = (0..SUBS)
        .map(|i| Arc::new(Subscriber::new(i as u64, 8)))
        .collect();
    for s in &subscribers {
        rt.block_on(hub.subscribe(s, &channels, &Resume::Live))
            .expect("subscribe");
    }
    let event = vec![message(&channels[0], 1)];
    let mut batch: Vec<Delivery> = Vec::with_capacity(4);
    let deliver = |batch: &mut Vec<Delivery>| {
        rt.block_on(hub.publish(event.clone())).expect("publish");
        let mut n = 0;
        for s in &subscribers {
            batch.clear();
            s.drain_into(batch);
            n += batch.len();
            count_written(batch, &metrics);
        }
        n
    };
    assert_eq!(deliver(&mut batch), SUBS, "every subscriber got the event");

    let mut g = group(c, "delivery");
    g.throughput(Throughput::Elements(SUBS as u64));
    g.bench_function("publish_offer_drain_count_1k", |b| {
        b.iter(|| deliver(&mut batch))
    });
    g.finish();
}

/// What a client resuming after `after` on `channels` is sent.
fn resume(rt: &Runtime, hub: &MemoryBroker, channels: &[String], after: &str) -> Replay {
    let sub = Arc::new(Subscriber::new(1, 1 << 20));
    let replay = rt
        .block_on(hub.subscribe(&sub, channels, &Resume::After(after.to_string())))
        .expect("subscribe");
    hub.unsubscribe(&sub, channels);
    replay
}

/// A resume from the middle of full histories: what a reconnecting client costs.
fn history_case(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, n_channels: usize) {
    const PER_CHANNEL: usize = 1000;
    let hub = broker(PER_CHANNEL);
    let channels: Vec<String> = (0..n_channels).map(|i| format!("orders:{i}")).collect();
    // Interleaved, so a multi-channel replay has to merge by cursor.
    let events: Vec<Event> = (0..PER_CHANNEL * n_channels)
        .map(|i| message(&channels[i % n_channels], i))
        .collect();
    rt.block_on(hub.publish(events)).expect("publish");
    let stats = hub.stats();
    assert_eq!(stats.history_events, PER_CHANNEL * n_channels);
    let (epoch, head) = cursor::parse(&stats.cursor).expect("broker cursor");
    let missed = PER_CHANNEL * n_channels / 2;
    let after = cursor::format(epoch, head - missed as u64);

    let replay = resume(rt, &hub, &channels, &after);
    assert!(
        replay.reset.is_none(),
        "resume point should still be in history"
    );
    assert_eq!(replay.frames.len(), missed);
    assert!(replay.frames.windows(2).all(|w| w[0].seq < w[1].seq));

    g.throughput(Throughput::Elements(missed as u64));
    g.bench_function(name, |b| {
        b.iter(|| resume(rt, &hub, black_box(&channels), black_box(&after)))
    });
}

fn history(c: &mut Criterion) {
    let rt = runtime();
    let mut g = group(c, "history_replay");
    history_case(&mut g, &rt, "1_channel_1000_resume_middle", 1);
    history_case(&mut g, &rt, "3_channels_1000_each_resume_middle", 3);
    g.finish();
}

/// 50 routes: static, `{param}` sse routes, catch-alls, and method/host-narrowed ones.
fn routes_yaml() -> String {
    let mut y = String::from(
        "upstreams:\n  app: { servers: [\"127.0.0.1:3000\"] }\n  legacy: { servers: [\"127.0.0.1:3001\", \"127.0.0.1:3002\"] }\nroutes:\n",
    );
    for i in 0..20 {
        let _ = writeln!(y, "  - {{ path: /static/page{i}, proxy: app }}");
    }
    for i in 0..14 {
        let _ = writeln!(
            y,
            "  - {{ path: \"/events/t{i}/{{id}}\", sse: {{ channels: [\"t{i}:{{id}}\"] }} }}"
        );
    }
    for i in 0..10 {
        let _ = writeln!(y, "  - {{ path: \"/api/v{i}/{{*rest}}\", proxy: legacy }}");
    }
    y.push_str("  - { path: /api/v1/status, proxy: app }\n");
    for i in 0..5 {
        let _ = writeln!(
            y,
            "  - {{ path: /hooks/h{i}, proxy: app, methods: [POST], host: example.com }}"
        );
    }
    y
}

fn route_matching(c: &mut Criterion) {
    let text = routes_yaml();
    let cfg = match load_str(&text, Path::new("bench.yaml"), &|_| None) {
        Ok(cfg) => cfg,
        Err(e) => panic!("bench config does not load:\n{e}\n{text}"),
    };
    assert_eq!(cfg.routes.len(), 50);
    let router = &cfg.router;
    let cases = [
        ("static", Method::GET, None, "/static/page13"),
        ("param", Method::GET, None, "/events/t7/order-42"),
        ("catch_all", Method::GET, None, "/api/v3/users/42/orders"),
        (
            "static_beats_catch_all",
            Method::GET,
            None,
            "/api/v1/status",
        ),
        (
            "method_and_host",
            Method::POST,
            Some("Example.com:8080"),
            "/hooks/h3",
        ),
        ("miss", Method::GET, None, "/nowhere/at/all"),
    ];
    for (name, method, host, path) in &cases {
        let found = router.lookup(method, host.map(host_only).as_deref(), path);
        assert_eq!(found.is_ok(), *name != "miss", "{name}: {path}");
    }

    let mut g = group(c, "route_match");
    for (name, method, host, path) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let host = black_box(*host).map(host_only);
                router.lookup(black_box(method), host.as_deref(), black_box(path))
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    frame_encoding,
    fan_out,
    delivery_accounting,
    delivery_path,
    history,
    route_matching
);
criterion_main!(benches);
