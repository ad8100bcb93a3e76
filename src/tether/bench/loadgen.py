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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = ["Result", "build_request", "run_load"]


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

    def as_json(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "elapsed": self.elapsed,
            "sent": self.sent,
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
            break
    if length:
        await reader.readexactly(length)
    return status


async def run_load(host: str, port: int, requests: list[bytes], *, concurrency: int, duration: float) -> Result:
    """Send ``requests`` (each at most once) from ``concurrency`` connections for up to ``duration`` seconds."""
    result = Result()
    queue = iter(requests)
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                request = next(queue, None)
                if request is None:
                    return
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.sent += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    requests = [bytes.fromhex(r) for r in spec["requests"]]
    result = asyncio.run(
        run_load(spec["host"], spec["port"], requests, concurrency=spec["concurrency"], duration=spec["duration"])
    )
    Path(out_path).write_text(json.dumps(result.as_json()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
