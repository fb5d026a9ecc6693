"""Rate limiting a login route: at most 5 attempts per minute per client IP, shared by every
replica of the web service, answered 429 with Retry-After beyond that.

Run against `make run`'s baton (from the repository root, in another terminal)::

    cd clients/python && .venv/bin/python examples/ratelimit_login.py
    for i in 1 2 3 4 5 6; do curl -si -XPOST localhost:8080/login | head -1; done

BATON_TARGET overrides the default localhost:50051.
"""

from __future__ import annotations

import logging
import math
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import baton_client

client = baton_client.Client(os.environ.get("BATON_TARGET", "localhost:50051"), timeout=1)


class Login(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/login":
            self.send_error(404)
            return
        try:
            # Fail open: a Baton or Redis outage should not lock every user out of logging in.
            decision = client.allow(f"login:{self.client_address[0]}", 5, 60, fail_open=True)
        except baton_client.BatonError as error:
            logging.warning("rate limit unavailable, letting the attempt through: %s", error)
        else:
            if not decision:
                self.send_response(429)
                self.send_header("Retry-After", str(math.ceil(decision.retry_after)))
                self.end_headers()
                self.wfile.write(b"too many login attempts\n")
                return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"checking the password\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logging.info("listening on localhost:8080")
    ThreadingHTTPServer(("localhost", 8080), Login).serve_forever()
