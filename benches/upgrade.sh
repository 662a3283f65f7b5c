#!/usr/bin/env bash
# Live upgrade under load: N plain HTTP/1.1 streams on one channel, an event
# every 100 ms, and in the middle `ssegate run --upgrade` takes over (the old
# process gets SIGQUIT through its pid file and hands its streams over).
# 10,000 streams at 100 events/s is 1M deliveries/s, past what 2 shared cores
# deliver without a backlog, so the default rate is 10/s (RATE= to change).
# Reports, per run, the longest publish-to-delivery latency any client saw
# (the pause the handoff costs it), p99, lost/duplicated events, streams that
# ended (a reconnect would show here) and the old process's exit code; the
# same run without an upgrade is the baseline, interleaved.
# Usage: benches/upgrade.sh   RUNS=3 SUBS=10000 RATE=10 EVENTS=200 UPGRADE_AT=5 (s into publishing)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
SUBS="${SUBS:-10000}"
RATE="${RATE:-10}"
EVENTS="${EVENTS:-200}"
UPGRADE_AT="${UPGRADE_AT:-5}"
. benches/lib.sh
NEW_PID=""
trap 'stop_ssegate; stop_pid "$NEW_PID"' EXIT
need_ports 8080 9090 || exit 1
[ -x "$LOADGEN" ] || { echo "no load generator at $LOADGEN (cargo build --release in loadgen/)" >&2; exit 1; }

streams_open() { ss -Htn state established '( sport = :8080 )' 2>/dev/null | wc -l; }

# upgrade_when_publishing CONF: once every subscriber streams, wait for the
# settle time and UPGRADE_AT seconds of publishing, then upgrade.
upgrade_when_publishing() {
  local conf=$1 _
  for _ in $(seq 600); do [ "$(streams_open)" -ge "$SUBS" ] && break; sleep 0.1; done
  sleep "$(echo "0.5 + $UPGRADE_AT" | bc)"
  RUST_LOG=info "$SSEGATE" run -c "$conf" --upgrade >"$BENCH_TMP/upgraded.log" 2>&1 &
  echo $! >"$BENCH_TMP/new.pid"
}

conf="$BENCH_TMP/run-ssegate.yaml"
for run in $(seq "$RUNS"); do
  for mode in steady upgrade; do
    rm -f "$BENCH_TMP/new.pid"
    SSEGATE_RUST_LOG=info,pingora_core=warn,pingora_proxy=warn start_ssegate benches/conf/ssegate.yaml || exit 1
    [ "$mode" = upgrade ] && upgrade_when_publishing "$conf" &
    watcher=$!
    out=$("$LOADGEN" fanout --sse-url 'http://127.0.0.1:8080/events/{ch}' \
      --publish-url http://127.0.0.1:9090/publish --publish-format ssegate --channel-prefix room: \
      --channel up --subscribers "$SUBS" --events "$EVENTS" --rate "$RATE" --json 2>>"$BENCH_TMP/loadgen.err" | tail -n 1)
    wait "$watcher" 2>/dev/null
    if [ "$mode" = upgrade ]; then
      NEW_PID=$(cat "$BENCH_TMP/new.pid" 2>/dev/null)
      wait "$SSEGATE_PID"; old_exit=$?
      # The handoff window: the old process sealed its hub and froze its
      # streams (no write after this) until the new one has adopted them all.
      frozen=$(grep -m1 'hub sealed' "$BENCH_TMP/ssegate.log" | cut -d' ' -f1)
      adopted=$(grep -m1 'streams adopted' "$BENCH_TMP/upgraded.log")
      window=$(python3 -c 'import sys,datetime as d; f=lambda s: d.datetime.fromisoformat(s.rstrip("Z")); print(round((f(sys.argv[2])-f(sys.argv[1])).total_seconds()*1000,1))' "$frozen" "${adopted%% *}" 2>/dev/null || echo null)
      echo "ssegate $mode $run {\"old_exit\":\"$old_exit\",\"sealed_to_adopted_ms\":$window,\"adopted\":\"$(grep -o 'streams=[0-9]*' <<<"$adopted")\"} $out"
      stop_pid "$NEW_PID"; NEW_PID=""; SSEGATE_PID=""
    else
      echo "ssegate $mode $run {} $out"
      stop_ssegate
    fi
    sleep 1
  done
done
