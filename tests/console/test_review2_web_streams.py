"""Review 2: one human cannot take every live-view slot of the console (bounded work per human).

The stream cap (``MAX_STREAMS`` per process) bounds the store polling, but one viewer opening
that many task pages (or scripting it) left every other operator without live updates until
their sessions went idle. A human holds at most ``MAX_STREAMS_PER_HUMAN``; others still get one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest
from consolekit import Browser, RunningConsole, running_console

from helpers import create_task
from tether.console.live import MAX_STREAMS_PER_HUMAN
from tether.console.web import COOKIE


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review2-streams")) as running:
        yield running


def _stream(browser: Browser) -> httpx.Client:
    return httpx.Client(base_url=browser.console.url, timeout=httpx.Timeout(10.0), trust_env=False,
                        headers={"Cookie": f"{COOKIE}={browser.cookie}"})  # fmt: skip


def test_one_human_holds_at_most_max_streams_per_human_and_others_still_get_theirs(console: RunningConsole) -> None:
    task = create_task(console.sts)
    path = f"/tasks/{task['id']}/events"
    greedy = [console.login("viewer", "console:greedy") for _ in range(2)]  # two sessions, one human
    other = console.login("viewer", "console:other")
    with contextlib.ExitStack() as streams:
        for n in range(MAX_STREAMS_PER_HUMAN):
            client = streams.enter_context(_stream(greedy[n % 2]))
            assert streams.enter_context(client.stream("GET", path)).status_code == 200
        client = streams.enter_context(_stream(greedy[1]))
        refused = streams.enter_context(client.stream("GET", path))  # a stream, so a wrong 200 fails at once
        assert refused.status_code == 429 and "too many live views" in refused.read().decode()
        with _stream(other) as http, http.stream("GET", path) as theirs:
            assert theirs.status_code == 200
