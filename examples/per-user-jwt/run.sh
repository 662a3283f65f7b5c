#!/usr/bin/env bash
# Per-user streams with JWT: alice and bob each get only their own events.
# Exits non-zero on failure; stops what it started.
. "$(dirname "$0")/../lib/common.sh"
GW=http://127.0.0.1:27280
# The app signs tokens with it and the gateway verifies them; only the
# environment holds it.
export EXAMPLE_JWT_SECRET=${EXAMPLE_JWT_SECRET:-example-secret-$RANDOM$RANDOM}
require_free 27200 27280 27290

step "start the app (:27200) and ssegate (:27280, admin :27290)"
start app python3 -u "$EXAMPLE/app.py"
start ssegate "$SSEGATE" run -c "$EXAMPLE/ssegate.yaml"
wait_port 27200 "the app"
wait_port 27280 ssegate
wait_port 27290 "ssegate admin"

step "sign in through the gateway: the app hands out HS256 tokens"
token_of() {
  "${CLIENT[@]}" post "$GW/api/login" "$1" --expect token |
    sed -n 's/.*"token": "\([^"]*\)".*/\1/p'
}
alice=$(token_of alice)
bob=$(token_of bob)
[ -n "$alice" ] && [ -n "$bob" ] || fail "no tokens from /api/login"

step "no token, a forged token and an expired one are refused with 401"
http get "$GW/events/me" --status 401
forged=$(python3 "$EXAMPLE/hs256.py" alice --secret not-the-secret)
http get "$GW/events/me" --header "Authorization: Bearer $forged" --status 401
expired=$(python3 "$EXAMPLE/hs256.py" alice --ttl -60)
http get "$GW/events/me" --header "Authorization: Bearer $expired" --status 401

step "alice (Authorization header) and bob (?access_token=, as EventSource does) on the same URL"
subscribe alice "$GW/events/me" --header "Authorization: Bearer $alice" \
  --until 'note:for alice (2)' --refuse 'note:for bob'
subscribe bob "$GW/events/me?access_token=$bob" \
  --until 'note:for bob' --refuse 'note:for alice'
http post "$GW/api/notes/alice" 'for alice (1)'
http post "$GW/api/notes/bob" 'for bob'
http post "$GW/api/notes/alice" 'for alice (2)'
received alice
received bob

echo "ok: per-user-jwt (each user sees only their own channel; bad tokens refused)"
