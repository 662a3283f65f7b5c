#!/usr/bin/env bash
# History cost: gateway memory (PSS) per stored event, CHANNELS channels x EVENTS
# events of PAYLOAD bytes (default 100,000 x 10 x 200 B, history size 10), on a
# fresh ssegate each run, nobody subscribed. Goal (issue 17): <= payload + 96 B.
# Usage: benches/history.sh   RUNS=3; SSEGATE=path for another binary.
# Prints "ssegate history RUN {json}" lines (bytes_per_event, overhead_per_event).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
CHANNELS="${CHANNELS:-100000}" EVENTS="${EVENTS:-10}" PAYLOAD="${PAYLOAD:-200}"
. benches/lib.sh
trap 'stop_ssegate' EXIT
need_ports 8080 9090 || exit 1
for run in $(seq "$RUNS"); do
  start_ssegate benches/conf/ssegate-history.yaml || exit 1
  python3 benches/history.py http://127.0.0.1:9090 "$SSEGATE_PID" "$run" "$CHANNELS" "$EVENTS" "$PAYLOAD" 1000
  stop_ssegate
  sleep 1
done
