#!/usr/bin/env python3
"""Self cost per function straight from a callgrind file (callgrind_annotate
3.19 mis-attributes dumps taken with callgrind_control): cgself.py FILE N [top]"""
import re, sys
from collections import defaultdict
f, n = sys.argv[1], float(sys.argv[2]); top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
names = {}; cur = None; skip = False; self_cost = defaultdict(int); ob = {}
curob = ""
def resolve(kind, s):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m: return s
    k = (kind, m.group(1))
    if m.group(2): names[k] = m.group(2)
    return names.get(k, s)
for line in open(f):
    line = line.rstrip("\n")
    if line.startswith("fn="):
        cur = resolve("fn", line[3:]); skip = False
    elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
        kind = line[:3] if line.startswith("cfn") else ("fl" if line[:3] in ("cfi", "cfl") else "ob")
        resolve("fn" if line.startswith("cfn") else kind, line.split("=", 1)[1])
    elif line.startswith(("fl=", "fi=", "fe=")):
        resolve("fl", line[3:])
    elif line.startswith("ob="):
        resolve("ob", line[3:])
    elif line.startswith("calls="):
        skip = True
    elif line and (line[0].isdigit() or line[0] in "+-*"):
        parts = line.split()
        if len(parts) >= 2 and cur is not None:
            if skip: skip = False
            else: self_cost[cur] += int(parts[1])
tot = sum(self_cost.values())
print(f"total self {tot/n:,.0f} per request")
for k, v in sorted(self_cost.items(), key=lambda x: -x[1])[:top]:
    print(f"{v/n:>9,.0f} {100*v/tot:5.1f}%  {k[:150]}")

cats = [
    ("memcpy/memmove (13.4 KB process_new_http future moved into its Box per request)", r"memcpy|memmove"),
    ("jemalloc malloc/free", r"_rjem|je_|tcache|cache_bin|__rust_alloc|__rust_dealloc|__rust_realloc|mallocx|sdallocx"),
    ("http::HeaderMap, header names/values (http + pingora_http)", r"http::header|pingora_http::|HeaderMap|HeaderName|HeaderValue|HdrName|StandardHeader|parse_hdr|hash_elem_using"),
    ("httparse", r"httparse"),
    ("tokio (tasks, wakers, I/O readiness, mpsc, semaphore)", r"tokio|mio::"),
    ("pingora proxy + core (phases, h1 session, pool, connectors)", r"pingora|lru::"),
    ("bytes", r"bytes::"),
    ("libc/kernel entry (syscall wrappers, futex, epoll)", r"^(__|epoll|pthread|syscall|send|recv|clock|_dl|__GI|__libc|__lll)"),
    ("nginx itself", r"^ngx_|^0x|\?\?\?"),
    ("glibc malloc", r"_int_malloc|_int_free|malloc|free|cfree"),
    ("generic Rust (core/alloc/std: Vec, iterators, futures glue, SipHash)", r"core::|alloc::|std::|<|sip"),
]
acc = defaultdict(int)
for k, v in self_cost.items():
    for c, rx in cats:
        if re.search(rx, k): acc[c] += v; break
    else: acc["other"] += v
print("\nby component:")
for k, v in sorted(acc.items(), key=lambda x: -x[1]):
    print(f"{v/n:>9,.0f} {100*v/tot:5.1f}%  {k}")
