"""Who may read the revocation feed and the policies, and how much of the STS a subscriber may hold (issue 12).

Finding 11: ``/revocations`` names task and token ids and ``/policies`` is the whole Cedar
set; finding 4: ``/revocations/stream`` was an unauthenticated, uncapped lever on the
store. Callers now authenticate as at ``/introspect`` (AUX-04: a workload JWT as an RFC
7523 client assertion in a form body, spent once) and must be registered (an admin, a
resource principal, or ``[revocations] subscribers``); streams are capped per caller and
globally, heartbeats are bounded and streams end. Everything over real HTTP on loopback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    ADMIN,
    AGENT,
    FEED_SUBSCRIBER,
    QUIET_MONITOR,
    SVC_B,
    SVC_RS,
    Client,
    RunningSts,
    admin_token,
    create_task,
    running_sts,
)
from tether.config import parse_config
from tether.errors import ConfigError
from tether.sts.feed import FeedSettings

X = "http://svc-x.test"
REGISTERED = f'[[resources]]\nuri = "{X}"\nprincipals = ["{SVC_B}"]\n'
PATHS = ("/revocations", "/revocations/stream", "/policies")
DEADLINE = 10.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    """Admins, SVC_B (a resource principal) and SVC_RS (a listed subscriber) may follow the feed."""
    extra = REGISTERED + "\n" + FEED_SUBSCRIBER + "\n" + QUIET_MONITOR
    with running_sts(tmp_path_factory.mktemp("feed-access"), extra_toml=extra) as server:
        yield server


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[RunningSts]:
    """Two streams per caller, three in all, each living three seconds."""
    caps = f"""
[revocations]
subscribers = ["{SVC_RS}", "{SVC_B}"]
max_streams = 3
max_streams_per_caller = 2
stream_seconds = 3
"""
    with running_sts(tmp_path, extra_toml=caps) as server:
        yield server


def _http(sts: RunningSts) -> httpx.Client:
    return Client(sts).http


def _events(response: httpx.Response, deadline: float) -> Iterator[dict[str, Any]]:
    """SSE blocks as ``{"event", "id"?, "data"}`` (``data`` parsed), read independently of the SDK."""
    block: dict[str, Any] = {}
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "stream deadline passed"
        if line == "":
            if block:
                yield block
            block = {}
            continue
        name, _, value = line.partition(": ")
        block[name] = json.loads(value) if name == "data" else value


def _read(sts: RunningSts, path: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``form`` to ``path``: the status and the JSON body, or a stream's first event."""
    with _http(sts).stream("POST", sts.url + path, data=form, headers=headers) as response:
        if response.status_code == 200 and path.endswith("/stream"):
            return 200, next(_events(response, time.monotonic() + DEADLINE))
        response.read()
        return response.status_code, response.json()


@dataclass
class Stream:
    """An open ``POST /revocations/stream`` and its events. Holding the one iterator matters:
    an abandoned httpx line iterator closes the connection."""

    response: httpx.Response
    events: Iterator[dict[str, Any]]


@contextlib.contextmanager
def _stream(sts: RunningSts, caller: str, **form: str) -> Iterator[Stream]:
    with _http(sts).stream("POST", sts.url + "/revocations/stream", data=sts.client_auth(caller, **form)) as response:
        stream = Stream(response, _events(response, time.monotonic() + 20))
        yield stream  # held here until the block ends


def _refusals(sts: RunningSts) -> list[Any]:
    return [r for r in sts.audit() if r.kind == "feed.refused"]


def _ended_task(sts: RunningSts) -> str:
    task = create_task(sts)
    client, token = admin_token(sts)
    assert client.api("POST", f"/tasks/{task['id']}/complete", token).status_code == 200
    return str(task["id"])


