"""The load generator: a separate process that replays pre-built HTTP requests over keep-alive connections.

Everything a request needs that costs CPU on the client side — minting JWT-SVIDs,
signing DPoP proofs — is done *before* the clock starts, so the measured window holds
only sending bytes and reading responses. The HTTP client is a minimal HTTP/1.1 one on
asyncio streams: it is far cheaper per request than a general client, so the server,
not the load generator, is what saturates.

    python -m tether.bench.loadgen SPEC.json RESULT.json
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tether.bench.procstat import core_busy_seconds, cpu_seconds

__all__ = ["Result", "build_request", "form_request", "run_generated", "run_load"]


def build_request(method: str, url: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def form_request(url: str, form: dict[str, str], headers: dict[str, str]) -> bytes:
    body = urlencode(form).encode()
    return build_request("POST", url, {**headers, "Content-Type": "application/x-www-form-urlencoded"}, body)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    sent: int = 0
    #: with a ``watch`` spec: the server's CPU seconds and its core's busy seconds in the window
    server_cpu: float | None = None
    core_busy: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "elapsed": self.elapsed,
            "sent": self.sent,
            "server_cpu": self.server_cpu,
            "core_busy": self.core_busy,
        }


class _Watch:
    """The server's CPU and its core's busy time, read at the edges of the measured window."""

    def __init__(self, spec: dict[str, int] | None) -> None:
        self.spec = spec
        self.start = self._read()

    def _read(self) -> tuple[float, float] | None:
        if not self.spec:
            return None
        return cpu_seconds(self.spec["pid"]), core_busy_seconds(self.spec["core"])

    def finish(self, result: Result) -> None:
        end = self._read()
        if self.start is not None and end is not None:
            result.server_cpu, result.core_busy = end[0] - self.start[0], end[1] - self.start[1]


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response, framed by ``Content-Length`` or ``Transfer-Encoding: chunked``."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the final empty line
            pass
        return int(head[9:12]), headers, b"".join(parts)
    length = int(headers.get(b"content-length", b"0"))
    body = await reader.readexactly(length) if length else b""
    return int(head[9:12]), headers, body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status, _, _ = await _read_head(reader)
    return status


def tls_context(spec: dict[str, Any] | None) -> ssl.SSLContext | None:
    """``{"ca": PEM file, "cert": PEM file, "key": PEM file}`` → a client context (the client
    certificate is optional); ``None``: plain TCP."""
    if not spec:
        return None
    context = ssl.create_default_context(cafile=spec["ca"])
    if spec.get("cert"):
        context.load_cert_chain(spec["cert"], spec["key"])
    return context


async def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    duration: float,
    tls: ssl.SSLContext | None = None,
    new_connection: bool = False,
    watch: dict[str, int] | None = None,
) -> Result:
    """Send ``requests`` (each at most once) from ``concurrency`` connections for up to ``duration`` seconds.

    With ``tls`` the connections speak TLS (presenting a client certificate if the context has
    one); with ``new_connection`` every request opens its own connection, handshake included in
    its latency (``Connection: close`` is the caller's to put in the request). ``watch``
    (``{"pid": server, "core": its core}``) records their CPU over exactly this window."""
    result = Result()
    queue = iter(requests)
    deadline = time.perf_counter() + duration

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)

    async def worker() -> None:
        reader, writer = (None, None) if new_connection else await connect()
        try:
            while time.perf_counter() < deadline:
                request = next(queue, None)
                if request is None:
                    return
                started = time.perf_counter()
                if new_connection:
                    reader, writer = await connect()
                assert reader is not None and writer is not None
                writer.write(request)
                status = await _read_response(reader)
                if new_connection:
                    writer.close()
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.sent += 1
        finally:
            if writer is not None:
                writer.close()

    watching = _Watch(watch)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    watching.finish(result)
    return result


async def run_generated(spec: dict[str, Any]) -> Result:
    """Hop exchanges at a fixed ``rate`` for ``duration`` seconds, each proof signed just in time.

    For long runs (the memory soak) pre-building every request is impractical and the
    server nonce rotates, so this process holds its own DPoP key (it never leaves the
    process), performs its own session exchange first, and follows ``DPoP-Nonce``.
    """
    from tether.agent.proof import DPoPKey  # only this mode needs tether itself
    from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT

    key, url, host, port = DPoPKey(), spec["url"], spec["host"], spec["port"]
    token_url = url + "/token"
    nonce: str | None = None

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, form: dict[str, str]) -> tuple[int, bytes]:
        nonlocal nonce
        for _ in range(3):
            writer.write(form_request(token_url, form, {"DPoP": key.proof("POST", token_url, nonce=nonce)}))
            status, headers, body = await _read_head(reader)
            if b"dpop-nonce" in headers:
                nonce = headers[b"dpop-nonce"].decode()
            if not (status == 400 and b"use_dpop_nonce" in body):
                break
        return status, body

    first = await asyncio.open_connection(host, port)
    status, body = await exchange(
        *first,
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": spec["svid"],
            "subject_token_type": TOKEN_TYPE_JWT,
            "task": spec["task"],
        },
    )
    first[1].close()
    if status != 200:
        raise RuntimeError(f"session exchange failed: {status} {body[:300]!r}")
    hop = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": json.loads(body)["access_token"],
        "subject_token_type": TOKEN_TYPE_ACCESS,
        "resource": spec["audience"],
    }
    result = Result()
    interval = 1 / spec["rate"]
    started = time.perf_counter()
    deadline = started + spec["duration"]
    slots = iter(range(1, 1 << 62))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (due := started + next(slots) * interval) < deadline and time.perf_counter() < deadline:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = time.perf_counter()
                status, _ = await exchange(reader, writer, hop)
                result.latencies.append(time.perf_counter() - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.sent += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    result.elapsed = time.perf_counter() - started
    return result


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("mode") == "generate":
        Path(out_path).write_text(json.dumps(asyncio.run(run_generated(spec)).as_json()))
        return
    requests = [bytes.fromhex(r) for r in spec["requests"]]
    result = asyncio.run(
        run_load(
            spec["host"],
            spec["port"],
            requests,
            concurrency=spec["concurrency"],
            duration=spec["duration"],
            tls=tls_context(spec.get("tls")),
            new_connection=bool(spec.get("new_connection")),
            watch=spec.get("watch"),
        )
    )
    Path(out_path).write_text(json.dumps(result.as_json()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
