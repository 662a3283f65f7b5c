#!/usr/bin/env python3
"""A legacy app (python3 standard library): orders and a stock level.

It cannot push. When an order is paid it calls a webhook URL, signed with
HMAC-SHA256 (as many apps already do for their integrations); the stock is
only available by asking GET /stock.

  GET  /api/orders/ID       the order
  POST /api/orders/ID/pay   marks it paid and sends the signed webhook
  GET  /stock               the stock level (the gateway polls this)
  POST /api/stock/sell      one widget fewer
  GET  /api/stats           how often /stock was asked

Environment: APP_LISTEN (127.0.0.1:27100), ORDERS_SECRET, WEBHOOK_URL.
"""
import hashlib
import hmac
import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from jsonapp import JsonHandler, post_json, serve  # noqa: E402

SECRET = os.environ["ORDERS_SECRET"].encode()
WEBHOOK_URL = os.environ.get("WEBHOOK_URL", "http://127.0.0.1:27190/hooks/orders")
state = {"orders": {}, "widgets": 10, "stock_polls": 0, "webhooks": 0}
lock = threading.Lock()


def send_webhook(order):
    with lock:
        state["webhooks"] += 1
        n = state["webhooks"]
    body = json.dumps({"type": "order.paid", "event_id": f"evt-{n}", "order": order}).encode()
    sig = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return post_json(WEBHOOK_URL, body, {"X-Signature": "sha256=" + sig})


class App(JsonHandler):
    def order(self, oid):
        with lock:
            return state["orders"].setdefault(oid, {"id": int(oid), "status": "open"})

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if self.path == "/stock":
            with lock:
                state["stock_polls"] += 1
                return self.reply(200, {"widgets": state["widgets"]})
        if self.path == "/api/stats":
            with lock:
                return self.reply(200, {"stock_polls": state["stock_polls"]})
        if len(parts) == 3 and parts[:2] == ["api", "orders"] and parts[2].isdigit():
            return self.reply(200, self.order(parts[2]))
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        if self.path == "/api/stock/sell":
            with lock:
                state["widgets"] -= 1
                return self.reply(200, {"widgets": state["widgets"]})
        if len(parts) == 4 and parts[:2] == ["api", "orders"] and parts[3] == "pay":
            order = self.order(parts[2])
            order["status"] = "paid"
            return self.reply(200, {"order": order, "webhook": send_webhook(order)})
        self.reply(404, {"error": "not found"})



if __name__ == "__main__":
    serve(App, "127.0.0.1:27100")
