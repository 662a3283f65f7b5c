#!/usr/bin/env bash
# Where idle CPU goes: 19,000 idle streams (15 s heartbeat), syscall counts
# (strace -c) over 30 s of the hold, then perf cpu-clock samples (dwarf call
# graphs) over the next 30 s; per server (ssegate, nchan's workers).
# Needs strace and perf (apt-get install strace linux-perf); run under the
# bench lock. Read with: perf report -i OUTDIR/ssegate-perf.data --no-children --sort comm,dso
# Usage: benches/profile-idle.sh OUTDIR [ssegate|nchan]...
set -uo pipefail
out=$1; shift
cd "$(dirname "$0")/.." || exit 1
. benches/lib.sh
trap 'stop_ssegate; stop_nchan' EXIT
mkdir -p "$out"
for sys in "$@"; do
  if [ "$sys" = ssegate ]; then
    start_ssegate benches/conf/ssegate.yaml || exit 1; url=http://127.0.0.1:8080/events/idle; pids=$SSEGATE_PID
  else
    start_nchan benches/conf/nchan.conf || exit 1; url=http://127.0.0.1:8090/sub/idle; pids=$(echo "$SERVER_PID" | cut -d, -f2-)
  fi
  "$LOADGEN" idle --sse-url "$url" --subscribers 19000 --settle 10 --hold 75 --server-pid "$SERVER_PID" --json >"$out/$sys-loadgen.json" 2>"$out/$sys-loadgen.err" &
  lg=$!
  sleep 25
  echo "$sys uptime: $(uptime)" >>"$out/uptime.txt"
  # 30 s of syscalls (every thread of every process), then 30 s of samples.
  sargs=(); for p in ${pids//,/ }; do sargs+=(-p "$p"); done
  timeout -s INT 30 strace -c -f "${sargs[@]}" -o "$out/$sys-strace.txt" 2>/dev/null
  pargs=$(echo "$pids" | tr -d ' ')
  perf record -q -o "$out/$sys-perf.data" -e cpu-clock -F 2000 --call-graph dwarf,8192 -p "$pargs" -- sleep 30 2>"$out/$sys-perf.err"
  wait "$lg"
  if [ "$sys" = ssegate ]; then stop_ssegate; else stop_nchan; fi
  sleep 1
done
