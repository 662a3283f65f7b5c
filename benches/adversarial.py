#!/usr/bin/env python3
"""The client side of benches/adversarial.sh (stdlib only, loopback only).
Each mode measures one figure against a running gateway and prints one JSON
line. Every wait has a deadline.

  hold   N streams, then EXTRA more (expected: refused with 429); the
         gateway's PSS with all held (against --base-pss-kb, taken before);
         then either close everything (figure 1) or, with --drain, wait for
         the gateway to close every stream after SIGTERM (figure 4): for each,
         a `retry:` after the prelude and before the end of the body.
  churn  ROUNDS x PER streams opened (each until its prelude) and closed;
         the gateway's RSS, PSS and descriptors before, after the first
         round and at the end, once its open-streams gauge is back to 0.
  slow   one reader and one client that never reads (small receive buffer)
         on one channel; EVENTS events published in `items` batches at
         --rate events/s; the reader must get all in order, the other must
         be cut as slow. (Unpaced, a reader descheduled on a loaded machine
         falls 1,024 events behind and is, rightly, cut too.)

  summary  medians of adversarial.sh's result lines (FILE), per binary.

Usage: adversarial.py MODE --pid PID [options]   (see --help)
       adversarial.py summary --results FILE
"""
import argparse
import errno
import http.client
import json
import os
import re
import selectors
import socket
import statistics
import threading
import time

IP_BIND_ADDRESS_NO_PORT = 24  # linux: the port is chosen at connect (4-tuple)
SOURCES = [f"127.0.0.{k}" for k in range(1, 9)]


# --- the gateway, from outside --------------------------------------------


def proc_mem(pid):
    """{rss_kb, pss_kb, pss_anon_kb} from /proc/PID/smaps_rollup. Pss_Anon is
    the gateway's own heap and stacks; Pss also moves when another process
    maps or unmaps the same binary."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Pss_Anon"):
                out[k.lower() + "_kb"] = int(v.split()[0])
    return out


def proc_cpu_s(pid):
    """utime + stime of PID in seconds, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(admin):
    """Sum per metric name over its labels, from /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    sums = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$", line)
        if m:
            sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
    return sums


def wait_gauge_zero(admin, name, deadline_s):
    """Seconds until metric NAME sums to 0, or None at the deadline."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if metrics(admin).get(name, 0) == 0:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.2)
    return None


# --- a client that holds many streams in one thread ------------------------


class Dechunk:
    """Incremental decoder of a chunked HTTP/1.1 body."""

    def __init__(self):
        self.buf = b""
        self.left = None  # bytes left in the current chunk (None: size line next)
        self.done = False

    def feed(self, data):
        self.buf += data
        out = bytearray()
        while not self.done:
            if self.left is None:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                self.left = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2 :]
                if self.left == 0:
                    self.done = True
                    break
            if len(self.buf) < self.left + 2:
                take = min(len(self.buf), self.left)
                out += self.buf[:take]
                self.buf = self.buf[take:]
                self.left -= take
                break
            out += self.buf[: self.left]
            self.buf = self.buf[self.left + 2 :]
            self.left = None
        return bytes(out)


class Conn:
    __slots__ = ("sock", "state", "raw", "status", "reason_body", "chunks", "body",
                 "clen", "streaming", "retries_after_prelude", "ended_at", "end_how")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"
        self.raw = b""
        self.status = None
        self.reason_body = b""
        self.chunks = None
        self.body = b""
        self.clen = None
        self.streaming = False  # prelude (`:ok`) received
        self.retries_after_prelude = 0
        self.ended_at = None
        self.end_how = None


