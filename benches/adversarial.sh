#!/usr/bin/env bash
# The figures that held in the first release's adversarial pass (issue 18),
# measured from outside against a release binary, on loopback:
#   streams15k  15,000 plain SSE streams with limits.max_connections 15000:
#               PSS per stream (smaps_rollup, less the idle gateway's) and
#               the answers to the 15,001st..15,100th (429 with a reason)
#   churn       ROUNDS x PER streams (default 60 x 1,000) opened and closed:
#               RSS, PSS and descriptors before, after round 1, every 10
#               rounds (Pss_Anon) and at the end, once the open-streams gauge
#               (ssegate_connections) is back to 0
#   slow        a reader and a client that never reads on one channel, EVENTS
#               (50,000) events published in `items` batches of 100 at RATE
#               events/s (10,000; 0 = as fast as the gateway answers): the
#               reader gets all in order, the other is cut as slow
#               (ssegate_slow_client_disconnects_total), RSS stays bounded
#   drain15k    15,000 streams, then SIGTERM: signal to exit, exit code, and
#               every client got a `retry:` after its prelude before its close
# Each RUNS times (default 3), a fresh gateway per run; one result line per
# run ("LABEL SCENARIO RUN {load} {json}", load = the 1-minute load average
# before and after, as `uptime` shows it: the machine may be shared).
# SYSTEMS="label=binary ..." interleaves several binaries run by run, e.g. a
# release and its predecessor (default: ssegate=$SSEGATE).
# Usage: benches/adversarial.sh [scenario...]   (default: all four)
#        SSEGATE=/path/to/ssegate RUNS=3 ROUNDS=60 PER=1000 EVENTS=50000 RATE=10000 N=15000
# Medians: python3 benches/adversarial.py summary --results FILE
# Ports 18180 (public) and 19190 (admin). Client side: benches/adversarial.py.
# Method and the figures of 2026-11-29: docs/security.md, "Figures that held".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
N="${N:-15000}"
ROUNDS="${ROUNDS:-60}"
PER="${PER:-1000}"
EVENTS="${EVENTS:-50000}"
RATE="${RATE:-10000}"
PUBLIC=18180
ADMIN=19190
. benches/lib.sh
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(streams15k churn slow drain15k)
trap 'stop_ssegate' EXIT
need_ports "$PUBLIC" "$ADMIN" || exit 1
read -r -a systems <<<"${SYSTEMS:-ssegate=$SSEGATE}"
for s in "${systems[@]}"; do
  [ -x "${s#*=}" ] || { echo "no gateway binary at ${s#*=}" >&2; exit 1; }
done
[ "$(ulimit -n)" -ge $((N + 200)) ] || { echo "need ulimit -n >= $((N + 200)) (have $(ulimit -n))" >&2; exit 1; }

# The bench config (benches/conf/ssegate.yaml) on our ports, with
# max_connections = N and no upstream.
conf="$BENCH_TMP/adversarial.yaml"
sed -e "s#127.0.0.1:8080#127.0.0.1:$PUBLIC#; s#127.0.0.1:9090#127.0.0.1:$ADMIN#" \
    -e "s#max_connections: [0-9]*#max_connections: $N#" \
    -e '/^upstreams:/,/^routes:/{/^routes:/!d}' -e '/proxy: origin/d; /path: \/api/d' \
    benches/conf/ssegate.yaml >"$conf"
for s in "${systems[@]}"; do
  "${s#*=}" check -c "$conf" >/dev/null || { echo "${s#*=} refuses $conf" >&2; exit 1; }
done

client() { python3 benches/adversarial.py "$@" --pid "$SSEGATE_PID" --port "$PUBLIC" --admin "$ADMIN"; }
load1() { cut -d' ' -f1 /proc/loadavg; }
result() { # scenario run json
  echo "$LABEL $1 $2 {\"load1_before\":$LOAD_BEFORE,\"load1_after\":$(load1)} $3"
}

for sc in "${scenarios[@]}"; do
  for run in $(seq "$RUNS"); do
   for sys in "${systems[@]}"; do
    LABEL=${sys%%=*}
    SSEGATE=${sys#*=}
    LOAD_BEFORE=$(load1)
    start_ssegate "$conf" "$ADMIN" || exit 1
    sleep 1
    case $sc in
      streams15k)
        out=$(client hold --n "$N" --extra 100 --hold-more $((HEARTBEAT + 2)))
        result "$sc" "$run" "$out"
        stop_ssegate ;;
      churn)
        out=$(client churn --rounds "$ROUNDS" --per "$PER")
        result "$sc" "$run" "$out"
        stop_ssegate ;;
      slow)
        out=$(client slow --events "$EVENTS" --batch 100 --rate "$RATE")
        result "$sc" "$run" "$out"
        stop_ssegate ;;
      drain15k)
        hs="$BENCH_TMP/drain-$run"
        rm -f "$hs"
        client hold --n "$N" --extra 0 --drain "$hs" \
          --deadline 120 >"$hs.out" &
        cpid=$!
        for _ in $(seq 1800); do [ -s "$hs" ] && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
        if [ -s "$hs" ]; then
          t0=$(date +%s%N)
          kill -TERM "$SSEGATE_PID"
          echo "$t0" >"$hs.t"; mv "$hs.t" "$hs"
          wait "$SSEGATE_PID"; code=$?
          t1=$(date +%s%N)
          SSEGATE_PID=""
          wait "$cpid"
          exit_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
          result "$sc" "$run" "{\"exit_s\":$exit_s,\"exit_code\":$code,$(tail -n 1 "$hs.out" | sed 's/^{//')"
        else
          wait "$cpid"
          result "$sc" "$run" "{\"error\":\"the client never held all streams\",\"client\":\"$(tr -d '"' <"$hs.out")\"}"
          stop_ssegate
        fi ;;
      *) echo "unknown scenario $sc" >&2; exit 1 ;;
    esac
    sleep 2
   done
  done
done
