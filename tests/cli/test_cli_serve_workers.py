"""``tether serve --workers N``: a listening socket per worker, connections spread across them, and
an address already in use refused (``tether.cli.workers``).

Which process owns which socket is read from the kernel (``/proc/net/tcp`` and each process's
file descriptors), so the tests see what a client gets, not what the code meant to do.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from cli_support import serving, tether

from helpers import free_port
from tether.cli.workers import STEADY_SECONDS, claim_port, restart_delay

LISTEN, ESTABLISHED = "0A", "01"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template")
    result = tether("init", "--dir", str(directory), "--issuer", "http://127.0.0.1:8700")
    assert result.returncode == 0, result.stderr
    return directory


def _deployment(template: Path, target: Path) -> tuple[Path, int]:
    shutil.copytree(template, target)
    port = free_port()
    config = target / "tether.toml"
    config.write_text(config.read_text().replace("8700", str(port)))
    return config, port


def _inodes(port: int, state: str) -> set[int]:
    """The sockets bound to local ``port`` in ``state`` (TCP over IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                found.add(int(fields[9]))
    return found


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return tree


def _holders(port: int, state: str, pids: set[int]) -> dict[int, set[int]]:
    """Socket inode → the processes (among ``pids``) holding it."""
    wanted, holders = _inodes(port, state), collections.defaultdict(set)
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in wanted:
                holders[int(target[8:-1])].add(pid)
    return dict(holders)


def _owners(port: int, state: str, pids: set[int]) -> dict[int, int]:
    """Socket inode → the process (among ``pids``) holding it, for sockets only one of them holds."""
    return {inode: next(iter(held)) for inode, held in _holders(port, state, pids).items() if len(held) == 1}


def _workers(parent: int) -> set[int]:
    """The worker processes of the server ``parent`` (its children holding a socket of its port)."""
    return _descendants(parent) - {parent}


def _serving_workers(url: str, port: int, parent: int, count: int, *, besides: frozenset[int] = frozenset()) -> set[int]:
    """Once ``count`` workers (none in ``besides``) have answered requests: those workers. The parent
    holds the listening sockets, so a worker holding one may still be starting; a worker that
    accepted a connection and answered on it has started."""
    deadline = time.monotonic() + 60
    while True:
        clients = [httpx.Client(trust_env=False, timeout=10) for _ in range(16)]
        try:
            for client in clients:
                with contextlib.suppress(httpx.TransportError):
                    client.get(url + "/healthz")  # kept alive: the connection shows who accepted it
            serving = set(_owners(port, ESTABLISHED, _workers(parent)).values()) - besides
        finally:
            for client in clients:
                client.close()
        if len(serving) >= count:
            time.sleep(0.5)  # for the worker to tell its parent it started (``tether.cli.main._announce``)
            return serving
        assert time.monotonic() < deadline, f"{count} workers never answered: {serving}"
        time.sleep(0.05)


def test_each_worker_listens_on_its_own_socket_and_the_kernel_spreads_connections(template: Path, tmp_path: Path) -> None:
    config, port = _deployment(template, tmp_path / "d")
    url = f"http://127.0.0.1:{port}"
    with serving(config, url, log=tmp_path / "serve.log", args=("--workers", "2"), timeout=60) as proc:
        workers = _serving_workers(url, port, proc.pid, 2)
        listeners = _holders(port, LISTEN, _descendants(proc.pid))
        assert sorted(len(held - {proc.pid}) for held in listeners.values()) == [1, 1], "a socket per worker"
        assert {pid for held in listeners.values() for pid in held} == {proc.pid, *workers}, "held by the parent too"
        clients = [httpx.Client(trust_env=False, timeout=10) for _ in range(64)]
        try:
            assert all(client.get(url + "/healthz").status_code == 200 for client in clients)  # kept alive
            served = collections.Counter(_owners(port, ESTABLISHED, workers).values())
        finally:
            for client in clients:
                client.close()
    assert sum(served.values()) == 64
    assert len(served) == 2 and min(served.values()) >= 8, f"connections per worker: {dict(served)}"
    assert not _inodes(port, LISTEN), "the workers stopped with the server"


@pytest.mark.parametrize("reuse_port", [False, True])
def test_workers_refuse_an_address_in_use(template: Path, tmp_path: Path, reuse_port: bool) -> None:
    """Even by a socket that set ``SO_REUSEPORT`` (another ``tether serve --workers``): the workers
    would otherwise join its group and share its connections."""
    config, port = _deployment(template, tmp_path / "d")
    with socket.socket() as busy:
        if reuse_port:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = tether("serve", "--config", str(config), "--workers", "2", timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def _issuers(url: str, n: int) -> collections.Counter[str]:
    """The issuer each of ``n`` new connections is answered with (the kernel spreads them across the workers)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        with httpx.Client(trust_env=False, timeout=10) as client:
            seen[client.get(url + "/.well-known/oauth-authorization-server").json()["issuer"]] += 1
    return seen


def test_a_restarted_worker_serves_the_configuration_the_server_started_with(template: Path, tmp_path: Path) -> None:
    """tether.toml is edited while the server runs (for the next restart), then a worker dies: its
    replacement read the edited file, and the server answered with two configurations at once —
    another issuer, other policies or another store, by the luck of a connection's hash."""
    config, port = _deployment(template, tmp_path / "d")
    url = f"http://127.0.0.1:{port}"
    with serving(config, url, log=tmp_path / "serve.log", args=("--workers", "2"), timeout=60) as proc:
        workers = _serving_workers(url, port, proc.pid, 2)
        (issuer,) = _issuers(url, 4)
        config.write_text(config.read_text().replace(f'issuer = "{url}"\n', f'issuer = "{url}/edited"\n', 1))
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        _serving_workers(url, port, proc.pid, 2, besides=frozenset({victim}))
        answered = _issuers(url, 48)
    assert answered == {issuer: 48}, f"the workers answered with: {dict(answered)}"
    # it had served for seconds, not a steady minute: its replacement waited (restart_delay)
    assert f"worker {victim} ended (exit -9): starting another in 1 s" in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize(
    ("previous", "lived", "delay"),
    [
        (0.0, STEADY_SECONDS, 0.0),  # served a steady minute: replaced at once
        (30.0, STEADY_SECONDS + 1, 0.0),  # and the crash loop it came out of is forgotten
        (0.0, 0.1, 1.0),  # ended right after it started: the first wait
        (0.0, STEADY_SECONDS - 0.1, 1.0),
        (1.0, 0.1, 2.0),
        (2.0, 5.0, 4.0),
        (16.0, 0.1, 30.0),  # doubling, capped
        (30.0, 0.1, 30.0),
    ],
)
def test_a_worker_that_keeps_ending_soon_after_it_started_is_replaced_ever_later(
    previous: float, lived: float, delay: float
) -> None:
    assert restart_delay(previous, lived) == delay


def test_the_port_stays_claimed_while_every_worker_restarts(template: Path, tmp_path: Path) -> None:
    """Both workers die at once: until their replacements listen, the address must not look free to
    a second ``tether serve`` (whose workers would join this server's ``SO_REUSEPORT`` group, or whose
    bind would make the replacements fail and the server stop)."""
    config, port = _deployment(template, tmp_path / "d")
    url = f"http://127.0.0.1:{port}"
    with serving(config, url, log=tmp_path / "serve.log", args=("--workers", "2"), timeout=60) as proc:
        workers = _serving_workers(url, port, proc.pid, 2)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        free = []
        deadline = time.monotonic() + 60
        while len(set(_holders(port, LISTEN, _workers(proc.pid)).keys())) < 2 or _workers(proc.pid) & workers:
            assert time.monotonic() < deadline, "the workers were not replaced"
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                claim_port("127.0.0.1", port)
            except OSError:
                continue
            free.append(time.monotonic())
            break
        assert free == [], "the address looked free while the workers restarted"
        _serving_workers(url, port, proc.pid, 2, besides=frozenset(workers))


def test_workers_stop_when_the_parent_is_killed(template: Path, tmp_path: Path) -> None:
    config, port = _deployment(template, tmp_path / "d")
    url = f"http://127.0.0.1:{port}"
    with serving(config, url, log=tmp_path / "serve.log", args=("--workers", "2"), timeout=60) as proc:
        workers = _serving_workers(url, port, proc.pid, 2)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while [pid for pid in workers if Path(f"/proc/{pid}").exists()] or _inodes(port, LISTEN):
            assert time.monotonic() < deadline, "the workers outlived their parent"
            time.sleep(0.05)
