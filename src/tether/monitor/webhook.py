"""The ``webhook`` action: alerts POSTed as JSON from a bounded background queue.

Nothing waits for the receiver: ``submit`` only enqueues (a full queue drops the alert
with a logged error — the alert itself is already in the audit log), and one worker
sends, retrying a failed delivery with exponential backoff up to ``retries`` more times,
each attempt bounded by ``timeout``. A slow or dead receiver therefore delays only later
webhooks, never a token request nor the monitor. The URL's path and query can carry a
secret (many chat webhooks do), so logs name only its scheme and host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.background import cancel

__all__ = ["WebhookSender"]

log = logging.getLogger("tether.monitor")


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}"


class WebhookSender:
    def __init__(self, url: str, *, timeout: float, retries: int, backoff: float = 0.5, max_backoff: float = 30.0,
                 queue_size: int = 1000) -> None:  # fmt: skip
        self.url = url
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._worker is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), follow_redirects=False, trust_env=False)
            self._worker = asyncio.create_task(self._run(), name="tether-monitor-webhook")

    async def stop(self) -> None:
        await cancel(self._worker)
        self._worker = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def submit(self, payload: Mapping[str, Any]) -> bool:
        """Queue ``payload`` for delivery; False (and an error logged) if the queue is full."""
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("webhook %s: queue full, alert dropped (it is in the audit log)", _where(self.url))
            return False
        return True

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._deliver(payload)
            finally:
                self._queue.task_done()

    async def _deliver(self, payload: Mapping[str, Any]) -> None:
        assert self._http is not None
        for attempt in range(self.retries + 1):
            problem = await self._attempt(payload)
            if problem is None:
                self.delivered += 1
                return
            if attempt < self.retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                log.warning("webhook %s: %s; retry %d in %.1fs", _where(self.url), problem, attempt + 1, delay)
                await asyncio.sleep(delay)
            else:
                self.failed += 1
                log.error("webhook %s: %s; giving up after %d attempts", _where(self.url), problem, attempt + 1)

    async def _attempt(self, payload: Mapping[str, Any]) -> str | None:
        assert self._http is not None
        try:
            response = await self._http.post(self.url, json=dict(payload))
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"status {response.status_code}"
