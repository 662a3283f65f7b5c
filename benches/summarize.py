#!/usr/bin/env python3
"""Medians of the benches/*.sh results (one line per run: system scenario run JSON),
with ratios A/B, as Markdown tables.

Usage: summarize.py RESULTS [A B]   (ratio A/B; default ssegate/nchan)

Reads the output of compare.sh, tls-compare.sh, storm.sh, multi.sh,
history.sh and redis-vs-memory.sh. A system with no counterpart (e.g. ssegate-3x) gets its
own column and no ratio. Runs with failed subscribers, 5xx answers, missing
events or a loadgen error are listed under the table: a median must not hide them.
"""
import json
import re
import statistics
import sys
from collections import defaultdict

rows = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
warnings = []
A, B = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("ssegate", "nchan")


def put(r, name, value):
    r[name].append(value)


def delivery(r, d):
    lat = d.get("latency_ms") or {}
    last = d.get("last_subscriber_latency_ms") or {}
    put(r, "p50 ms", lat.get("p50"))
    put(r, "p99 ms", lat.get("p99"))
    if last:
        put(r, "last-subscriber p99 ms", last.get("p99"))
        put(r, "last-subscriber max ms", last.get("max"))
    put(r, "deliveries/s", d.get("deliveries_per_s"))
    put(r, "publish events/s", d.get("publish_rate_eps"))
    put(r, "missing", d.get("missing"))
    put(r, "duplicates", d.get("duplicates"))


def storm(r, st):
    put(r, "storm: all streaming again (s)", st.get("all_streaming_again_s"))
    q = st.get("reconnect_ms") or {}
    put(r, "storm: time to stream p50 ms", q.get("p50"))
    put(r, "storm: time to stream p99 ms", q.get("p99"))
    put(r, "storm: gave up", st.get("gave_up"))
    put(r, "storm: 5xx answers", st.get("status_5xx"))
    put(r, "storm: network errors", st.get("network_errors"))
    put(r, "storm: attempts with Last-Event-ID", st.get("with_last_event_id"))
    put(r, "storm: deferred (retry-only) answers", st.get("deferred"))
    sv = st.get("server") or {}
    if sv:
        put(r, "storm: server peak RSS MB", (sv.get("rss_peak_kb") or 0) / 1024)
        put(r, "storm: server CPU avg % (with --after)", sv.get("cpu_pct_avg"))
        put(r, "storm: server CPU peak %", sv.get("cpu_pct_peak"))
    put(r, "storm: server CPU % drop→all streaming", st.get("server_cpu_pct_storm"))
    put(r, "storm: loadgen CPU %", st.get("client_cpu_pct"))


def redis(r, rd):
    put(r, "redis commands/event", rd.get("commands_per_event"))
    put(r, "redis CPU %", rd.get("cpu_pct"))


for line in open(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin"):
    m = re.match(r"^(\S+) (\S+)(?: (\d+))? (\{.*)$", line.strip())
    if not m:
        continue
    system, scenario, run, js = m.groups()
    try:
        d = json.loads(js)
    except ValueError:
        warnings.append(f"{system} {scenario} run {run}: unreadable result line")
        continue
    if "error" in d and not d.get("mode"):
        warnings.append(f"{system} {scenario} run {run}: {d['error']}")
        continue
    r = rows[scenario][system]
    if "load1" in d:
        put(r, "load average (1 min, end of run)", d["load1"])
    srv = d.get("server") or {}
    mode = d.get("mode")
    if "req_per_s" in d:
        put(r, "req/s", float(d["req_per_s"]))
    if mode in ("idle", "fanout", "channels", "storm"):
        put(r, "streaming", d.get("subscribers_streaming"))
        put(r, "all streaming (s)", d.get("connect_all_streaming_s"))
        if d.get("h2_connections"):
            put(r, "h2 connections", d.get("h2_connections"))
        failed = d.get("subscribers_failed") or 0
        if failed:
            warnings.append(
                f"{system} {scenario} run {run}: {failed} subscribers failed "
                f"(statuses {d.get('subscribe_statuses')}, network errors {d.get('subscribe_network_errors')})"
            )
    if mode == "idle":
        put(r, "PSS bytes/conn after connect", srv.get("per_conn_pss_bytes"))
        put(r, "PSS bytes/conn after hold", srv.get("per_conn_pss_bytes_after_hold"))
        put(r, "idle CPU % (hold)", (srv.get("cpu_pct") or {}).get("hold"))
        put(r, "heartbeat frames per stream (hold)", d.get("hold_frames_per_stream"))
    if mode in ("fanout", "channels"):
        delivery(r, d)
        if d.get("missing"):
            warnings.append(f"{system} {scenario} run {run}: {d['missing']} deliveries missing")
    if mode == "storm":
        st = d.get("storm") or {}
        storm(r, st)
        if st.get("status_5xx"):
            warnings.append(
                f"{system} {scenario} run {run}: {st['status_5xx']} 5xx ANSWERS {st.get('statuses')}"
            )
        if st.get("all_streaming_again_s") is None:
            warnings.append(
                f"{system} {scenario} run {run}: not all streaming again "
                f"({st.get('streaming_again')} streaming, {st.get('gave_up')} gave up)"
            )
    if "bytes_per_event" in d:
        put(r, "history: PSS bytes per stored event", d.get("bytes_per_event"))
        put(r, "history: overhead over the payload (B)", d.get("overhead_per_event"))
        put(r, "history: events stored", d.get("history_events"))
    if d.get("redis"):
        redis(r, d["redis"])
    if d.get("procs", 1) > 1:
        put(r, "loadgen processes", d.get("procs"))


def med(v):
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def fmt(x):
    return "–" if x is None else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}")


for scenario, systems in rows.items():
    print(f"\n### {scenario}\n")
    names = [s for s in (A, B) if s in systems] or sorted(systems)
    others = [s for s in sorted(systems) if s not in names]
    cols = names + others
    metrics = sorted({m for s in systems.values() for m in s})
    pair = A in systems and B in systems
    head = " | ".join(cols) + (f" | ratio {A}/{B}" if pair else "")
    print(f"| metric | {head} | runs |")
    print("|---" * (len(cols) + (2 if pair else 1) + 1) + "|")
    for m in metrics:
        vals = [med(systems[c].get(m, [])) for c in cols]
        if all(v is None for v in vals):
            continue
        cells = [fmt(v) for v in vals]
        if pair:
            a, b = med(systems[A].get(m, [])), med(systems[B].get(m, []))
            cells.append(f"{a / b:.2f}" if a is not None and b not in (None, 0) else "–")
        n = max(len(systems[c].get(m, [])) for c in cols)
        print(f"| {m} | {' | '.join(cells)} | {n} |")

if warnings:
    print("\n**Look at these runs** (not hidden by the medians):\n")
    for w in warnings:
        print(f"- {w}")
