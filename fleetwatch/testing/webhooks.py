"""A real HTTP server on loopback that receives webhooks (Alertmanager's webhook and Slack notifications)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fleetwatch.testing.waits import free_port


class Receiver:
    """Records every POST; answers 500 to the first ``fail_first`` of them (a receiver that is down a while)."""

    def __init__(self, fail_first: int = 0):
        self.posts: list[dict] = []
        self.answers: list[int] = []  # the status answered to every POST, in order
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's hook name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner._lock:
                    failing = len(owner.answers) < fail_first
                    owner.answers.append(500 if failing else 200)
                    if not failing:
                        owner.posts.append(json.loads(body))
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._lock = threading.Lock()
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, status: str | None = None, **labels) -> list[dict]:
        """Every alert in every POST so far with ``status`` (if given) whose labels include ``labels``."""
        return [
            a
            for p in self.posts
            for a in p.get("alerts", ())
            if all(a["labels"].get(k) == v for k, v in labels.items()) and status in (None, a["status"])
        ]

    def stop(self) -> None:
        self.server.shutdown()