# -- authentication -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_AUX_04_feed_and_policies_refuse_unauthenticated_callers(env: RunningSts, path: str) -> None:
    before = len(_refusals(env))
    http = _http(env)
    attempts = [
        http.get(env.url + path, params={"after": "0"}),  # the old, unauthenticated form
        http.post(env.url + path, data={"after": "0"}),  # no assertion at all
        http.post(env.url + path, data=env.client_auth(ADMIN, client_assertion_type="urn:x")),  # not jwt-bearer
        http.post(env.url + path, data=env.client_auth(ADMIN, client_assertion="e30.e30.sig")),  # not a workload JWT
    ]
    for response in attempts:
        assert response.status_code == 401, response.text
        assert set(response.json()) == {"error", "error_description"}  # no entries, no policies
        assert response.json()["error"] == "invalid_client"
    assert "client_assertion" in attempts[0].json()["error_description"]  # it says how to get in
    refusals = _refusals(env)[before:]
    assert [r.error for r in refusals] == ["invalid_client"] * len(attempts)
    assert all(r.detail["path"] == path for r in refusals)
    # counted under the endpoint's own name, GET or POST (the metric's labels stay a bounded set)
    label = path.strip("/").replace("/", "_")
    assert f'tether_refusals_total{{endpoint="{label}",error="invalid_client"}}' in http.get(env.url + "/metrics").text
    # positive control: the same endpoint, a registered workload's fresh assertion
    assert _read(env, path, env.client_auth(SVC_B))[0] == 200


@pytest.mark.parametrize("path", PATHS)
def test_an_authenticated_but_unregistered_workload_is_access_denied(env: RunningSts, path: str) -> None:
    status, body = _read(env, path, env.client_auth(AGENT))
    assert (status, body["error"]) == (403, "access_denied")
    assert set(body) == {"error", "error_description"}
    record = _refusals(env)[-1]
    assert (record.error, record.detail["caller"], record.detail["path"]) == ("access_denied", AGENT, path)
    # positive control: an admin, a resource principal and a listed subscriber all may
    for caller in (ADMIN, SVC_B, SVC_RS):
        assert _read(env, path, env.client_auth(caller))[0] == 200, caller


def test_a_replayed_client_assertion_is_refused(env: RunningSts) -> None:
    form = env.client_auth(SVC_RS)
    assert _read(env, "/revocations", form)[0] == 200
    for path in PATHS:  # one namespace for every endpoint, as at /token and /introspect
        status, body = _read(env, path, form)
        assert (status, body["error"]) == (401, "invalid_client"), path
        assert "already been used" in body["error_description"]
    assert _read(env, "/revocations", env.client_auth(SVC_RS))[0] == 200  # positive control: a fresh one


def test_a_registered_subscriber_gets_entries_and_heartbeats_and_resumes(env: RunningSts) -> None:
    first = _ended_task(env)
    status, page = _read(env, "/revocations", env.client_auth(SVC_RS))
    assert status == 200
    (seq,) = [e["seq"] for e in page["revocations"] if e["value"] == first]
    with _stream(env, SVC_RS, after=str(seq - 1), heartbeat="0.5") as opened:
        assert opened.response.status_code == 200
        assert opened.response.headers["content-type"].startswith("text/event-stream")
        events = opened.events
        entry = next(events)
        assert (entry["event"], entry["id"], entry["data"]["value"]) == ("revocation", str(seq), first)
        beat = next(events)
        assert beat["event"] == "heartbeat" and beat["data"]["cursor"] == seq
        assert beat["data"]["policy_version"] == env.sts.ctx.policy.version
        second = _ended_task(env)  # pushed on the open stream
        live = next(e for e in events if e["event"] == "revocation")
        assert live["data"]["value"] == second and int(live["id"]) > seq
    # Last-Event-ID resumes after the last entry seen: the first is not sent again
    headers = {"Last-Event-ID": str(seq)}
    status, resumed = _read(env, "/revocations/stream", env.client_auth(SVC_RS), headers=headers)
    assert status == 200 and resumed["data"]["value"] == second


# -- caps, heartbeats, lifetime -------------------------------------------------------------------
def _opened(stream: Stream) -> bool:
    """The stream answered 200 and sent its first heartbeat (its backlog is empty here)."""
    return stream.response.status_code == 200 and next(stream.events)["event"] == "heartbeat"


