#!/usr/bin/env bash
# A legacy app behind ssegate: proxy + signed webhooks + polling, checked
# end to end. Exits non-zero on failure; stops what it started.
. "$(dirname "$0")/../lib/common.sh"
GW=http://127.0.0.1:27180
ADMIN=http://127.0.0.1:27190
export ORDERS_SECRET=example-orders-secret   # shared by the app and the gateway
require_free 27100 27180 27190

step "start the legacy app (:27100) and ssegate (:27180, admin :27190)"
start app python3 -u "$EXAMPLE/app.py"
start ssegate "$SSEGATE" run -c "$EXAMPLE/ssegate.yaml"
wait_port 27100 "the app"
wait_port 27180 ssegate
wait_port 27190 "ssegate admin"

step "1. proxy: the app's API through the gateway"
http get "$GW/api/orders/7" --expect '"status": "open"'

step "2. webhook: paying order 7 makes the app call /hooks/orders; subscribers of order 7 get it"
subscribe order7 "$GW/events/orders/7" --until 'order.paid:"status":"paid"'
http post "$GW/api/orders/7/pay" --expect '"webhook": 202'
received order7
http post "$ADMIN/hooks/orders" '{"type":"order.paid","order":{"id":7}}' \
  --header 'X-Signature: sha256=00' --status 401 --expect 'signature'

step "3. polling: GET /stock asked every 200ms, only changes pushed"
subscribe stock "$GW/events/stock" --until 'stock:"widgets": 9'
deadline=$((SECONDS + 10))
until "${CLIENT[@]}" get "$GW/api/stats" | grep -Eq '"stock_polls": ([5-9]|[0-9]{2,})'; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the gateway did not poll /stock 5 times within 10s"
  sleep 0.2
done
http post "$GW/api/stock/sell" --expect '"widgets": 9'
received stock
events=$(grep -c '^{' "$WORK/stock.out")
[ "$events" -eq 2 ] || fail "expected 2 stock events (snapshot, one change), got $events"
http get "$GW/api/stats"

echo "ok: legacy-app (proxy, signed webhook → event, polling pushes only changes)"
