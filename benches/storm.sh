#!/usr/bin/env bash
# Reconnect storms: N clients streaming, all dropped at once and reconnecting at
# once like browsers' EventSource (Last-Event-ID where the server gave an id,
# retry: honoured), ssegate vs nginx+nchan, same harness, same minutes.
# Reports the time until all stream again (prelude received), answers by status
# (5xx loudly), and the server's peak RSS and CPU (sampled every 100 ms).
# Usage: benches/storm.sh [scenario...]   (default: storm19k storm19k_spread storm19k_h2)   RUNS=3
# Scenarios:
#   storm19k         19,000 plain HTTP/1.1 streams, all reconnecting at once
#   storm19k_spread  the same, reconnects spread uniformly over 1 s
#   storm19k_h2      19,000 HTTP/2 streams over TLS (190 connections x 100)
#   storm19k_tls_h1  19,000 TLS HTTP/1.1 streams (not run by default)
#   storm19k_rate    ssegate only, with limits.stream_rate (STREAM_RATE=per_second/burst,
#                    default 5000/1000): deferred clients get 200 + retry: only and come
#                    back after it; skipped when the binary does not know stream_rate yet
# N=19000 by default (SUBS=... to change; one process holds at most ~19,800 sockets).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-3}"
SUBS="${SUBS:-19000}"
STREAM_RATE="${STREAM_RATE:-5000/1000}"
. benches/lib.sh
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(storm19k storm19k_spread storm19k_h2)
trap 'stop_ssegate; stop_nchan' EXIT
need_ports 8080 8443 9090 8090 8453 || exit 1
make_cert || { echo "openssl failed" >&2; exit 1; }

# ssegate's plain config with limits.stream_rate added.
rate_conf() {
  local per=${STREAM_RATE%/*} burst=${STREAM_RATE#*/} out=$BENCH_TMP/ssegate-rate.yaml
  sed "s#^limits: {#limits: { stream_rate: { per_second: $per, burst: $burst },#" \
    benches/conf/ssegate.yaml >"$out"
  echo "$out"
}

args_for() { # system scenario
  local sys=$1 sc=$2 plain tls conns=$(( (SUBS + 99) / 100 ))
  local common="storm --subscribers $SUBS --before 2 --after 2 --storm-deadline 120"
  if [ "$sys" = ssegate ]; then
    plain='http://127.0.0.1:8080/events/storm'; tls='https://127.0.0.1:8443/events/storm'
  else
    plain='http://127.0.0.1:8090/sub/storm'; tls='https://127.0.0.1:8453/sub/storm'
  fi
  case $sc in
    storm19k)        echo "$common --sse-url $plain" ;;
    storm19k_spread) echo "$common --sse-url $plain --spread-ms 1000" ;;
    storm19k_h2)     echo "$common --sse-url $tls --ca $BENCH_TMP/ca.pem --h2 --conns $conns" ;;
    storm19k_tls_h1) echo "$common --sse-url $tls --ca $BENCH_TMP/ca.pem" ;;
    storm19k_rate)
      [ "$sys" = ssegate ] || return 0
      if ! "$SSEGATE" check -c "$(rate_conf)" >/dev/null 2>&1; then
        echo "storm19k_rate skipped: $SSEGATE does not accept limits.stream_rate" >&2
        return 0
      fi
      echo "$common --sse-url $plain" ;;
    *) echo "unknown scenario $sc" >&2; return 1 ;;
  esac
}

start_system() { # system scenario
  case "$1:$2" in
    ssegate:storm19k_h2|ssegate:storm19k_tls_h1) start_ssegate benches/conf/ssegate-tls.yaml ;;
    ssegate:storm19k_rate) start_ssegate "$(rate_conf)" ;;
    ssegate:*) start_ssegate benches/conf/ssegate.yaml ;;
    nchan:storm19k_h2|nchan:storm19k_tls_h1) start_nchan benches/conf/nchan-tls.conf ;;
    nchan:*) start_nchan benches/conf/nchan.conf ;;
  esac
}
stop_system() { if [ "$1" = ssegate ]; then stop_ssegate; else stop_nchan; fi; }

run_matrix "${scenarios[@]}"
