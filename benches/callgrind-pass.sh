#!/usr/bin/env bash
# Pass-through cost in user-space instructions per proxied request, under
# callgrind (deterministic: unlike req/s, it does not depend on what else
# runs on this shared 2-core machine): nginx proxy_pass (one worker, no
# master), pingora's minimal proxy (benches/tools/bare_pingora.rs) and ssegate,
# each proxying GET /api/x to the same 100-byte nginx origin over upstream
# keep-alive; N keep-alive requests on 4 connections after a warm-up, the
# counters zeroed in between.
# Usage: benches/callgrind-pass.sh [nginx bare ssegate]   N=3000
# Needs valgrind, nginx, and: cargo build --release --example bare_pingora
# Prints "SYSTEM callgrind_pass 1 {json}" lines (instructions_per_request);
# the profiles stay in $BENCH_TMP (benches/cgself.py FILE N: top functions).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
N="${N:-3000}"
BARE="${BARE:-./target/release/examples/bare_pingora}"
. benches/lib.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nginx bare ssegate)
need_ports 8080 8090 8091 8092 9090 || exit 1

# The origin: nginx serving 100 bytes on 8091 (not measured).
cat >"$NCHAN_DIR/origin.conf" <<CONF
worker_processes 1;
pid $NCHAN_DIR/origin.pid;
error_log $NCHAN_DIR/logs/origin.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:8091;
        location / { default_type text/plain; return 200 "$(printf 'x%.0s' $(seq 99))\n"; }
    }
}
CONF
# nginx proxy_pass with upstream keep-alive, as benches/conf/nchan.conf's /api/.
cat >"$NCHAN_DIR/proxy.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $NCHAN_DIR/proxy.pid;
error_log $NCHAN_DIR/logs/proxy.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    proxy_temp_path $NCHAN_DIR/proxy_tmp;
    upstream origin { server 127.0.0.1:8091; keepalive 64; }
    server {
        listen 127.0.0.1:8090;
        location /api/ { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
nginx -c "$NCHAN_DIR/origin.conf" -p "$NCHAN_DIR/" || exit 1
trap 'kill "$(cat "$NCHAN_DIR/origin.pid" 2>/dev/null)" 2>/dev/null' EXIT

measure() { # name port command...
  local name=$1 port=$2 v out ir
  shift 2
  out="$BENCH_TMP/cg-$name"
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" --dump-instr=no "$@" >"$out.log" 2>&1 &
  v=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/x" && break; sleep 0.2; done
  python3 benches/kaclient.py "$port" 200 4 >/dev/null || { echo "$name: warm-up failed" >&2; kill "$v"; return 1; }
  callgrind_control -z "$v" >/dev/null
  python3 benches/kaclient.py "$port" "$N" 4 >/dev/null || echo "$name: bad answers" >&2
  callgrind_control -d "$v" >/dev/null
  sleep 1
  kill "$v" 2>/dev/null; wait "$v" 2>/dev/null
  # The dump taken after zeroing is the one with the highest part number.
  local f
  f=$(ls "$out.$v".* 2>/dev/null | sort -V | tail -1)
  ir=$(grep -h '^summary:\|^totals:' "$f" | head -1 | awk '{print $2}')
  echo "$name callgrind_pass 1 {\"instructions_per_request\": $((ir / N)), \"requests\": $N, \"profile\": \"$f\"}"
}

for t in "${targets[@]}"; do
  case $t in
    nginx) measure nginx 8090 nginx -c "$NCHAN_DIR/proxy.conf" -p "$NCHAN_DIR/" ;;
    bare) measure bare 8092 "$BARE" 127.0.0.1:8092 127.0.0.1:8091 2 ;;
    ssegate)
      sed "s/heartbeat: [0-9]*s/heartbeat: ${HEARTBEAT}s/" benches/conf/ssegate.yaml >"$BENCH_TMP/cg-ssegate.yaml"
      RUST_LOG=warn measure ssegate 8080 "$SSEGATE" run -c "$BENCH_TMP/cg-ssegate.yaml" ;;
    *) echo "unknown target $t" >&2; exit 1 ;;
  esac
done
