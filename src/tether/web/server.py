"""Run an ASGI app under uvicorn on loopback in a background thread (demo, benchmarks, tests)."""

from __future__ import annotations

import functools
import random
import socket
import threading
import time
from typing import Any

import uvicorn

from tether.web.tls import TlsFiles, TlsHttpToolsProtocol, uvicorn_context_factory

__all__ = ["ServerThread", "free_port"]


#: Loopback servers take ports below Linux's default ephemeral range (32768-60999): a port
#: the kernel handed out with ``bind(0)`` and that was closed again can be taken by any
#: outgoing connection before the server binds it, which happens under parallel load.
_PORTS = range(20000, 32000)
_given: set[int] = set()
_given_lock = threading.Lock()


def free_port() -> int:
    """A loopback port that is free now and was not handed out before in this process."""
    with _given_lock:
        for _ in range(200):
            port = random.choice(_PORTS)  # noqa: S311 - spreading picks, not a secret
            if port in _given:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
    with socket.socket() as sock:  # the range is exhausted: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    def __init__(
        self, app: Any, port: int, *, host: str = "127.0.0.1", tls: TlsFiles | None = None, lifespan: bool = True
    ) -> None:
        """With ``tls`` the server speaks HTTPS, asks for client certificates and hands the
        verified one to the app in the ASGI TLS extension (``tether.web.tls``). ``lifespan=False``
        for a second listener of an app another server runs: its startup and shutdown (the STS's
        store, monitor and upkeep) belong to one event loop, the first server's."""
        self.port = port
        self.scheme = "https" if tls is not None else "http"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="error",
                lifespan="on" if lifespan else "off",
                access_log=False,
                timeout_graceful_shutdown=1,
                http=TlsHttpToolsProtocol if tls is not None else "httptools",
                proxy_headers=False,
                ssl_context_factory=functools.partial(uvicorn_context_factory, tls) if tls is not None else None,
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{port}")

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
