#!/usr/bin/env python3
"""The examples' HTTP and SSE client (python3 standard library only).

  client.py get URL [--expect TEXT] [--status N] [--header 'K: V']...
  client.py post URL [BODY] [--expect TEXT] [--status N] [--header 'K: V']...
  client.py sse URL --ready FILE --until EVENT[:TEXT] [--timeout S]
                [--last-event-id ID] [--header 'K: V']... [--refuse EVENT[:TEXT]]

`sse` subscribes, touches FILE once the stream is open, prints each event as
one JSON line, and exits 0 when an event of type EVENT whose data contains
TEXT arrives, 1 on timeout, on a closed stream or when a --refuse event
arrives first. Every request is bounded by --timeout (default 10 s).
"""
import argparse
import http.client
import json
import sys
import time
import urllib.parse


def connect(url, timeout):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return conn, path


def headers_of(pairs):
    out = {}
    for h in pairs or []:
        k, _, v = h.partition(":")
        out[k.strip()] = v.strip()
    return out


def request(method, args):
    conn, path = connect(args.url, args.timeout)
    body = args.body.encode() if getattr(args, "body", None) is not None else None
    conn.request(method, path, body=body, headers=headers_of(args.header))
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    print(f"{method} {args.url} -> {resp.status} {text.strip()[:300]}")
    if args.status is not None and resp.status != args.status:
        print(f"FAIL: expected status {args.status}", file=sys.stderr)
        return 1
    if args.status is None and not 200 <= resp.status < 300:
        print("FAIL: expected a 2xx status", file=sys.stderr)
        return 1
    if args.expect is not None and args.expect not in text:
        print(f"FAIL: expected {args.expect!r} in the body", file=sys.stderr)
        return 1
    return 0


def matches(spec, event, data):
    want, _, text = spec.partition(":")
    return event == want and text in data


def sse(args):
    deadline = time.monotonic() + args.timeout
    conn, path = connect(args.url, args.timeout)
    headers = {"Accept": "text/event-stream", **headers_of(args.header)}
    if args.last_event_id:
        headers["Last-Event-ID"] = args.last_event_id
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        print(f"FAIL: {args.url} -> {resp.status} {resp.read()[:300]!r}", file=sys.stderr)
        return 1
    open(args.ready, "w").close()
    event, data, eid = "message", [], None
    while time.monotonic() < deadline:
        conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            raw = resp.readline()
        except TimeoutError:
            break
        if not raw:
            print("FAIL: the stream closed", file=sys.stderr)
            return 1
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                text = "\n".join(data)
                print(json.dumps({"id": eid, "event": event, "data": text}), flush=True)
                if args.refuse and any(matches(r, event, text) for r in args.refuse):
                    print(f"FAIL: unexpected event {event} {text}", file=sys.stderr)
                    return 1
                if matches(args.until, event, text):
                    return 0
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value
    print(f"FAIL: no {args.until} event within {args.timeout}s", file=sys.stderr)
    return 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("get", "post", "sse"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--header", action="append")
        s.add_argument("--timeout", type=float, default=10.0)
        if name == "post":
            s.add_argument("body", nargs="?", default="")
        if name in ("get", "post"):
            s.add_argument("--expect")
            s.add_argument("--status", type=int)
        else:
            s.add_argument("--ready", required=True)
            s.add_argument("--until", required=True)
            s.add_argument("--refuse", action="append")
            s.add_argument("--last-event-id")
    args = p.parse_args()
    try:
        if args.cmd == "sse":
            return sse(args)
        return request(args.cmd.upper(), args)
    except OSError as e:
        print(f"FAIL: {args.url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
