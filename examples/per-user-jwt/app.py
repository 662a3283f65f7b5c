#!/usr/bin/env python3
"""An app with users (python3 standard library).

  POST /api/login          body: a user name → {"token": JWT (HS256, 10 min)}
  POST /api/notes/USER     body: text → published to that user's channel
                           (POST ADMIN/publish, channel user:USER)

Environment: APP_LISTEN (127.0.0.1:27200), EXAMPLE_JWT_SECRET,
PUBLISH_URL (http://127.0.0.1:27290/publish).
"""
import json
import os
import re
import sys

from hs256 import sign  # hs256.py beside this file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from jsonapp import JsonHandler, post_json, serve  # noqa: E402

SECRET = os.environ["EXAMPLE_JWT_SECRET"]
PUBLISH_URL = os.environ.get("PUBLISH_URL", "http://127.0.0.1:27290/publish")
USER = re.compile(r"^[a-z]{1,32}$")


def publish(channel, event, data):
    body = json.dumps({"channel": channel, "event": event, "data": data}).encode()
    return post_json(PUBLISH_URL, body)


class App(JsonHandler):
    def do_POST(self):
        text = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode().strip()
        parts = self.path.strip("/").split("/")
        if self.path == "/api/login" and USER.match(text):
            return self.reply(200, {"token": sign(text, SECRET)})
        if len(parts) == 3 and parts[:2] == ["api", "notes"] and USER.match(parts[2]):
            return self.reply(200, {"published": publish("user:" + parts[2], "note", text)})
        self.reply(404, {"error": "not found"})



if __name__ == "__main__":
    serve(App, "127.0.0.1:27200")
