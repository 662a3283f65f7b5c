#!/usr/bin/env python3
"""A stand-in SSE server with deferred admission, to check the load harness's
storm path before (or beside) ssegate's limits.stream_rate: new streams over
RATE per second (token bucket, BURST) get `200 text/event-stream` with only
`retry: <random in [RETRY, 4*RETRY] ms>` and are closed, as SPEC section 6 says;
the others get a prelude (retry, comment, id) and stay open, heartbeating every
second. A request's Last-Event-ID is counted. Loopback only; stops by itself
after --seconds. Not a benchmark target: a test fixture for loadgen.

Usage: deferred_target.py [--port 8099] [--rate 500] [--burst 100] [--retry-ms 300] [--seconds 120]
  loadgen storm --sse-url http://127.0.0.1:8099/events/x --subscribers 2000
"""
import argparse
import asyncio
import random
import time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=8099)
p.add_argument("--rate", type=float, default=500.0)
p.add_argument("--burst", type=float, default=100.0)
p.add_argument("--retry-ms", type=int, default=300)
p.add_argument("--seconds", type=float, default=120.0)
p.add_argument("--seed", type=int, default=None)
a = p.parse_args()
seed = a.seed if a.seed is not None else time.time_ns() & 0xFFFFFFFF
rng = random.Random(seed)
stats = {"admitted": 0, "deferred": 0, "with_last_event_id": 0}
bucket = {"tokens": a.burst, "at": time.monotonic()}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"


def admit():
    now = time.monotonic()
    bucket["tokens"] = min(a.burst, bucket["tokens"] + (now - bucket["at"]) * a.rate)
    bucket["at"] = now
    if bucket["tokens"] >= 1:
        bucket["tokens"] -= 1
        return True
    return False


async def client(reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if b"\nlast-event-id:" in head.lower():
            stats["with_last_event_id"] += 1
        if not admit():
            stats["deferred"] += 1
            retry = rng.randint(a.retry_ms, 4 * a.retry_ms)
            writer.write(HEAD + b"Connection: close\r\n\r\n" + f"retry: {retry}\n\n".encode())
            await writer.drain()
            return
        stats["admitted"] += 1
        writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        body = f"retry: {a.retry_ms}\n:ok\n\nid: {stats['admitted']}\n\n".encode()
        writer.write(b"%x\r\n%s\r\n" % (len(body), body))
        await writer.drain()
        while True:  # heartbeat until the client goes (bounded by the server's lifetime)
            await asyncio.sleep(1)
            writer.write(b"3\r\n:\n\n\r\n")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(client, "127.0.0.1", a.port, backlog=4096)
    print(f"deferred_target: 127.0.0.1:{a.port} rate {a.rate}/s burst {a.burst} seed {seed}", flush=True)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), a.seconds)
        except asyncio.TimeoutError:
            pass
    print(f"deferred_target: {stats}", flush=True)


asyncio.run(main())
