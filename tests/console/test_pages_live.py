"""``/tasks/{id}/events``: live updates across processes, bounded, and only for a live session (WEB-01)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest
from consolekit import Browser, RunningConsole, running_console
from pageskit import RESOURCES, end_by_admin_api, make_lineage, sse_events

from helpers import create_task
from tether.console import live
from tether.console.live import MAX_STREAMS, MAX_STREAMS_PER_HUMAN
from tether.console.web import COOKIE


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("pages-live"), extra_toml=RESOURCES) as running:
        yield running


def _stream(browser: Browser) -> httpx.Client:
    """A client carrying the browser's session cookie, for a long-lived stream of its own."""
    return httpx.Client(base_url=browser.console.url, timeout=httpx.Timeout(10.0), trust_env=False,
                        headers={"Cookie": f"{COOKIE}={browser.cookie}"})  # fmt: skip


def test_stream_delivers_the_revoked_jtis_when_the_sts_admin_api_ends_the_task(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    viewer = console.login("viewer")
    with _stream(viewer) as http, http.stream("GET", f"/tasks/{lineage.id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
        kind, first = next(events)
        assert kind == "task" and first == {"state": "active", "revoked": [], "live": 3}
        end_by_admin_api(console.sts, lineage.id, "complete")  # the STS's runtime, not the console's
        kind, update = next(events)
    assert kind == "task" and update["state"] == "completed" and update["live"] == 0
    assert sorted(update["revoked"]) == sorted(lineage.jtis.values())


def test_stream_ends_when_the_session_logs_out(console: RunningConsole) -> None:
    task = create_task(console.sts)
    viewer = console.login("viewer")
    csrf = viewer.csrf()
    with _stream(viewer) as http, http.stream("GET", f"/tasks/{task['id']}/events") as response:
        events = sse_events(response.iter_lines())
        assert next(events)[0] == "task"
        assert viewer.post("/logout", {"csrf": csrf}).status_code == 303
        assert list(events) == []  # the server closed the stream (no change, no event) within a poll


def test_stream_needs_a_session(console: RunningConsole) -> None:
    task = create_task(console.sts)
    anonymous = console.browser()
    response = anonymous.get(f"/tasks/{task['id']}/events")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_at_most_max_streams_per_process(console: RunningConsole) -> None:
    task = create_task(console.sts)
    viewer = console.login("viewer")
    viewers = [console.login("viewer", f"console:v{n}") for n in range(MAX_STREAMS // MAX_STREAMS_PER_HUMAN)]
    with contextlib.ExitStack() as streams:
        for n in range(MAX_STREAMS):  # spread over humans: each holds at most MAX_STREAMS_PER_HUMAN
            client = streams.enter_context(_stream(viewers[n % len(viewers)]))
            response = streams.enter_context(client.stream("GET", f"/tasks/{task['id']}/events"))
            assert response.status_code == 200
        refused = viewer.get(f"/tasks/{task['id']}/events")
        assert refused.status_code == 503 and "too many live views" in refused.text
    # the slots come back when the clients go away (the server notices a disconnect within a poll)
    for _ in range(50):
        with _stream(viewer) as http, http.stream("GET", f"/tasks/{task['id']}/events") as again:
            if again.status_code == 200:
                break
        time.sleep(0.2)
    else:
        pytest.fail("stream slots were not released after the clients disconnected")


def test_stream_sends_comment_heartbeats(console: RunningConsole, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "HEARTBEAT", 0.2)  # read by each loop of the server's stream (same process)
    task = create_task(console.sts)
    viewer = console.login("viewer")
    with _stream(viewer) as http, http.stream("GET", f"/tasks/{task['id']}/events") as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(8)]
    assert ": heartbeat" in seen and any(line.startswith("event: task") for line in seen)


def test_web01_a_stream_is_not_activity_and_ends_with_the_idle_session(console: RunningConsole) -> None:
    """Runs last in this module: it moves the shared clock past a session's idle timeout."""
    task = create_task(console.sts)
    viewer = console.login("viewer")
    idle = console.runtime.config.console.session_idle
    console.sts.clock.advance(idle - 5)
    assert viewer.get("/tasks").status_code == 200  # activity: the idle clock restarts here
    console.sts.clock.advance(idle - 5)
    with _stream(viewer) as http, http.stream("GET", f"/tasks/{task['id']}/events") as response:
        assert response.status_code == 200
        for value in response.headers.get_list("set-cookie"):  # what a browser keeps from the stream
            if value.startswith(COOKIE + "="):
                viewer.cookie = value.split("=", 1)[1].split(";", 1)[0]
        events = sse_events(response.iter_lines())
        assert next(events)[0] == "task"
        console.sts.clock.advance(10)  # the session is now idle too long
        assert list(events) == []  # and the stream ends with it
    assert viewer.get("/").status_code == 303  # the stream did not keep the session alive
