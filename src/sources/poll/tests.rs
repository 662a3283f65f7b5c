//! The registry's life cycle on tokio's paused clock: a crowd shares one
//! poller, linger, caps, backoff.
//! Compiled only under `#[cfg(test)]` (see `mod tests` in the parent).

use super::*;
use crate::config::{PollEvents, PollScope, Upstream};
use crate::hub::memory::MemoryBroker;
use crate::template::Template;

fn poll_route(port: u16) -> Arc<PollRoute> {
    poll_route_with(port, |_| {})
}

fn poll_route_with(port: u16, change: impl FnOnce(&mut Poll)) -> Arc<PollRoute> {
    let mut poll = Poll {
        upstream: "app".into(),
        path: Template::parse("/p").unwrap(),
        catch_all: None,
        method: http::Method::GET,
        headers: vec![],
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        linger: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_body: 1024,
        diff: PollDiff::Body,
        events: PollEvents::default(),
        scope: PollScope::Shared,
        forward_headers: vec![],
        initial: true,
        error_event: None,
        max_pollers: None,
    };
    change(&mut poll);
    let pool = Pool::new(Upstream {
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        fail_timeout: Duration::from_millis(10),
        ..Upstream::fixed("app", vec![([127, 0, 0, 1], port).into()])
    });
    Arc::new(PollRoute {
        label: "/p".into(),
        poll,
        pool: Arc::new(pool),
        burst_limit: 4,
    })
}

/// A port nothing listens on: every poll fails fast.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pollers() -> (Arc<Pollers>, Arc<Metrics>) {
    pollers_capped(0)
}

fn pollers_capped(max_total: usize) -> (Arc<Pollers>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(MemoryBroker::new(
        10,
        Duration::from_secs(60),
        metrics.clone(),
    ));
    (
        Pollers::new(
            hub,
            metrics.clone(),
            Arc::new(Client::new()),
            None,
            max_total,
        ),
        metrics,
    )
}

fn target_of(route: &PollRoute) -> Target {
    let headers = http::HeaderMap::new();
    target(
        &crate::values::RequestValues::new(&[], None, &headers),
        0,
        &route.poll,
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_crowd_starts_one_poller_that_stops_after_linger() {
    let route = poll_route(closed_port());
    let (pollers, metrics) = pollers();
    let leases: Vec<Lease> = (0..100)
        .map(|_| pollers.acquire(target_of(&route), &route).unwrap())
        .collect();
    assert_eq!(pollers.active(), 1);
    assert_eq!(metrics.pollers.get(), 1);
    assert!(leases.iter().all(|l| l.channel() == leases[0].channel()));
    // The first poll fails: a waiting subscriber gets no snapshot, and does not hang.
    assert!(leases[0].snapshot(Duration::from_secs(5)).await.is_none());
    // Subscribed for longer than `linger`: the whole linger is earned.
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(leases);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(pollers.active(), 1, "lingers");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(pollers.active(), 0, "stopped `linger` after the last lease");
    tokio::task::yield_now().await;
    assert_eq!(metrics.pollers.get(), 0);
    assert!(metrics.poll_errors.with_label_values(&["/p"]).get() >= 1);
}

/// The target of a route whose poll path is `/p/{query.k}`.
fn keyed(route: &PollRoute, k: &str) -> Target {
    let headers = http::HeaderMap::new();
    let query = format!("k={k}");
    target(
        &crate::values::RequestValues::new(&[], Some(&query), &headers),
        0,
        &route.poll,
    )
    .unwrap()
}

fn keyed_route(change: impl FnOnce(&mut Poll)) -> Arc<PollRoute> {
    poll_route_with(closed_port(), |p| {
        p.path = Template::parse("/p/{query.k}").unwrap();
        change(p);
    })
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_leaves_at_once_does_not_buy_the_whole_linger() {
    let route = poll_route_with(closed_port(), |p| p.linger = Duration::from_secs(30));
    let (pollers, _) = pollers();
    drop(pollers.acquire(target_of(&route), &route).unwrap());
    let left = Instant::now();
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(pollers.active(), 1, "lingers one interval (50ms)");
    while pollers.active() > 0 {
        assert!(left.elapsed() < Duration::from_secs(1), "lingers on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn over_a_cap_a_lingering_poller_makes_room_else_a_new_one_is_refused() {
    let route = keyed_route(|_| {});
    let (pollers, _) = pollers_capped(2);
    let a = pollers.acquire(keyed(&route, "a"), &route).unwrap();
    let b = pollers.acquire(keyed(&route, "b"), &route).unwrap();
    assert_eq!(
        pollers.acquire(keyed(&route, "c"), &route).unwrap_err(),
        PollError::Full(Cap::Total(2))
    );
    // Joining a running poller is never refused.
    let _b2 = pollers.acquire(keyed(&route, "b"), &route).unwrap();
    drop(a);
    let c = pollers.acquire(keyed(&route, "c"), &route).unwrap();
    assert_eq!(pollers.active(), 2);
    let channels: Vec<String> = pollers.lock().keys().cloned().collect();
    assert!(channels.contains(&c.channel().to_string()));
    assert!(channels.contains(&b.channel().to_string()));

    let capped = keyed_route(|p| p.max_pollers = Some(1));
    let (pollers, _) = pollers_capped(0);
    let _x = pollers.acquire(keyed(&capped, "x"), &capped).unwrap();
    assert_eq!(
        pollers.acquire(keyed(&capped, "y"), &capped).unwrap_err(),
        PollError::Full(Cap::Route(1))
    );
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_instead_of_hammering() {
    let route = poll_route(closed_port());
    let (pollers, metrics) = pollers();
    let _lease = pollers.acquire(target_of(&route), &route).unwrap();
    // At a 50ms interval, 20 s of healthy polling would be 400 polls;
    // failing ones back off towards max_backoff (1 s): far fewer.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let polls = metrics.poll_requests.with_label_values(&["/p"]).get();
    assert!((10..=120).contains(&polls), "{polls} polls in 20 s");
}

#[test]
fn backoff_grows_to_the_cap_with_jitter() {
    let i = Duration::from_millis(100);
    let max = Duration::from_secs(2);
    for n in 1..30 {
        let ceiling = (i * 2u32.pow(n.min(20))).min(max);
        for _ in 0..50 {
            let d = backoff(i, max, n);
            assert!(
                d >= MIN_RETRY && d <= ceiling,
                "failure {n}: {d:?} above {ceiling:?}"
            );
        }
    }
    let spread: std::collections::HashSet<u128> =
        (0..50).map(|_| backoff(i, max, 10).as_micros()).collect();
    assert!(spread.len() > 10, "jitter must spread retries: {spread:?}");
}
