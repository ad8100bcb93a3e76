"""``tether serve --workers N``: N server processes, each listening on a socket of its own.

uvicorn's own ``--workers`` binds one socket in the parent and hands it to every worker:
whichever worker wakes first takes every pending connection (its event loop accepts until the
backlog is empty), so a burst of long-lived keep-alive connections — a load balancer's pool,
agents starting together — lands mostly on one worker while the others idle (measured with
``tether bench --only scaling``: 32 connections split 28 : 4, and two workers served little
more than one). Here every worker binds the address with ``SO_REUSEPORT`` and the kernel
spreads new connections across their sockets by a hash of each connection.

``SO_REUSEPORT`` would also let a second ``tether serve`` started by mistake on the same port
join the group, so the parent first binds the address *without* it (``claim_port``): that fails
while anything listens there, as uvicorn's own bind did. The parent then binds and listens on
the workers' sockets itself (``listen_sockets``) and holds them for as long as it runs: a
worker's replacement takes over its socket (and the connections waiting in its backlog), and
the address never looks free while workers restart — when each worker bound its own, a second
server could claim the port in that moment and its workers join this server's group.

Each worker runs exactly what one ``tether serve`` process runs, with the configuration the
parent loaded and checked: a replacement started after ``tether.toml`` was edited serves what
the others serve, never the edited file. The parent starts them, starts a new one when one
ends after it started, stops all of them on SIGINT/SIGTERM, and stops (exit 1) when one cannot
start at all: a broken store fails the same way on every restart. A worker that keeps ending
soon after it started is replaced after 1, 2, 4 … 30 seconds (``restart_delay``): a crash
loop must not spend the machine on start-ups. A worker whose parent is gone stops itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

__all__ = ["BACKLOG", "claim_port", "listen_sockets", "restart_delay", "reuse_port_socket", "run_workers"]

_STOP_SECONDS = 10.0
#: a worker that served this long before it ended is replaced at once
STEADY_SECONDS = 60.0
_FIRST_DELAY, _MAX_DELAY = 1.0, 30.0
#: each listening socket's queue of connections not yet accepted (uvicorn's default)
BACKLOG = 2048


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def claim_port(host: str, port: int) -> int:
    """Check that nothing is bound to ``host:port`` (``OSError`` if something is); the port, chosen
    by the kernel when ``port`` is 0. The check binds without ``SO_REUSEPORT``, which fails against
    any socket bound there, ``SO_REUSEPORT`` or not."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``: every worker binds one, and the
    kernel balances new connections across the listening sockets of the group."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` with ``SO_REUSEPORT``, one per worker, after
    ``claim_port`` found the address free (``OSError`` if it is not)."""
    port = claim_port(host, port)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(sock := reuse_port_socket(host, port))
            sock.listen(BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _stop_with_parent() -> None:
    """SIGTERM to this worker once its parent is gone (killed outright, it could not stop us)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tether-parent-watch", daemon=True).start()


def restart_delay(previous: float, lived: float) -> float:
    """Seconds to wait before replacing a worker that ran ``lived`` seconds, the wait before its
    own start having been ``previous``: none after a steady run, else 1 s, then doubling to 30 s."""
    if lived >= STEADY_SECONDS:
        return 0.0
    return min(_MAX_DELAY, max(_FIRST_DELAY, previous * 2))


def _child(target: Callable[..., None], args: tuple[Any, ...], started: Any) -> None:
    _stop_with_parent()
    target(*args, started)


def run_workers(sockets: list[socket.socket], target: Callable[..., None], args: tuple[Any, ...]) -> int:
    """Run a spawned process of ``target(*args, sock, started)`` for each of ``sockets`` until
    SIGINT/SIGTERM; the exit code. A process that ends is replaced by one on the same socket.
    The sockets are closed here once stopping.

    ``target`` must be a module-level function (a spawned process imports it) that calls
    ``started.set()`` once it serves; a process that ends before that is a start-up failure
    and stops them all (exit 1)."""
    context = multiprocessing.get_context("spawn")
    stopping: list[int] = []

    def on_signal(number: int, _frame: object) -> None:
        stopping.append(number)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(sock: socket.socket) -> tuple[Any, Any]:
        started = context.Event()
        process = context.Process(target=_child, args=(target, (*args, sock), started), name="tether-worker")
        process.start()
        return process, started

    workers = [start(sock) for sock in sockets]
    began = [time.monotonic()] * len(workers)
    delays = [0.0] * len(workers)  # the wait before each slot's current worker started
    due: dict[int, float] = {}  # slots whose replacement waits, and until when
    code = 0
    try:
        while not stopping:
            now = time.monotonic()
            timeout = min([0.5, *(max(0.0, at - now) for at in due.values())])
            wait([process.sentinel for i, (process, _) in enumerate(workers) if i not in due], timeout=timeout)
            for i, (process, started) in enumerate(workers):
                now = time.monotonic()
                if stopping or (i not in due and process.is_alive()):
                    continue
                if i in due:
                    if now >= due[i]:
                        del due[i]
                        workers[i], began[i] = start(sockets[i]), now
                    continue
                if not started.is_set():
                    print(f"worker {process.pid} did not start (exit {process.exitcode}): stopping", file=sys.stderr)
                    stopping.append(0)
                    code = 1
                    break
                delays[i] = restart_delay(delays[i], now - began[i])
                print(f"worker {process.pid} ended (exit {process.exitcode}): starting another"
                      + (f" in {delays[i]:.0f} s" if delays[i] else ""), file=sys.stderr)  # fmt: skip
                if delays[i]:
                    due[i] = now + delays[i]
                else:
                    workers[i], began[i] = start(sockets[i]), now
    finally:
        # the parent's copies first: a listening socket closes when its worker stops listening, so new
        # connections are refused (or go to a worker still serving) instead of waiting in its backlog
        for sock in sockets:
            sock.close()
        _stop([process for process, _ in workers])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _stop(processes: list[Any]) -> None:
    """SIGTERM (uvicorn's graceful stop: requests in flight finish), then SIGKILL for any still running."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + _STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
