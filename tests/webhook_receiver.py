"""A webhook receiver on 127.0.0.1 for the notifier tests: collects the JSON Apprise's json:// posts."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALERT_ID = re.compile(r"\b\d{13}-\d+\b")


class Receiver:
    """Start, stop and start again on the same port; ``delay`` slows every answer down."""

    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.delay = delay
        self.posts: list[dict] = []  # {"path", "title", "message", "type", ...}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {"raw": body.decode(errors="replace")}
                data["path"] = self.path
                with receiver.lock:
                    receiver.posts.append(data)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self, path: str | None = None) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if path is None or p["path"].startswith(path)]

    def ids(self, path: str | None = None) -> list[str]:
        """Every alert id named in the notifications (the body's "alert ids:" line), repeats kept."""
        out = []
        for post in self.received(path):
            line = next((x for x in post.get("message", "").splitlines() if x.startswith("alert ids:")), "")
            out += ALERT_ID.findall(line)
        return out
