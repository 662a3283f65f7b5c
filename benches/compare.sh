#!/usr/bin/env bash
# Side-by-side load runs: ssegate vs nginx+nchan on this machine, same harness, same minutes.
# Usage: benches/compare.sh [scenario...]   (default: all)   RUNS=3 by default.
# Scenarios: idle10k idle19k idlecpu19k fanout10k fanout1k channels10k channels10k_batch proxy
#   idlecpu19k: 19,000 idle streams, 20 s settle, CPU over a 60 s window; ssegate's
#   sse.heartbeat and nchan's nchan_eventsource_ping_interval both $HEARTBEAT s (15).
# Needs: cargo build --release (ssegate), loadgen built (cd loadgen && cargo build --release),
#        nginx + libnginx-mod-nchan (apt-get install -y nginx libnginx-mod-nchan).
# Prints one JSON line per run to stdout, prefixed with "system scenario run".
# nchan pings every $HEARTBEAT s like ssegate's heartbeat (NCHAN_PING=0: nchan's default, none).
# SSEGATE=path picks another gateway binary (e.g. /work/baseline/ssegate-before).
# proxy: also pingora's bare proxy on :8092 (benches/tools/bare_pingora.rs) when
#   BARE (default target/release/examples/bare_pingora) is built.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
. benches/lib.sh
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle10k idle19k idlecpu19k fanout10k fanout1k channels10k channels10k_batch)
trap 'stop_ssegate; stop_nchan' EXIT
need_ports 8080 9090 8090 8091 8092 || exit 1
BARE="${BARE:-./target/release/examples/bare_pingora}"

args_for() { # system scenario
  local sys=$1 sc=$2 sse pub fmt prefix
  if [ "$sys" = ssegate ]; then
    sse='http://127.0.0.1:8080/events/{ch}'; pub='http://127.0.0.1:9090/publish'; fmt=ssegate; prefix='--channel-prefix room:'
  else
    sse='http://127.0.0.1:8090/sub/{ch}'; pub='http://127.0.0.1:8090/pub?id={ch}'; fmt=nchan; prefix=''
  fi
  case $sc in
    idle10k)  echo "idle --sse-url ${sse//\{ch\}/idle} --subscribers 10000 --hold 5" ;;
    idle19k)  echo "idle --sse-url ${sse//\{ch\}/idle} --subscribers 19000 --hold 30" ;;
    idlecpu19k) echo "idle --sse-url ${sse//\{ch\}/idle} --subscribers 19000 --settle 20 --hold 60" ;;
    fanout10k) echo "fanout --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channel fan --subscribers 10000 --events 100 --rate 10" ;;
    fanout1k) echo "fanout --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channel fan --subscribers 1000 --events 5000 --rate 1000 --publish-concurrency 4" ;;
    channels10k) echo "channels --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channels 10000 --events 10000 --publish-concurrency 4" ;;
    channels10k_batch) if [ "$sys" = ssegate ]; then echo "channels --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channels 10000 --events 10000 --batch 100"; fi ;;
    *) echo "unknown scenario $sc" >&2; return 1 ;;
  esac
}

proxy_run() { # run: wrk against nginx proxy_pass, bare pingora (when built), then ssegate; nginx is the origin for all
  start_nchan benches/conf/nchan.conf || exit 1
  local n b="" s bare_pid
  n=$(wrk -t1 -c64 -d10s http://127.0.0.1:8090/api/x 2>/dev/null | awk '/Requests\/sec/ {print $2}')
  if [ -x "$BARE" ]; then
    "$BARE" 127.0.0.1:8092 127.0.0.1:8091 2 >"$BENCH_TMP/bare.log" 2>&1 &
    bare_pid=$!
    wait_http http://127.0.0.1:8092/api/x
    b=$(wrk -t1 -c64 -d10s http://127.0.0.1:8092/api/x 2>/dev/null | awk '/Requests\/sec/ {print $2}')
    kill "$bare_pid" 2>/dev/null; wait "$bare_pid" 2>/dev/null
  fi
  start_ssegate benches/conf/ssegate.yaml || exit 1
  s=$(wrk -t1 -c64 -d10s http://127.0.0.1:8080/api/x 2>/dev/null | awk '/Requests\/sec/ {print $2}')
  stop_ssegate
  stop_nchan
  echo "nchan proxy $1 {\"req_per_s\":$n}"
  [ -z "$b" ] || echo "bare_pingora proxy $1 {\"req_per_s\":$b}"
  echo "ssegate proxy $1 {\"req_per_s\":$s}"
}

start_system() {
  if [ "$1" = ssegate ]; then start_ssegate benches/conf/ssegate.yaml; else start_nchan benches/conf/nchan.conf; fi
}
stop_system() { if [ "$1" = ssegate ]; then stop_ssegate; else stop_nchan; fi; }

for sc in "${scenarios[@]}"; do
  if [ "$sc" = proxy ]; then
    for run in $(seq "$RUNS"); do proxy_run "$run"; sleep 1; done
  else
    run_matrix "$sc" || exit 1
  fi
done
