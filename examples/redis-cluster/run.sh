#!/usr/bin/env bash
# Two ssegate instances on one redis-server: an event published on one
# reaches a subscriber on the other, and a client resumes on either.
# Exits non-zero on failure; stops what it started.
. "$(dirname "$0")/../lib/common.sh"
A=http://127.0.0.1:27380 A_ADMIN=http://127.0.0.1:27390
B=http://127.0.0.1:27381 B_ADMIN=http://127.0.0.1:27391
command -v redis-server >/dev/null ||
  fail "redis-server is not installed (apt-get install redis-server)"
require_free 27379 27380 27390 27381 27391

step "start redis-server (:27379) and two ssegate instances (A :27380, B :27381)"
start redis redis-server --port 27379 --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
wait_port 27379 redis-server
# Each in its own runtime directory, as systemd's RuntimeDirectory= gives each
# unit: the default upgrade socket (live upgrade) is named after the file's
# listen port, which the two share.
mkdir -p "$WORK/run-a" "$WORK/run-b"
RUNTIME_DIRECTORY=$WORK/run-a start ssegate-a "$SSEGATE" run -c "$EXAMPLE/ssegate.yaml"
RUNTIME_DIRECTORY=$WORK/run-b SSEGATE_LISTEN=127.0.0.1:27381 SSEGATE_ADMIN_LISTEN=127.0.0.1:27391 \
  start ssegate-b "$SSEGATE" run -c "$EXAMPLE/ssegate.yaml"
for port in 27380 27390 27381 27391; do wait_port "$port" ssegate; done

step "a subscriber on B gets what is published on A"
subscribe on-b "$B/events/lobby" --until 'message:hello from A'
http post "$A_ADMIN/publish" '{"channel":"room:lobby","event":"message","data":"hello from A"}'
received on-b
seen=$(last_id on-b)
[ -n "$seen" ] || fail "the event from A had no id"

step "B publishes while nobody listens; resuming on A from $seen gets exactly those"
http post "$B_ADMIN/publish" '{"channel":"room:lobby","event":"message","data":"while away 1"}'
http post "$B_ADMIN/publish" '{"channel":"room:lobby","event":"message","data":"while away 2"}'
subscribe resume-a "$A/events/lobby" --last-event-id "$seen" \
  --until 'message:while away 2' --refuse 'message:hello from A'
received resume-a
grep -q '"while away 1"' "$WORK/resume-a.out" || fail "the resume on A missed 'while away 1'"

echo "ok: redis-cluster (publish on A → subscriber on B; resume on A after events published on B)"
