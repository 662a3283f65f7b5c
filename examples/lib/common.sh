# shellcheck shell=bash
# Sourced by examples/*/run.sh: start processes on loopback, wait for them
# (every wait bounded), check with examples/lib/client.py, and stop what was
# started by PID on exit. On failure the logs' tails are printed.
set -euo pipefail

EXAMPLE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
ROOT=$(cd "$EXAMPLE/../.." && pwd)
CLIENT=(python3 "$ROOT/examples/lib/client.py")
# No __pycache__ left beside the examples.
export PYTHONDONTWRITEBYTECODE=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ssegate-example.XXXXXX")
PIDS=()
declare -A SUBSCRIBERS=()

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -eq 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK"; fi
}
trap cleanup EXIT
# A timeout's SIGTERM (or ^C) still stops what was started.
trap 'exit 143' TERM INT

fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log "$WORK"/*.out; do
    [ -e "$f" ] || continue
    echo "--- ${f##*/} (last lines)" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

step() { echo "== $*"; }

# The gateway binary: $SSEGATE_BIN, else the newer of target/{release,debug},
# else a debug build made now.
ssegate_bin() {
  if [ -n "${SSEGATE_BIN:-}" ]; then
    echo "$SSEGATE_BIN"
    return
  fi
  local best=
  for b in "$ROOT/target/release/ssegate" "$ROOT/target/debug/ssegate"; do
    if [ -x "$b" ] && { [ -z "$best" ] || [ "$b" -nt "$best" ]; }; then best=$b; fi
  done
  if [ -z "$best" ]; then
    echo "no target/*/ssegate: building it (cargo build)" >&2
    (cd "$ROOT" && cargo build --quiet) >&2
    best="$ROOT/target/debug/ssegate"
  fi
  echo "$best"
}
SSEGATE=$(ssegate_bin)

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# require_free PORT...: a leftover process on a port would answer instead of ours.
require_free() {
  for port in "$@"; do
    if listening "$port"; then fail "port $port is already in use (a previous run still going?)"; fi
  done
}

# start NAME COMMAND...: run in the background, output to $WORK/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_port PORT NAME: until something accepts on PORT (at most 30 s).
wait_port() {
  local deadline=$((SECONDS + 30))
  until listening "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$2 did not listen on $1 within 30s"
    sleep 0.1
  done
}

# subscribe NAME URL ARGS...: an SSE client in the background (see
# client.py sse); returns once its stream is open (at most 10 s).
subscribe() {
  local name=$1 url=$2
  shift 2
  "${CLIENT[@]}" sse "$url" --ready "$WORK/$name.ready" "$@" >"$WORK/$name.out" 2>&1 &
  SUBSCRIBERS[$name]=$!
  PIDS+=($!)
  local deadline=$((SECONDS + 10))
  until [ -e "$WORK/$name.ready" ]; do
    kill -0 "${SUBSCRIBERS[$name]}" 2>/dev/null || fail "subscriber $name did not connect"
    [ "$SECONDS" -lt "$deadline" ] || fail "subscriber $name not connected within 10s"
    sleep 0.05
  done
}

# received NAME: wait for subscriber NAME (bounded by its --timeout) and
# fail unless it saw what it waited for; prints what it received.
received() {
  local status=0
  wait "${SUBSCRIBERS[$1]}" || status=$?
  sed "s/^/  $1 < /" "$WORK/$1.out"
  [ "$status" -eq 0 ] || fail "subscriber $1"
}

# last_id NAME: the id of the last event subscriber NAME received.
last_id() {
  python3 -c 'import json,sys
ids=[json.loads(l)["id"] for l in open(sys.argv[1]) if l.startswith("{")]
print(ids[-1] if ids else "")' "$WORK/$1.out"
}

# http get|post URL ARGS...: one request with client.py; fails the run unless it passes.
http() {
  "${CLIENT[@]}" "$@" || fail "request: $*"
}
