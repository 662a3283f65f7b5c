#!/usr/bin/env python3
"""History cost: gateway memory per stored event.

Publishes CHANNELS channels x EVENTS events of PAYLOAD bytes (batches of
BATCH items through the admin API) to a fresh gateway whose history keeps
EVENTS per channel and nobody subscribes, then reads the gateway's PSS
(/proc/PID/smaps_rollup) before and after; prints one line per run,
"ssegate history RUN {json}", with bytes per stored event and the overhead
over the payload.

Usage: history.py ADMIN_URL PID RUN [CHANNELS EVENTS PAYLOAD BATCH]
(benches/history.sh starts the gateway and runs it.)
"""
import http.client
import json
import sys
import time
import urllib.parse


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise SystemExit("no Pss in smaps_rollup")


def stats(conn):
    conn.request("GET", "/stats")
    r = conn.getresponse()
    return json.loads(r.read())


def main():
    admin, pid, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    channels, events, payload, batch = (int(x) for x in (sys.argv[4:8] + ["100000", "10", "200", "1000"][len(sys.argv[4:8]):]))
    u = urllib.parse.urlparse(admin)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    time.sleep(1)
    before = pss_kb(pid)
    data = "x" * payload
    items, published, t0 = [], 0, time.time()
    # Round-robin over channels, as events arrive in real life: every
    # channel's history grows one event at a time.
    for e in range(events):
        for c in range(channels):
            items.append({"channel": f"h{c}", "data": data})
            if len(items) == batch:
                body = json.dumps({"items": items})
                conn.request("POST", "/publish", body, {"content-type": "application/json"})
                r = conn.getresponse()
                answer = r.read()
                if r.status != 200:
                    raise SystemExit(f"publish answered {r.status}: {answer[:200]!r}")
                published += len(items)
                items = []
    if items:
        conn.request("POST", "/publish", json.dumps({"items": items}), {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        published += len(items)
    took = time.time() - t0
    # jemalloc hands back the pages the publishing itself used (request
    # bodies, parsed batches) after its decay time (10 s): measure after it.
    time.sleep(15)
    after = pss_kb(pid)
    st = stats(conn)
    hub = st.get("hub", st)
    stored = hub.get("history_events")
    per_event = (after - before) * 1024 / max(stored or published, 1)
    print(
        f"ssegate history {run} "
        + json.dumps(
            {
                "channels": channels,
                "events_per_channel": events,
                "payload_bytes": payload,
                "published": published,
                "history_events": stored,
                "hub_channels": hub.get("channels"),
                "publish_s": round(took, 2),
                "pss_before_kb": before,
                "pss_after_kb": after,
                "bytes_per_event": round(per_event, 1),
                "overhead_per_event": round(per_event - payload, 1),
            }
        ),
        flush=True,
    )


main()
