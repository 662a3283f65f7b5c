//! The dashboard at `/` on the admin listener, in a real headless Chromium
//! driven over the DevTools protocol: it loads and goes live, its charts
//! change while events are published, it lists the busiest channels,
//! recent events and pollers, and its form publishes a test event (with
//! the admin token it asks for). A screenshot is kept in
//! `target/tmp/dashboard.png`. Fails when Chromium is missing and `CI` is
//! set (`apt-get install -y chromium`).

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::browser::{chromium_or_skip, launch, Page};
use support::*;

const TOKEN: &str = "dash-token";

async fn publish(gw: &Gateway, channel: &str, data: Value) {
    let r = client()
        .post(gw.admin("/publish"))
        .bearer_auth(TOKEN)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_dashboard_draws_live_charts_lists_the_hub_and_publishes() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    // A legacy endpoint that changes on each poll, for the pollers table.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let legacy = listener.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let (_stop, _) = serve_in_thread(listener, move || {
        axum::Router::new().route(
            "/n",
            axum::routing::get(move || {
                let n = n.clone();
                async move { format!("{}", n.fetch_add(1, Ordering::Relaxed)) }
            }),
        )
    });
    let gw = Gateway::start_with_env(
        &format!(
            "admin:
  token_env: DASH_TOKEN
upstreams:
  legacy: {{ servers: [\"{legacy}\"] }}
routes:
  - path: /events/{{name}}
    sse: {{ channels: [\"room:{{name}}\"] }}
  - path: /ticks
    sse:
      poll: {{ upstream: legacy, path: /n, interval: 500ms }}
webhooks:
  - path: /hooks/orders
    channel: \"room:{{/room}}\"
"
        ),
        &[("DASH_TOKEN", TOKEN)],
    );
    let mut listener_a = Sse::connect(&gw.url("/events/dash")).await;
    let _ticks = Sse::connect(&gw.url("/ticks")).await;
    let browser = launch(
        &bin,
        &gw.admin("/"),
        &["--remote-debugging-port=0", "--window-size=1280,1500"],
    );
    let mut page = Page::attach(&browser).await;

    // It loads and goes live.
    page.until(
        "the live state and two stats frames",
        "document.getElementById('state').textContent === 'live' && window.dashboard.frames >= 2",
        Duration::from_secs(30),
    )
    .await;
    let before = page
        .eval("document.getElementById('chart-events').toDataURL()")
        .await;

    // The charts change while events are published: ~50 a second here,
    // well above the poller's own two a second.
    let busy = "window.dashboard.series.events.some(v => v >= 20) \
                && window.dashboard.series.deliveries.some(v => v >= 20) \
                && window.dashboard.series.p50.some(v => v !== null)";
    for i in 0..25 {
        for j in 0..10 {
            publish(&gw, "room:dash", json!({"i": i, "j": j})).await;
        }
        if page.try_eval(busy).await == Ok(json!(true)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page.until(
        "events/s and deliveries/s of the burst",
        busy,
        Duration::from_secs(10),
    )
    .await;
    let after = page
        .eval("document.getElementById('chart-events').toDataURL()")
        .await;
    assert_ne!(
        before, after,
        "the events chart was redrawn with the new points"
    );
    assert_ne!(
        page.eval("document.getElementById('now-events').textContent")
            .await,
        json!("–")
    );

    // The hub as the page lists it.
    page.until(
        "room:dash among the busiest channels and in the recent events",
        "document.getElementById('busiest').innerText.includes('room:dash') && document.getElementById('recent').innerText.includes('room:dash')",
        Duration::from_secs(10),
    )
    .await;
    page.until(
        "the poller of /ticks",
        "document.getElementById('pollers').innerText.includes('/ticks') && document.getElementById('pollers').innerText.includes('ok')",
        Duration::from_secs(10),
    )
    .await;
    page.until(
        "the webhook and the stream routes",
        "document.getElementById('webhooks').innerText.includes('/hooks/orders') && document.getElementById('routes').innerText.includes('/events/{name}')",
        Duration::from_secs(5),
    )
    .await;

    // The form asks for the token, refuses a wrong one, publishes with the right one.
    assert_eq!(
        page.eval("document.getElementById('pub-token').hidden")
            .await,
        json!(false)
    );
    let fill = |token: &str| {
        format!(
            "(() => {{
                document.getElementById('pub-channel').value = 'room:dash';
                document.getElementById('pub-event').value = 'from-form';
                document.getElementById('pub-data').value = '{{\"x\": 1}}';
                document.getElementById('pub-token').value = '{token}';
                document.getElementById('pub-result').textContent = '';
                document.querySelector('#publish button').click();
                return true;
            }})()"
        )
    };
    page.eval(&fill("wrong")).await;
    page.until(
        "the refusal of a wrong token",
        "document.getElementById('pub-result').textContent.startsWith('401')",
        Duration::from_secs(10),
    )
    .await;
    page.eval(&fill(TOKEN)).await;
    page.until(
        "the form's publish result",
        "document.getElementById('pub-result').textContent.startsWith('published 1')",
        Duration::from_secs(10),
    )
    .await;
    let from_form = loop {
        let e = listener_a.next().await;
        if e.event == "from-form" {
            break e;
        }
    };
    assert_eq!(from_form.data, r#"{"x":1}"#);

    // A screenshot, kept with the build's test artifacts.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    page.screenshot(&path).await;
    eprintln!("dashboard screenshot: {}", path.display());
}
