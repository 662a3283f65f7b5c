"""What the examples' small backends share (python3 standard library): JSON
replies, a POST to the gateway, and serving on APP_LISTEN."""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(self.address_string(), fmt % args, flush=True)


def post_json(url, body, headers=None):
    """POSTs bytes as JSON; returns the status (raises on 4xx/5xx)."""
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def serve(handler, default_listen):
    host, port = os.environ.get("APP_LISTEN", default_listen).rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), handler).serve_forever()
