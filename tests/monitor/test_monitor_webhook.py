"""The webhook action against a real loopback receiver: retried, bounded, never blocking."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from receiver import Receiver

from tether.monitor.webhook import WebhookSender

PAYLOAD = {"type": "tether.alert", "detector": "dpop_replay", "severity": "high", "agent": "spiffe://a/b"}


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_webhook_is_retried_after_a_failed_attempt() -> None:
    async def main(receiver: Receiver) -> None:
        sender = WebhookSender(receiver.url, timeout=5, retries=3, backoff=0.01)
        sender.start()
        try:
            assert sender.submit(PAYLOAD) is True
            await until(lambda: sender.delivered == 1, "the delivery")
        finally:
            await sender.stop()
        assert receiver.attempts == [PAYLOAD, PAYLOAD] and sender.failed == 0
        assert all(ct.startswith("application/json") for ct in receiver.content_types)

    with Receiver(fail_first=1) as receiver:
        asyncio.run(main(receiver))


def test_BCP_13_webhook_gives_up_after_the_retries_and_never_logs_the_url_path(caplog: pytest.LogCaptureFixture) -> None:
    async def main(receiver: Receiver) -> None:
        sender = WebhookSender(receiver.url, timeout=5, retries=2, backoff=0.01)
        sender.start()
        try:
            sender.submit(PAYLOAD)
            await until(lambda: sender.failed == 1, "giving up")
        finally:
            await sender.stop()
        assert len(receiver.attempts) == 3 and sender.delivered == 0

    with caplog.at_level(logging.WARNING, logger="tether.monitor"), Receiver(fail_first=99, status=503) as receiver:
        asyncio.run(main(receiver))
    messages = [r.getMessage() for r in caplog.records]
    assert any("giving up after 3 attempts" in m and "status 503" in m for m in messages)
    assert all("s3cr3t" not in m and "/hooks" not in m for m in messages)
    assert any(m.startswith(f"webhook http://127.0.0.1:{receiver.server.server_address[1]}:") for m in messages)


def test_webhook_to_a_hanging_receiver_never_blocks_and_drops_when_full(caplog: pytest.LogCaptureFixture) -> None:
    async def main(receiver: Receiver) -> None:
        sender = WebhookSender(receiver.url, timeout=30, retries=0, queue_size=2)
        sender.start()
        try:
            first = [sender.submit({**PAYLOAD, "n": i}) for i in range(2)]
            await until(lambda: len(receiver.attempts) == 1, "the first delivery to hang")
            # the worker is stuck on the first; one slot free, then the queue is full
            later = [sender.submit({**PAYLOAD, "n": i}) for i in range(2, 6)]
            assert first == [True, True] and later == [True, False, False, False]
            assert sender.dropped == 3
        finally:
            await sender.stop()

    with caplog.at_level(logging.ERROR, logger="tether.monitor"), Receiver(hang=True) as receiver:
        asyncio.run(main(receiver))
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 3


def test_webhook_to_a_closed_port_is_a_logged_failure() -> None:
    async def main() -> None:
        with Receiver() as receiver:
            url = receiver.url
        sender = WebhookSender(url, timeout=2, retries=1, backoff=0.01)
        sender.start()
        try:
            sender.submit(PAYLOAD)
            await until(lambda: sender.failed == 1, "the failure")
        finally:
            await sender.stop()

    asyncio.run(main())