class Streams:
    """Opens and holds SSE streams with non-blocking sockets on one selector."""

    def __init__(self, port, path, rcvbuf=0):
        self.port = port
        self.path = path
        self.rcvbuf = rcvbuf
        self.sel = selectors.DefaultSelector()
        self.n_opened = 0
        self.req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Accept: text/event-stream\r\n\r\n").encode()

    def _new(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if self.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.bind((SOURCES[self.n_opened % len(SOURCES)], 0))
        self.n_opened += 1
        s.setblocking(False)
        c = Conn(s)
        err = s.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            c.state, c.end_how = "done", f"connect:{errno.errorcode.get(err, err)}"
            s.close()
            return c
        self.sel.register(s, selectors.EVENT_WRITE, c)
        return c

    def _end(self, c, how):
        if c.state == "done":
            return
        c.state, c.end_how, c.ended_at = "done", how, time.time()
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _on_body(self, c, data):
        c.body += data
        if not c.streaming:
            if b"\n:ok\n" in c.body or c.body.startswith(b":ok\n"):
                c.streaming = True
                c.body = c.body[c.body.index(b":ok\n") + 4 :]
            return
        # after the prelude, keep only what may still hold an unfinished line
        lines = c.body.split(b"\n")
        c.body = lines.pop()
        c.retries_after_prelude += sum(1 for l in lines if l.startswith(b"retry:"))

    def _on_read(self, c):
        try:
            data = c.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            self._end(c, "reset")
            return
        except BlockingIOError:
            return
        if not data:
            self._end(c, "eof")
            return
        if c.state == "head":
            c.raw += data
            i = c.raw.find(b"\r\n\r\n")
            if i < 0:
                return
            head, rest = c.raw[:i].decode("latin-1"), c.raw[i + 4 :]
            c.raw = b""
            c.status = int(head.split(" ", 2)[1])
            hl = head.lower()
            if "transfer-encoding: chunked" in hl:
                c.chunks = Dechunk()
            m = re.search(r"content-length:\s*(\d+)", hl)
            c.clen = int(m.group(1)) if m else None
            c.state = "body"
            data = rest
        if c.state != "body" or not data:
            return
        if c.status != 200:
            c.reason_body += data
            if c.clen is not None and len(c.reason_body) >= c.clen:
                self._end(c, "answered")
            return
        if c.chunks is not None:
            data = c.chunks.feed(data)
            self._on_body(c, data)
            if c.chunks.done:
                self._end(c, "body-end")
        else:
            self._on_body(c, data)

    def _on_event(self, key, mask):
        c = key.data
        if c.state == "connect":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._end(c, f"connect:{errno.errorcode.get(err, err)}")
                return
            c.sock.send(self.req)
            c.state = "head"
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
        else:
            self._on_read(c)

    def poll(self, timeout):
        for key, mask in self.sel.select(timeout):
            self._on_event(key, mask)

    def open(self, n, deadline_s, concurrency=256):
        """Open N streams; return them once each streams, is refused or failed."""
        conns, t0 = [], time.monotonic()
        pending = lambda c: c.state != "done" and not (c.status == 200 and c.streaming)
        while time.monotonic() - t0 < deadline_s:
            inflight = sum(1 for c in conns[-2 * concurrency :] if pending(c))
            while len(conns) < n and inflight < concurrency:
                conns.append(self._new())
                inflight += 1
            if len(conns) == n and not any(pending(c) for c in conns):
                break
            self.poll(0.05)
        return conns

    def close_all(self, conns):
        for c in conns:
            self._end(c, "closed-by-client")


# --- modes -------------------------------------------------------------------


def mode_hold(a):
    base = proc_mem(a.pid)
    st = Streams(a.port, a.path)
    t0 = time.monotonic()
    held = st.open(a.n, a.deadline)
    connect_s = round(time.monotonic() - t0, 2)
    streaming = sum(1 for c in held if c.status == 200 and c.streaming)
    extra = st.open(a.extra, 30) if a.extra else []
    for _ in range(20):  # let refused ones finish their bodies
        st.poll(0.05)
    answers = {}
    for c in extra:
        key = f"{c.status} {c.reason_body.decode(errors='replace').strip()}" if c.status else c.end_how
        answers[key] = answers.get(key, 0) + 1
    time.sleep(a.settle)
    mem = proc_mem(a.pid)
    per = lambda k: round((mem[k] - base[k]) / max(streaming, 1), 2)
    r = {
        "streams": streaming, "connect_s": connect_s, "extra": answers,
        "idle": base, "held": mem, "fds": proc_fds(a.pid),
        "pss_per_stream_kb": per("pss_kb"), "pss_anon_per_stream_kb": per("pss_anon_kb"),
        "open_streams_gauge": metrics(a.admin).get("ssegate_connections"),
    }
    if a.hold_more:  # again after a heartbeat has been written to every stream
        t = time.monotonic()
        while time.monotonic() - t < a.hold_more:
            st.poll(0.1)
        later = proc_mem(a.pid)
        r["held_later"] = dict(later, after_s=a.hold_more,
                               still_open=sum(1 for c in held if c.state != "done"))
        r["pss_per_stream_kb_later"] = round((later["pss_kb"] - base["pss_kb"]) / max(streaming, 1), 2)
        r["pss_anon_per_stream_kb_later"] = round(
            (later["pss_anon_kb"] - base["pss_anon_kb"]) / max(streaming, 1), 2)
    if not a.drain:
        st.close_all(held + extra)
        print(json.dumps(r), flush=True)
        return
    # figure 4: the shell sends SIGTERM once it sees this file, and writes the
    # signal time (`date +%s%N`, wall clock ns) into it.
    with open(a.drain, "w") as f:
        f.write("ready\n")
    sig_ns = None
    cpu0 = cpu_last = proc_cpu_s(a.pid)
    t_wait = time.monotonic()
    while time.monotonic() - t_wait < a.deadline:
        st.poll(0.02)
        cpu_last = proc_cpu_s(a.pid) or cpu_last
        if sig_ns is None:
            with open(a.drain) as f:
                v = f.read().strip()
            if v.isdigit():
                sig_ns = int(v)
        if sig_ns is not None and all(c.state == "done" for c in held):
            break
    ends = [c.ended_at for c in held if c.ended_at is not None]
    r.update({
        "closed": len(ends),
        "closed_with_retry": sum(1 for c in held if c.ended_at and c.retries_after_prelude >= 1),
        "end_how": {h: sum(1 for c in held if c.end_how == h) for h in {c.end_how for c in held}},
        # the gateway's CPU from before the signal to its last sample (20 ms
        # apart or more): against the wall time, how much was waiting for a core
        "drain_cpu_s": round(cpu_last - cpu0, 2) if cpu0 is not None else None,
        "last_close_after_signal_s": round(max(ends) - sig_ns / 1e9, 3) if ends and sig_ns else None,
    })
    st.close_all(held + extra)
    print(json.dumps(r), flush=True)


def mode_churn(a):
    def snap():
        return dict(proc_mem(a.pid), fds=proc_fds(a.pid))

    st = Streams(a.port, a.path)
    r = {"before": snap(), "rounds": 0, "streamed": 0, "failed": 0}
    t0 = time.monotonic()
    for k in range(a.rounds):
        conns = st.open(a.per, a.deadline)
        ok = sum(1 for c in conns if c.status == 200 and c.streaming)
        r["streamed"] += ok
        r["failed"] += len(conns) - ok
        st.close_all(conns)
        r["rounds"] += 1
        if k == 0:
            r["gauge_zero_s_round1"] = wait_gauge_zero(a.admin, "ssegate_connections", 60)
            r["after_round1"] = snap()
        if (k + 1) % 10 == 0:  # the curve: a leak grows with every round
            r.setdefault("anon_kb_every_10_rounds", []).append(proc_mem(a.pid)["pss_anon_kb"])
    r["churn_s"] = round(time.monotonic() - t0, 1)
    r["gauge_zero_s"] = wait_gauge_zero(a.admin, "ssegate_connections", 60)
    time.sleep(a.settle)
    r["end"] = snap()
    m = metrics(a.admin)
    r["open_streams_gauge"] = m.get("ssegate_connections")
    r["opened_total"] = m.get("ssegate_connections_opened_total")
    print(json.dumps(r), flush=True)


def sse_reader(sock, out, stop):
    """Reads one stream: the `n` of each event's data, in arrival order."""
    dec, tail = Dechunk(), b""
    head, raw = None, b""
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data = sock.recv(262144)
        except socket.timeout:
            continue
        except OSError:
            out["end"] = "reset"
            return
        if not data:
            out["end"] = "eof"
            return
        if head is None:
            raw += data
            i = raw.find(b"\r\n\r\n")
            if i < 0:
                continue
            head, data = raw[:i], raw[i + 4 :]
            out["status"] = int(head.split(b" ", 2)[1])
        tail += dec.feed(data)
        lines = tail.split(b"\n")
        tail = lines.pop()
        for l in lines:
            if l.startswith(b"data: "):
                out["ns"].append(int(l[6:].split(b":", 1)[0]))
            elif l == b":ok":
                out["streaming"] = True
        if dec.done:
            out["end"] = "body-end"
            return


def mode_slow(a):
    req = (f"GET {a.path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
           "Accept: text/event-stream\r\n\r\n").encode()
    # the reader
    rd = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    rd.sendall(req)
    got = {"ns": [], "end": None, "status": None, "streaming": False}
    stop = threading.Event()
    th = threading.Thread(target=sse_reader, args=(rd, got, stop), daemon=True)
    th.start()
    # the client that never reads, with a small receive window
    nr = socket.socket()
    nr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    nr.connect(("127.0.0.1", a.port))
    nr.sendall(req)
    t0 = time.monotonic()
    while not got["streaming"] and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    time.sleep(0.3)  # the non-reader's prelude is in its (unread) buffer too
    m0 = metrics(a.admin)
    base_rss = proc_mem(a.pid)["rss_kb"]
    peak = {"rss_kb": base_rss}
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak["rss_kb"] = max(peak["rss_kb"], proc_mem(a.pid)["rss_kb"])
            time.sleep(0.1)

    sm = threading.Thread(target=sample, daemon=True)
    sm.start()
    pad = "x" * max(0, a.payload - 8)
    pub = http.client.HTTPConnection("127.0.0.1", a.admin, timeout=30)
    t_pub = time.monotonic()
    published, errors = 0, 0
    for start in range(0, a.events, a.batch):
        if a.rate > 0:  # paced: batch k leaves at k * batch / rate
            time.sleep(max(0.0, t_pub + start / a.rate - time.monotonic()))
        items = [{"channel": a.channel, "event": "e", "data": f"{i}:{pad}"}
                 for i in range(start, min(start + a.batch, a.events))]
        pub.request("POST", "/publish", body=json.dumps({"items": items}),
                    headers={"Content-Type": "application/json"})
        resp = pub.getresponse()
        body = resp.read()
        if resp.status == 200:
            published += json.loads(body).get("published", 0)
        else:
            errors += 1
    pub_s = time.monotonic() - t_pub
    t1 = time.monotonic()
    while len(got["ns"]) < a.events and got["end"] is None and time.monotonic() - t1 < a.deadline:
        time.sleep(0.05)
    sampling.set()
    sm.join()
    stop.set()
    th.join(2)
    ns = got["ns"]
    in_order = ns == list(range(len(ns)))
    # the non-reader: what reached it before the gateway cut it
    nr.settimeout(2)
    nr_bytes, nr_end = 0, "open"
    t2 = time.monotonic()
    while time.monotonic() - t2 < 10:
        try:
            d = nr.recv(262144)
        except socket.timeout:
            break
        except OSError:
            nr_end = "reset"
            break
        if not d:
            nr_end = "eof"
            break
        nr_bytes += len(d)
        if d.endswith(b"0\r\n\r\n"):
            nr_end = "body-end"
            break
    m1 = metrics(a.admin)
    end_rss = proc_mem(a.pid)["rss_kb"]
    rd.close()
    nr.close()
    print(json.dumps({
        "published": published, "rate": a.rate, "publish_errors": errors, "publish_s": round(pub_s, 2),
        "reader_got": len(ns), "reader_in_order": in_order,
        "reader_missing": a.events - len(set(ns)), "reader_dups": len(ns) - len(set(ns)),
        "reader_end": got["end"],
        "slow_disconnects": m1.get("ssegate_slow_client_disconnects_total", 0)
        - m0.get("ssegate_slow_client_disconnects_total", 0),
        "nonreader_end": nr_end, "nonreader_bytes": nr_bytes,
        "base_rss_kb": base_rss, "peak_rss_kb": peak["rss_kb"], "end_rss_kb": end_rss,
        "peak_growth_kb": peak["rss_kb"] - base_rss,
    }), flush=True)


# (label, scenario, path into the JSON); a path is keys joined by "."
SUMMARY = {
    "streams15k": ["streams", "connect_s", "idle.pss_kb", "held.pss_kb", "pss_per_stream_kb",
                   "pss_anon_per_stream_kb", "pss_per_stream_kb_later",
                   "pss_anon_per_stream_kb_later", "fds", "open_streams_gauge", "extra"],
    "churn": ["streamed", "failed", "churn_s", "before.rss_kb", "after_round1.rss_kb", "end.rss_kb",
              "before.pss_kb", "end.pss_kb", "before.pss_anon_kb", "after_round1.pss_anon_kb",
              "end.pss_anon_kb", "anon_kb_every_10_rounds", "before.fds", "end.fds",
              "gauge_zero_s", "open_streams_gauge"],
    "slow": ["published", "rate", "reader_got", "reader_in_order", "reader_missing", "reader_dups",
             "slow_disconnects", "nonreader_end", "nonreader_bytes", "publish_s", "base_rss_kb",
             "peak_rss_kb", "end_rss_kb", "peak_growth_kb"],
    "drain15k": ["streams", "exit_s", "exit_code", "closed", "closed_with_retry", "end_how",
                 "drain_cpu_s", "last_close_after_signal_s"],
}


def mode_summary(a):
    runs = {}
    for line in open(a.results):
        parts = line.split(" ", 3)
        if len(parts) < 4 or not parts[3].startswith("{"):
            continue
        label, sc, _, rest = parts
        load, _, res = rest.partition("} ")
        d = json.loads(res)
        d["load1"] = json.loads(load + "}")["load1_before"]
        runs.setdefault((sc, label), []).append(d)

    def get(d, path):
        for k in path.split("."):
            d = d.get(k) if isinstance(d, dict) else None
        return d

    for (sc, label), ds in runs.items():
        print(f"\n{label} {sc} ({len(ds)} runs)")
        for path in ["load1"] + SUMMARY.get(sc, []) + (["error"] if any("error" in d for d in ds) else []):
            vals = [get(d, path) for d in ds]
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
            med = statistics.median(nums) if len(nums) == len(vals) and nums else None
            shown = f"median {round(med, 3)}  " if med is not None else ""
            print(f"  {path:32} {shown}runs {json.dumps(vals)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["hold", "churn", "slow", "summary"])
    p.add_argument("--pid", type=int, help="the gateway's PID (memory, descriptors)")
    p.add_argument("--results", help="summary: adversarial.sh's output")
    p.add_argument("--port", type=int, default=18180)
    p.add_argument("--admin", type=int, default=19190)
    p.add_argument("--path", default="/events/adv")
    p.add_argument("--deadline", type=float, default=180, help="s, for each wait")
    p.add_argument("--settle", type=float, default=2, help="s before measuring memory")
    p.add_argument("--n", type=int, default=15000)
    p.add_argument("--extra", type=int, default=100)
    p.add_argument("--hold-more", type=float, default=0,
                   help="hold: s to hold on and measure again (past a heartbeat)")
    p.add_argument("--drain", default="", help="hold: handshake file for SIGTERM (figure 4)")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--per", type=int, default=1000)
    p.add_argument("--events", type=int, default=50000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--rate", type=float, default=10000, help="slow: events/s (0: unpaced)")
    p.add_argument("--channel", default="room:adv")
    p.add_argument("--rcvbuf", type=int, default=4096, help="slow: the non-reader's SO_RCVBUF")
    a = p.parse_args()
    if a.mode != "summary" and a.pid is None:
        p.error("--pid is required")
    {"summary": mode_summary, "hold": mode_hold, "churn": mode_churn, "slow": mode_slow}[a.mode](a)


if __name__ == "__main__":
    main()
