"""A loopback TCP relay that can be cut: a network partition between a resource server and the STS.

When cut, no byte moves either way and new connections hang, but nothing is closed or reset,
so neither side learns the link is gone: what a silent partition looks like, as opposed to a
peer that died (whose connections close at once). Used by ``tether bench chaos`` and by
tests/chaos/test_resource_partition.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tether.agent.proof import DPoPKey
from tether.errors import InvalidToken, TemporarilyUnavailable
from tether.resource import Verifier

__all__ = ["Partition", "verdict"]


class Partition:
    """Relay ``127.0.0.1:port`` → ``127.0.0.1:target_port`` in threads until ``close``."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _wait_flowing(self) -> bool:
        while not self.flowing.wait(0.05):
            pass
        return not self.closed.is_set()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        try:
            while self._wait_flowing():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data or not self._wait_flowing():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def verdict(verifier: Verifier, resource: str, token: str, key: DPoPKey) -> str:
    """What ``verifier`` makes of ``GET {resource}/x`` with ``token``: ``accepted``, ``unavailable``
    (its revocation view is stale) or the ``invalid_token`` description."""
    proof = key.proof("GET", resource + "/x", access_token=token)
    try:
        await verifier.verify(method="GET", path="/x", headers={"authorization": f"DPoP {token}", "dpop": proof})
    except TemporarilyUnavailable:
        return "unavailable"
    except InvalidToken as exc:
        return exc.description
    return "accepted"
