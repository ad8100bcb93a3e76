"""A real HTTP webhook receiver on loopback that can fail its first attempts or hang."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, *, fail_first: int = 0, status: int = 500, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.status = status
        self.hang = hang
        self.attempts: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.attempts.append(json.loads(body))
                receiver.content_types.append(self.headers.get("content-type", ""))
                if receiver.hang:
                    receiver.release.wait(30)
                    return
                failed = len(receiver.attempts) <= receiver.fail_first
                self.send_response(receiver.status if failed else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/s3cr3t-path-token"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
