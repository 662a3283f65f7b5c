#!/usr/bin/env python3
"""HS256 JWTs with the python3 standard library (hmac), as the app signs them.

  hs256.py SUB [--secret S] [--ttl SECONDS]   prints a token (secret from
                                              EXAMPLE_JWT_SECRET by default)
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import time


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(sub, secret, ttl=600, audience="example-app"):
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": sub, "aud": audience, "exp": int(time.time()) + ttl}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("sub")
    p.add_argument("--secret", default=os.environ.get("EXAMPLE_JWT_SECRET"))
    p.add_argument("--ttl", type=int, default=600)
    a = p.parse_args()
    print(sign(a.sub, a.secret, a.ttl))
