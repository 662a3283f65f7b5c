#!/usr/bin/env bash
# ssegate vs nginx+nchan over TLS: HTTP/2 (many streams per connection) and
# HTTP/1.1, same harness, same minutes, one self-signed certificate (EC P-256,
# generated at run time) for both.
# Usage: benches/tls-compare.sh [scenario...]   (default: the first four)   RUNS=3 by default.
# Scenarios:
#   idle_h2_10k      10,000 idle HTTP/2 streams on 100 connections: PSS per stream
#                    after connecting and after a 10 s hold (5 s settle)
#   idle_tls_h1_10k  10,000 idle TLS HTTP/1.1 streams: the same
#   fanout_h2_10k    10,000 HTTP/2 streams (100 x 100), 100 events at 10/s:
#                    p50/p99, last-subscriber latency, deliveries/s, missing/duplicates
#   fanout_h2_10k_1s the same with one event a second (20 events): each event's
#                    fan-out alone, neither side (nor the client) behind
#   fanout_h2_10k_1s_p2  the same with the streams held by two load generator
#                    processes (the client's TLS and h2 work on both cores)
#   idlecpu_h2_19k   19,000 HTTP/2 streams (190 x 100), 20 s settle, server CPU over 60 s;
#                    ssegate's heartbeat and nchan's ping both $HEARTBEAT s (15)
#   fanout_tls_h1_10k, idlecpu_tls_h1_19k: the TLS HTTP/1.1 counterparts (not run by default)
# Ports: ssegate 8443 (TLS) + 9090 (admin); nchan 8453 (TLS) + 8090 (publish).
# Prints "system scenario run {json}" lines; benches/summarize.py makes the tables.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
. benches/lib.sh
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle_h2_10k idle_tls_h1_10k fanout_h2_10k idlecpu_h2_19k)
trap 'stop_ssegate; stop_nchan' EXIT
need_ports 8443 9090 8453 8090 || exit 1
make_cert || { echo "openssl failed" >&2; exit 1; }

args_for() { # system scenario
  local sys=$1 sc=$2 sse pub fmt prefix tls="--ca $BENCH_TMP/ca.pem"
  if [ "$sys" = ssegate ]; then
    sse='https://127.0.0.1:8443/events/{ch}'; pub='http://127.0.0.1:9090/publish'; fmt=ssegate; prefix='--channel-prefix room:'
  else
    sse='https://127.0.0.1:8453/sub/{ch}'; pub='http://127.0.0.1:8090/pub?id={ch}'; fmt=nchan; prefix=''
  fi
  local fan="fanout --sse-url $sse --publish-url $pub --publish-format $fmt $prefix --channel fan --events 100 --rate 10 $tls"
  local idle="idle --sse-url ${sse//\{ch\}/idle} $tls"
  case $sc in
    idle_h2_10k)        echo "$idle --h2 --conns 100 --subscribers 10000 --settle 5 --hold 10" ;;
    idle_tls_h1_10k)    echo "$idle --subscribers 10000 --settle 5 --hold 10" ;;
    fanout_h2_10k)      echo "$fan --h2 --conns 100 --subscribers 10000" ;;
    fanout_h2_10k_1s)   echo "${fan/--events 100 --rate 10/--events 20 --rate 1} --h2 --conns 100 --subscribers 10000" ;;
    fanout_h2_10k_1s_p2) echo "${fan/--events 100 --rate 10/--events 20 --rate 1} --h2 --conns 100 --subscribers 10000 --procs 2" ;;
    fanout_tls_h1_10k)  echo "$fan --subscribers 10000" ;;
    idlecpu_h2_19k)     echo "$idle --h2 --conns 190 --subscribers 19000 --settle 20 --hold 60" ;;
    idlecpu_tls_h1_19k) echo "$idle --subscribers 19000 --settle 20 --hold 60" ;;
    *) echo "unknown scenario $sc" >&2; return 1 ;;
  esac
}

start_system() {
  if [ "$1" = ssegate ]; then start_ssegate benches/conf/ssegate-tls.yaml; else start_nchan benches/conf/nchan-tls.conf; fi
}
stop_system() { if [ "$1" = ssegate ]; then stop_ssegate; else stop_nchan; fi; }

run_matrix "${scenarios[@]}"
