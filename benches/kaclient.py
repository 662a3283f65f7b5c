#!/usr/bin/env python3
"""N keep-alive GETs of URL_PATH over C connections (threads), each answer
checked (200, 100 bytes): kaclient.py PORT N C [PATH]"""
import http.client
import sys
import threading

port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "/api/x"
bad = []


def run(k):
    h = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for _ in range(k):
        h.request("GET", path)
        r = h.getresponse()
        b = r.read()
        if r.status != 200 or len(b) != 100:
            bad.append(r.status)


ts = [threading.Thread(target=run, args=(n // c,)) for _ in range(c)]
[t.start() for t in ts]
[t.join() for t in ts]
print(f"done {n} bad={len(bad)}")
sys.exit(1 if bad else 0)