def _refused(sts: RunningSts, caller: str) -> dict[str, Any]:
    with _stream(sts, caller) as stream:
        response = stream.response
        response.read()
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "5"
        body: dict[str, Any] = response.json()
    assert body["error"] == "too_many_requests"
    return body


def test_streams_are_capped_per_caller_and_globally_and_a_closed_stream_frees_its_slot(capped: RunningSts) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(_stream(capped, SVC_RS, heartbeat="0.5"))
        assert _opened(first) and _opened(stack.enter_context(_stream(capped, SVC_RS, heartbeat="0.5")))
        assert "this caller" in _refused(capped, SVC_RS)["error_description"]  # its third
        # another caller still gets one: the cap is per authenticated principal ...
        assert _opened(stack.enter_context(_stream(capped, SVC_B, heartbeat="0.5")))
        # ... until the server-wide cap (3) is reached
        assert "are open" in _refused(capped, SVC_B)["error_description"]
        assert [r.error for r in _refusals(capped)] == ["too_many_requests"] * 2
        first.response.close()  # the client goes away; the server notices at its next heartbeat

        def reopened() -> bool:
            with _stream(capped, SVC_RS) as again:
                return _opened(again)

        deadline = time.monotonic() + DEADLINE
        while not reopened():
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
            time.sleep(0.2)


def _heartbeat_times(sts: RunningSts, heartbeat: str) -> list[float]:
    """Every heartbeat's server time over a whole stream (it ends by itself: ``stream_seconds``)."""
    with _stream(sts, SVC_RS, heartbeat=heartbeat) as stream:
        assert stream.response.status_code == 200
        return [e["data"]["time"] for e in stream.events if e["event"] == "heartbeat"]


def test_a_tiny_heartbeat_is_clamped_and_every_stream_ends(capped: RunningSts) -> None:
    tiny = _heartbeat_times(capped, "0.001")  # returns only because the stream ended (3 s)
    gaps = [b - a for a, b in itertools.pairwise(tiny)]
    # a heartbeat every millisecond would be thousands; the floor is 0.5 s (to within half a 0.25 s tick)
    assert 2 <= len(tiny) <= 3 / 0.375 + 2, tiny
    assert min(gaps) >= 0.3, gaps
    # positive control on the same server: a heartbeat within the bounds is what the stream keeps
    slow = _heartbeat_times(capped, "2")
    assert all(b - a >= 1.7 for a, b in itertools.pairwise(slow)), slow
    for bad in ("nan", "soon"):
        with _stream(capped, SVC_RS, heartbeat=bad) as refused:
            refused.response.read()
            assert (refused.response.status_code, refused.response.json()["error"]) == (400, "invalid_request")


def test_an_open_stream_gives_its_admission_slot_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream request is admitted like any other (see tests/observe), but does not keep the slot."""
    monkeypatch.setenv("TETHER_SERVER_MAX_INFLIGHT", "1")
    with running_sts(tmp_path, extra_toml=FEED_SUBSCRIBER) as sts, _stream(sts, SVC_RS) as stream:
        assert _opened(stream)
        for _ in range(3):  # the one slot is free for ordinary requests while the stream stays open
            assert _http(sts).get(sts.url + "/jwks").status_code == 200


# -- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"subscribers": ["not a principal"]}, "revocations.subscribers"),
        ({"subscribers": "spiffe://tether.local/svc/rs"}, "revocations.subscribers"),
        ({"max_streams": 0}, "revocations.max_streams"),
        ({"max_streams_per_caller": -1}, "revocations.max_streams_per_caller"),
        ({"stream_seconds": 0}, "revocations.stream_seconds"),
        ({"streams": 5}, "revocations.streams"),
    ],
)
def test_revocations_settings_are_validated(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"revocations": section}, path=None, env={})
    assert refused.value.key == key
    # positive control: the defaults, and a listed subscriber, load
    settings = FeedSettings.from_config(parse_config({"revocations": {"subscribers": [SVC_RS]}}, path=None, env={}))
    assert (settings.max_streams, settings.max_per_caller, settings.stream_seconds) == (1000, 20, 300.0)
    assert settings.may_follow(SVC_RS) and settings.may_follow(ADMIN) and not settings.may_follow(AGENT)
