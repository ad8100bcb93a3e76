"""Network faults for the tests: a loopback TCP proxy that forwards, refuses or black-holes.

Put it in front of a shared server (``TcpProxy(("127.0.0.1", 5432))``) and point the component
under test at ``proxy.port``: the test can then take "the database" away without touching the
server everyone else uses.

- ``forward()``: connections are relayed to the upstream (the normal state).
- ``refuse()``: every open connection is cut and each new one is reset as soon as it arrives, as
  when the server goes down. (The port stays bound: closing the listener would let the port be
  taken meanwhile — even by a client's own connect to it, a TCP self-connect — and forwarding
  could not resume on it.)
- ``blackhole()``: connections are accepted and held, and bytes in either direction are
  swallowed: nothing ever answers, as across a network partition.

Threads, not asyncio, so one proxy serves a server in a subprocess, in a thread or in the test's
own event loop alike.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Literal

__all__ = ["TcpProxy", "tcp_proxy"]

Mode = Literal["forward", "refuse", "blackhole"]


class _Pair:
    """A client socket and (when forwarding) its upstream socket; closing one closes both."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.mode: Mode = "forward"
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._running = False
        self._thread: threading.Thread | None = None
        self._relays: set[threading.Thread] = set()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._listen()
        self._running = True
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_listener()
        self._cut_all()
        for relay in list(self._relays):
            relay.join(timeout=5)

    # -- faults ---------------------------------------------------------------------
    def forward(self) -> None:
        """Relay again."""
        self.mode = "forward"

    def refuse(self) -> None:
        """Reset new connections and cut the open ones."""
        self.mode = "refuse"
        self._cut_all()

    def blackhole(self) -> None:
        """Accept and hold connections, answer nothing; open connections stop relaying."""
        self.mode = "blackhole"

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- internals ------------------------------------------------------------------
    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(128)
            except OSError:
                listener.close()
                raise
            listener.settimeout(0.05)
            self.port = listener.getsockname()[1]
            self._listener = listener

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _cut_all(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close()

    def _accept_loop(self) -> None:
        while self._running:
            with self._lock:
                listener = self._listener
            if listener is None:
                threading.Event().wait(0.02)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.mode == "refuse":  # a reset, not a close: the client's handshake fails at once
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            client.setblocking(True)
            upstream = None
            if self.mode == "forward":
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    client.close()
                    continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            relay = threading.Thread(target=self._relay, args=(pair,), name="tcp-proxy-relay", daemon=True)
            self._relays.add(relay)
            relay.start()

    def _relay(self, pair: _Pair) -> None:
        """Copy bytes both ways while forwarding; swallow them while black-holed; end with either side."""
        sockets = [s for s in (pair.client, pair.upstream) if s is not None]
        try:
            while not pair.closed:
                ready, _, _ = select.select(sockets, [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.mode != "forward" or pair.upstream is None:
                        continue  # black hole: nobody answers
                    (pair.upstream if sock is pair.client else pair.client).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            pair.close()
            with self._lock:
                self._pairs.discard(pair)
            self._relays.discard(threading.current_thread())


@contextlib.contextmanager
def tcp_proxy(upstream: tuple[str, int]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
