#!/usr/bin/env python3
"""Medians of benches/compare.sh output (one line per run: system scenario run JSON), with ratios.

Usage: summarize.py RESULTS [A B]   (ratio A/B; default ssegate/nchan)"""
import json
import re
import statistics
import sys
from collections import defaultdict

rows = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
A, B = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("ssegate", "nchan")
for line in open(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin"):
    m = re.match(r"^(\S+) (\S+)(?: \d+)? (\{.*)$", line.strip())
    if not m:
        continue
    system, scenario, js = m.groups()
    try:
        d = json.loads(js)
    except ValueError:
        continue
    r = rows[scenario][system]
    srv = d.get("server") or {}
    if "req_per_s" in d:
        r["req/s"].append(float(d["req_per_s"]))
    if d.get("mode") == "idle":
        r["PSS bytes/conn after connect"].append(srv.get("per_conn_pss_bytes"))
        r["PSS bytes/conn after hold"].append(srv.get("per_conn_pss_bytes_after_hold"))
        r["all streaming (s)"].append(d.get("connect_all_streaming_s"))
        r["idle CPU % (hold)"].append((srv.get("cpu_pct") or {}).get("hold"))
    if d.get("mode") in ("fanout", "channels"):
        lat = d.get("latency_ms") or {}
        last = d.get("last_subscriber_latency_ms") or {}
        r["p50 ms"].append(lat.get("p50"))
        r["p99 ms"].append(lat.get("p99"))
        if last:
            r["last-subscriber p99 ms"].append(last.get("p99"))
            r["last-subscriber max ms"].append(last.get("max"))
        r["deliveries/s"].append(d.get("deliveries_per_s"))
        r["publish events/s"].append(d.get("publish_rate_eps"))
        r["missing"].append(d.get("missing"))
        r["duplicates"].append(d.get("duplicates"))

def med(v):
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None

for scenario, systems in rows.items():
    print(f"\n### {scenario}\n")
    metrics = sorted({m for s in systems.values() for m in s})
    print(f"| metric | {A} | {B} | ratio {A}/{B} | runs |")
    print("|---|---|---|---|---|")
    for m in metrics:
        a, b = med(systems.get(A, {}).get(m, [])), med(systems.get(B, {}).get(m, []))
        ratio = f"{a / b:.2f}" if a is not None and b not in (None, 0) else "–"
        fmt = lambda x: "–" if x is None else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}")
        n = max(len(systems.get(A, {}).get(m, [])), len(systems.get(B, {}).get(m, [])))
        print(f"| {m} | {fmt(a)} | {fmt(b)} | {ratio} | {n} |")
