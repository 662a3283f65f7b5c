//! What `/stats` shows and the dashboard at `/` draws: computed once per
//! tick for every viewer and offered to them on the dashboard's feed (the
//! stream engine over a `hub::Feed`). A viewer's first frame carries the
//! last minutes (`metrics::Timeline`), later ones the newest second only.
//!
//! Nothing here runs per event: the charts come from counters sampled once
//! a second, the busiest channels from one pass over the hub's channels per
//! tick while someone watches, the tail of recent events from a ring the
//! brokers fill only while someone watches.

use crate::gateway::{Action, Gateway, Site};
use crate::wire;
use prometheus::core::Collector;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// How often the dashboard's stats stream updates.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// The page: one self-contained file, no build step, nothing fetched from elsewhere.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// Channels listed as the busiest.
const BUSIEST: usize = 10;

/// What `/stats` shows.
pub(crate) fn stats(gw: &Gateway) -> Value {
    let m = &gw.metrics;
    let site = gw.site();
    let routes: Map<String, Value> = site
        .routes()
        .filter(|r| matches!(r.action, Action::Sse(_) | Action::Grip(..)))
        .map(|r| {
            let label = [r.label()];
            let kind = if r.is_sse() { "sse" } else { "grip" };
            let open = m.connections.with_label_values(&label).get();
            let opened = m.connections_opened.with_label_values(&label).get();
            (
                r.label().to_string(),
                json!({ "kind": kind, "open": open, "opened": opened }),
            )
        })
        .collect();
    json!({
        "build": { "version": env!("CARGO_PKG_VERSION"), "revision": crate::metrics::revision() },
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "connections": gw.streams.limiter.open(),
        "routes": routes,
        "hub": gw.hub.stats(),
        "events": {
            "published": m.published.get(),
            "duplicates": m.duplicates.get(),
            "delivered": m.delivered.get(),
            "slow_client_disconnects": m.slow_disconnects.get(),
        },
        "busiest": gw.hub.busiest(BUSIEST),
        "recent": gw.hub.tail().map(|t| t.recent()).unwrap_or_default(),
        "pollers": gw.pollers.list(),
        "webhooks": webhook_outcomes(gw, &site),
        "publish_needs_token": site.config.admin.token.is_some(),
        "point": m.timeline.latest(),
        "draining": gw.streams.shutdown.is_draining(),
        "config": {
            "source": site.config.source.display().to_string(),
            "digest": site.config.digest,
            "loaded_at": humantime::format_rfc3339_seconds(site.loaded).to_string(),
        },
    })
}

/// Requests per webhook path and outcome (every configured path, even idle).
fn webhook_outcomes(gw: &Gateway, site: &Site) -> Map<String, Value> {
    let mut out: Map<String, Value> = site
        .config
        .webhooks
        .iter()
        .map(|h| (h.path.clone(), json!({})))
        .collect();
    for family in gw.metrics.webhooks.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            let (Some(path), Some(outcome)) = (label("path"), label("outcome")) else {
                continue;
            };
            let n = metric.get_counter().get_value();
            if let Some(Value::Object(by)) = out.get_mut(&path) {
                by.insert(outcome, json!(n as u64));
            }
        }
    }
    out
}

/// The `stats` event; `history`: with the last minutes, for a new viewer.
pub(crate) fn frame(gw: &Gateway, history: bool) -> bytes::Bytes {
    let mut s = stats(gw);
    if history {
        s["timeline"] = json!(gw.metrics.timeline.points());
    }
    // ok: `stats` is a name without CR or LF.
    wire::encode(None, Some("stats"), &s.to_string()).unwrap_or_default()
}

/// Once a tick: sample the timeline (always, so the charts have a past),
/// and offer the stats to the viewers, computed once for all of them.
pub(crate) async fn feed(gw: &Gateway) {
    let mut t = tokio::time::interval(TICK);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        gw.metrics
            .timeline
            .sample(&gw.metrics, gw.streams.limiter.open());
        let watched = !gw.dashboard.is_empty();
        if let Some(tail) = gw.hub.tail() {
            tail.watch(watched);
        }
        if watched {
            gw.dashboard.offer(frame(gw, false), &gw.metrics);
        }
    }
}
