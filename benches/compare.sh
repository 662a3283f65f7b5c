#!/usr/bin/env bash
# Side-by-side load runs: ssegate vs nginx+nchan on this machine, same harness, same minutes.
# Usage: benches/compare.sh [scenario...]   (default: all)   RUNS=3 by default.
# Scenarios: idle10k idle19k fanout10k fanout1k channels10k channels10k_batch proxy
# Needs: cargo build --release (ssegate), loadgen built (cd loadgen && cargo build --release),
#        nginx + libnginx-mod-nchan (apt-get install -y nginx libnginx-mod-nchan).
# Prints one JSON line per run to stdout, prefixed with "system scenario run".
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
SSEGATE=./target/release/ssegate
LOADGEN=./loadgen/target/release/loadgen
NCHAN_DIR="${NCHAN_DIR:-/tmp/ssegate-nchan}"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle10k idle19k fanout10k fanout1k channels10k channels10k_batch)

start_ssegate() {
  RUST_LOG=warn "$SSEGATE" run -c benches/conf/ssegate.yaml >"/tmp/ssegate-bench.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9090/healthz >/dev/null && return 0; sleep 0.1; done
  echo "ssegate did not start" >&2; return 1
}
stop_ssegate() { kill -INT "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }

start_nchan() {
  mkdir -p "$NCHAN_DIR/logs"
  sed "s#NCHAN_DIR#$NCHAN_DIR#g" benches/conf/nchan.conf >"$NCHAN_DIR/nginx.conf"
  nginx -c "$NCHAN_DIR/nginx.conf" -p "$NCHAN_DIR/" || return 1
  for _ in $(seq 100); do [ -s "$NCHAN_DIR/nginx.pid" ] && break; sleep 0.1; done
  sleep 0.3
  SERVER_PID=$(pgrep -d, -f "nginx: (master|worker)")
}
stop_nchan() { kill "$(cat "$NCHAN_DIR/nginx.pid")" 2>/dev/null; for _ in $(seq 50); do pgrep -f "nginx: master" >/dev/null || break; sleep 0.1; done; }

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
    fanout10k) echo "fanout --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channel fan --subscribers 10000 --events 100 --rate 10" ;;
    fanout1k) echo "fanout --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channel fan --subscribers 1000 --events 5000 --rate 1000 --publish-concurrency 4" ;;
    channels10k) echo "channels --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channels 10000 --events 10000 --publish-concurrency 4" ;;
    channels10k_batch) [ "$sys" = ssegate ] && echo "channels --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channels 10000 --events 10000 --batch 100" ;;
  esac
}

proxy_run() { # run: wrk against nginx proxy_pass, then ssegate, with nginx as the origin for both
  start_nchan || exit 1
  local n s
  n=$(wrk -t1 -c64 -d10s http://127.0.0.1:8090/api/x 2>/dev/null | awk '/Requests\/sec/ {print $2}')
  start_ssegate || exit 1
  s=$(wrk -t1 -c64 -d10s http://127.0.0.1:8080/api/x 2>/dev/null | awk '/Requests\/sec/ {print $2}')
  stop_ssegate
  stop_nchan
  echo "nchan proxy $1 {\"req_per_s\":$n}"
  echo "ssegate proxy $1 {\"req_per_s\":$s}"
}

for sc in "${scenarios[@]}"; do
  if [ "$sc" = proxy ]; then
    for run in $(seq "$RUNS"); do proxy_run "$run"; sleep 1; done
    continue
  fi
  for run in $(seq "$RUNS"); do
    for sys in ssegate nchan; do
      a=$(args_for "$sys" "$sc") || true
      [ -n "$a" ] || continue
      if [ "$sys" = ssegate ]; then start_ssegate || exit 1; else start_nchan || exit 1; fi
      # shellcheck disable=SC2086
      out=$("$LOADGEN" $a --server-pid "$SERVER_PID" --json 2>/dev/null | tail -n 1)
      echo "$sys $sc $run $out"
      if [ "$sys" = ssegate ]; then stop_ssegate; else stop_nchan; fi
      sleep 1
    done
  done
done
