#!/usr/bin/env bash
# Cluster mode cost: publish→deliver latency and deliveries/s through Redis vs
# the memory broker, same harness, same minutes; and Redis commands per event.
# Usage: RUNS=3 benches/redis-vs-memory.sh     (needs redis-server, release build, loadgen)
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
LOADGEN=./loadgen/target/release/loadgen
DIR=$(mktemp -d)
redis-server --port 6399 --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p 6399 ping >/dev/null 2>&1 && break; sleep 0.1; done

run() { # config label
  RUST_LOG=warn ./target/release/ssegate run -c "$1" >"$DIR/gw.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9090/readyz >/dev/null && break; sleep 0.1; done
  local out
  out=$("$LOADGEN" fanout --sse-url 'http://127.0.0.1:8080/events/{ch}' --publish-url http://127.0.0.1:9090/publish \
        --channel-prefix room: --channel fan --subscribers 1000 --events 2000 --rate 500 --server-pid "$pid" --json 2>/dev/null | tail -n 1)
  echo "$2 fanout $out"
  kill -INT "$pid"; wait "$pid" 2>/dev/null
}

for r in $(seq "$RUNS"); do
  run benches/conf/ssegate.yaml memory
  run benches/conf/ssegate-redis.yaml redis
done

# Redis commands per published event: 10,000 events over 1,000 channels with
# 1,000 subscribers; counted with INFO commandstats.
RUST_LOG=warn ./target/release/ssegate run -c benches/conf/ssegate-redis.yaml >"$DIR/gw.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:9090/readyz >/dev/null && break; sleep 0.1; done
redis-cli -p 6399 CONFIG RESETSTAT >/dev/null
"$LOADGEN" channels --sse-url 'http://127.0.0.1:8080/events/{ch}' --publish-url http://127.0.0.1:9090/publish \
  --channel-prefix room: --channels 1000 --events 10000 --batch 50 --json >/dev/null 2>&1
echo "commandstats after 10000 events, 1000 subscribers:"
redis-cli -p 6399 INFO commandstats | grep -E "^cmdstat_" | sed 's/,usec=.*//'
kill -INT "$pid"; wait "$pid" 2>/dev/null
