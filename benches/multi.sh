#!/usr/bin/env bash
# Beyond one process: INSTANCES ssegate processes (default 3) on one Redis, each
# holding PER streams (default 19,000; one process holds at most ~19,800 sockets
# here), fed by one load generator process per instance (loadgen fanout --procs)
# whose latency histograms are merged. Events are published through the first
# instance's admin API at RATE/s (default 10, EVENTS=100).
# Reports fan-out p50/p99 and last-subscriber latency over all streams,
# deliveries/s, missing/duplicates, the gateways' memory per stream and CPU
# (summed), Redis CPU (/proc of redis-server) and Redis commands per event
# (INFO commandstats before/after publishing).
# Usage: benches/multi.sh [scenario...]   (default: fanout3x idle3x)   RUNS=3
#   fanout3x  INSTANCES x PER subscribers on one channel, EVENTS events at RATE/s
#   idle3x    INSTANCES x PER idle streams, 20 s settle, 60 s hold: gateways' and
#             Redis's CPU with everyone idle (heartbeat $HEARTBEAT s)
#   publish3x INSTANCES x PSUBS subscribers (default 10) on one channel, PEVENTS
#             events (default 20,000) as fast as 4 publish connections go (not
#             run by default): Redis's CPU per event when publishing, not
#             fan-out, is the load. INSTANCES=1 vs 3 splits Redis's cost per
#             event into the script and the PUBLISH to each subscribed instance
#   publish3x_batch  the same in requests of 100 events (one script per request)
# Ports: instances 8081.. (public) and 9091.. (admin), Redis 6399.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
INSTANCES="${INSTANCES:-3}"
PER="${PER:-19000}"
EVENTS="${EVENTS:-100}"
RATE="${RATE:-10}"
PEVENTS="${PEVENTS:-20000}"
PSUBS="${PSUBS:-10}"
REDIS_PORT=6399
. benches/lib.sh
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(fanout3x idle3x)

INST_PIDS=()
stop_instances() {
  local p
  for p in "${INST_PIDS[@]}"; do stop_pid "$p"; done
  INST_PIDS=()
}
trap 'stop_instances; stop_redis' EXIT
ports=("$REDIS_PORT")
for k in $(seq "$INSTANCES"); do ports+=($((8080 + k)) $((9090 + k))); done
need_ports "${ports[@]}" || exit 1

start_instances() {
  local k conf
  start_redis "$REDIS_PORT" || return 1
  for k in $(seq "$INSTANCES"); do
    conf="$BENCH_TMP/instance$k.yaml"
    sed "s#127.0.0.1:8080#127.0.0.1:$((8080 + k))#; s#127.0.0.1:9090#127.0.0.1:$((9090 + k))#; s#redis://127.0.0.1:6399#redis://127.0.0.1:$REDIS_PORT#" \
      benches/conf/ssegate-redis.yaml >"$conf"
    start_ssegate "$conf" $((9090 + k)) || return 1
    INST_PIDS+=("$SSEGATE_PID")
  done
  SERVER_PID=$(IFS=,; echo "${INST_PIDS[*]}")
}

# The kernel's share of a stream, which no process's PSS shows: slab growth
# (socket, TCP state, epoll item, file) while every stream is open, over
# the sockets open (both ends are on this machine: 2 per stream).
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
tcp_inuse() { awk '/^TCP:/ {print $3}' /proc/net/sockstat; }
kernel_per_socket() { # slab_before_kb sockets run
  local _ s
  for _ in $(seq 300); do [ "$(tcp_inuse)" -ge "$2" ] && break; sleep 0.5; done
  sleep 5
  s=$(slab_kb)
  echo "ssegate-${INSTANCES}x idle3x.kernel $3 {\"tcp_inuse\":$(tcp_inuse),\"slab_growth_kb\":$((s - $1)),\"slab_bytes_per_socket\":$(((s - $1) * 1024 / $2))}"
}

for sc in "${scenarios[@]}"; do
  for run in $(seq "$RUNS"); do
    start_instances || exit 1
    urls=()
    for k in $(seq "$INSTANCES"); do urls+=(--sse-url "http://127.0.0.1:$((8080 + k))/events/{ch}"); done
    n=$((INSTANCES * PER))
    redis=(--redis-port "$REDIS_PORT" --redis-pid "$REDIS_PID")
    case $sc in
      fanout3x)
        run_loadgen "ssegate-${INSTANCES}x" "$sc" "$run" fanout "${urls[@]}" --procs "$INSTANCES" \
          --subscribers "$n" --channel fan --channel-prefix room: \
          --publish-url "http://127.0.0.1:9091/publish" --events "$EVENTS" --rate "$RATE" \
          --server-pid "$SERVER_PID" "${redis[@]}" ;;
      publish3x|publish3x_batch)
        batch=1
        [ "$sc" = publish3x ] || batch=100
        run_loadgen "ssegate-${INSTANCES}x" "$sc" "$run" fanout "${urls[@]}" \
          --subscribers $((INSTANCES * PSUBS)) --channel fan --channel-prefix room: \
          --publish-url "http://127.0.0.1:9091/publish" --events "$PEVENTS" --rate 0 \
          --publish-concurrency 4 --batch "$batch" \
          --server-pid "$SERVER_PID" "${redis[@]}" ;;
      idle3x)
        # One loadgen process per instance: run them side by side, then print each.
        pids=()
        slab0=$(slab_kb)
        for k in $(seq "$INSTANCES"); do
          "$LOADGEN" idle --sse-url "http://127.0.0.1:$((8080 + k))/events/idle" --subscribers "$PER" \
            --settle 20 --hold 60 --server-pid "${INST_PIDS[$((k - 1))]}" "${redis[@]}" --json \
            >"$BENCH_TMP/idle$k.json" 2>>"$BENCH_TMP/loadgen.err" &
          pids+=($!)
        done
        kernel_per_socket "$slab0" $((2 * n)) "$run"
        for p in "${pids[@]}"; do wait "$p"; done
        for k in $(seq "$INSTANCES"); do
          echo "ssegate-${INSTANCES}x $sc.$k $run $(with_load "$(tail -n 1 "$BENCH_TMP/idle$k.json")")"
        done ;;
      *) echo "unknown scenario $sc" >&2; exit 1 ;;
    esac
    stop_instances
    stop_redis
    sleep 1
  done
done
