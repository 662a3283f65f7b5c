# Shared by benches/*.sh (source it): start and stop ssegate, nginx+nchan and
# redis-server on loopback, by PID only; generate a throw-away TLS
# certificate. Every wait is bounded.
#
# Environment:
#   SSEGATE   gateway binary            (default ./target/release/ssegate)
#   LOADGEN   load generator binary     (default ./loadgen/target/release/loadgen)
#   HEARTBEAT ssegate sse.heartbeat = nchan ping interval, seconds (default 15)
#   BENCH_TMP scratch dir for configs, certs, logs (default: a new mktemp -d)

SSEGATE="${SSEGATE:-./target/release/ssegate}"
LOADGEN="${LOADGEN:-./loadgen/target/release/loadgen}"
HEARTBEAT="${HEARTBEAT:-15}"
BENCH_TMP="${BENCH_TMP:-$(mktemp -d /tmp/ssegate-bench.XXXXXX)}"
NCHAN_DIR="$BENCH_TMP/nchan"
mkdir -p "$BENCH_TMP" "$NCHAN_DIR/logs"
SERVER_PID=""   # ssegate: its PID; nchan: master,worker,worker
SSEGATE_PID=""

# The load generator and the gateways need many sockets (hard limit here: 20,000).
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Refuse to start when a port we need is taken (someone else's server).
port_free() { ! ss -ltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
need_ports() {
  local p
  for p in "$@"; do
    port_free "$p" || { echo "port $p is in use on this machine; stop that server first" >&2; return 1; }
  done
}

# A throw-away test CA (ca.pem, for loadgen --ca) and a server certificate for
# 127.0.0.1/localhost signed by it (cert.pem/key.pem), EC P-256, in $BENCH_TMP,
# never committed. (rustls refuses a CA certificate used as the server's own.)
make_cert() {
  [ -s "$BENCH_TMP/cert.pem" ] && return 0
  local d=$BENCH_TMP
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=ssegate-bench-ca -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null || return 1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=localhost -keyout "$d/key.pem" -out "$d/server.csr" 2>/dev/null || return 1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/server.ext" -out "$d/cert.pem" 2>/dev/null
}

# wait_http URL: until it answers (≤ 10 s).
wait_http() {
  local _
  for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  return 1
}

# start_ssegate CONF [ADMIN_PORT]: CONF is a yaml from benches/conf/ (sse.heartbeat
# rewritten to $HEARTBEAT); TLS configs get the generated cert beside them.
start_ssegate() {
  local conf=$1 admin=${2:-9090} name out
  name=$(basename "$conf" .yaml)
  out="$BENCH_TMP/run-$name.yaml"
  sed "s/heartbeat: [0-9]*s/heartbeat: ${HEARTBEAT}s/" "$conf" >"$out"
  if grep -q '^tls:' "$out"; then make_cert || return 1; fi
  RUST_LOG="${SSEGATE_RUST_LOG:-warn}" "$SSEGATE" run -c "$out" >"$BENCH_TMP/$name.log" 2>&1 &
  SSEGATE_PID=$!
  SERVER_PID=$SSEGATE_PID
  wait_http "http://127.0.0.1:$admin/healthz" && return 0
  echo "ssegate ($conf) did not start; see $BENCH_TMP/$name.log" >&2
  tail -5 "$BENCH_TMP/$name.log" >&2
  return 1
}

# stop_pid PID: SIGINT (ssegate's fast stop), bounded wait, then SIGKILL.
stop_pid() {
  local pid=$1 _
  [ -n "$pid" ] || return 0
  kill -INT "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
stop_ssegate() { stop_pid "$SSEGATE_PID"; SSEGATE_PID=""; }

# start_nchan CONF: benches/conf/nchan.conf or nchan-tls.conf, ping = $HEARTBEAT
# (NCHAN_PING=0 to turn it off, as in nchan's default).
start_nchan() {
  local conf=$1 ping=${NCHAN_PING:-$HEARTBEAT} master _
  sed "s#NCHAN_DIR#$NCHAN_DIR#g" "$conf" >"$NCHAN_DIR/nginx.conf"
  sed "s#NCHAN_DIR#$NCHAN_DIR#g; s#NCHAN_PING#$ping#g" benches/conf/nchan-locations.conf \
    >"$NCHAN_DIR/nchan-locations.conf"
  if grep -q ssl_certificate "$NCHAN_DIR/nginx.conf"; then
    make_cert || return 1
    cp "$BENCH_TMP/cert.pem" "$BENCH_TMP/key.pem" "$NCHAN_DIR/"
  fi
  rm -f "$NCHAN_DIR/nginx.pid"
  nginx -c "$NCHAN_DIR/nginx.conf" -p "$NCHAN_DIR/" || return 1
  for _ in $(seq 100); do [ -s "$NCHAN_DIR/nginx.pid" ] && break; sleep 0.1; done
  master=$(cat "$NCHAN_DIR/nginx.pid" 2>/dev/null) || return 1
  for _ in $(seq 50); do [ "$(pgrep -c -P "$master")" -ge 2 ] && break; sleep 0.1; done
  SERVER_PID="$master,$(pgrep -d, -P "$master")"
}
stop_nchan() {
  local master _
  master=$(cat "$NCHAN_DIR/nginx.pid" 2>/dev/null) || return 0
  kill -TERM "$master" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
  return 0
}

# start_redis PORT: a throw-away redis-server on 127.0.0.1 (no persistence).
REDIS_PID=""
start_redis() {
  local port=$1
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --dir "$BENCH_TMP" --maxclients 10000 >"$BENCH_TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  local _
  for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.1; done
  echo "redis-server did not start" >&2
  return 1
}
stop_redis() { [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; REDIS_PID=""; }

# with_load JSON: the object with the 1-minute load average at the end of the
# run first ("load1"): the machine is shared, every figure carries its load.
with_load() {
  local l
  l=$(cut -d' ' -f1 /proc/loadavg)
  case $1 in
    '{}') echo "{\"load1\":$l}" ;;
    '{'*) echo "{\"load1\":$l,${1#\{}" ;;
    *) echo "$1" ;;
  esac
}

# run_loadgen SYSTEM SCENARIO RUN ARGS...: one result line "system scenario run {json}".
run_loadgen() {
  local sys=$1 sc=$2 run=$3 out
  shift 3
  out=$("$LOADGEN" "$@" --json 2>>"$BENCH_TMP/loadgen.err" | tail -n 1)
  [ -n "$out" ] || out='{"error":"loadgen printed nothing; see '"$BENCH_TMP"'/loadgen.err"}'
  echo "$sys $sc $run $(with_load "$out")"
}

# run_matrix SCENARIO...: each scenario RUNS times (default 3), each system of
# $SYSTEMS (default "ssegate nchan") on a fresh server: start_system SYS SC,
# loadgen with $(args_for SYS SC) (empty output: skipped), stop_system SYS.
# The calling script defines args_for, start_system and stop_system.
run_matrix() {
  local sc run sys a
  for sc in "$@"; do
    for run in $(seq "${RUNS:-3}"); do
      for sys in ${SYSTEMS:-ssegate nchan}; do
        a=$(args_for "$sys" "$sc") || return 1
        [ -n "$a" ] || continue
        start_system "$sys" "$sc" || return 1
        # shellcheck disable=SC2086
        run_loadgen "$sys" "$sc" "$run" $a --server-pid "$SERVER_PID"
        stop_system "$sys"
        sleep 1
      done
    done
  done
}
