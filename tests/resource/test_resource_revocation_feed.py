"""Revocation push (issue 3): the STS feed, the resource server's subscription, fail-closed.

The STS publishes ``POST /revocations`` (``after=N``) and an SSE stream to registered
workloads; a service built with the resource SDK subscribes with its workload identity,
resumes from its cursor after a disconnect, refuses
revoked tokens and ended tasks, and refuses everything (503) once it has not heard
from the STS for longer than ``stale_after``. All over real HTTP on loopback. Waiting
for background work polls with a deadline; no latency figure is asserted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rskit import (
    RestartableSts,
    Served,
    call,
    claims_of,
    complete_task,
    hop_from,
    hop_token,
    redirected_client,
    serve,
    session_token,
    wait_until,
)

from helpers import (
    AGENT,
    FEED_SUBSCRIBER,
    JWT,
    JWT_BEARER,
    QUIET_MONITOR,
    SVC_B,
    SVC_RS,
    Client,
    RunningSts,
    admin_token,
    create_task,
    free_port,
    running_sts,
)
from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import parse_sse

DEADLINE = 5.0


# -- helpers ---------------------------------------------------------------------------------
def status(http: httpx.Client, served: Served, token: str, key: DPoPKey, *, now: float | None = None) -> tuple[int, str | None]:
    url = served.url + "/whoami"
    response = call(http, "GET", url, token, None, proof=key.proof("GET", url, access_token=token, now=now))
    error = response.json().get("error") if response.status_code != 200 else None
    return response.status_code, error


def wait_refused(http: httpx.Client, served: Served, token: str, key: DPoPKey, *, timeout: float = DEADLINE) -> None:
    """Poll until the service refuses ``token`` as revoked; anything but 200 before that fails."""

    def refused() -> bool:
        code, error = status(http, served, token, key)
        if code == 200:
            return False
        assert (code, error) == (401, "invalid_token"), (code, error)
        return True

    wait_until(refused, timeout=timeout, what=f"{served.url} to refuse a revoked token", step=0.01)


def revoke(http: httpx.Client, sts: RunningSts, token: str, caller: str = AGENT, *, url: str | None = None) -> None:
    form = {"token": token, "client_assertion": sts.svid(caller), "client_assertion_type": JWT_BEARER}
    response = http.post((url or sts.url) + "/revoke", data=form)
    assert response.status_code == 200, response.text


def feed(http: httpx.Client, sts: RunningSts, after: int | str = 0) -> dict[str, Any]:
    response = http.post(sts.url + "/revocations", data=sts.client_auth(after=str(after)))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stream(http: httpx.Client, sts: RunningSts, *, headers: dict[str, str] | None = None, **form: str) -> Any:
    """``POST /revocations/stream`` as the admin (a registered subscriber)."""
    return http.stream("POST", sts.url + "/revocations/stream", data=sts.client_auth(**form), headers=headers)


@pytest.fixture
def sts(tmp_path: Path) -> Iterator[RunningSts]:
    """A fresh STS whose resource servers subscribe as ``SVC_RS`` (``[revocations] subscribers``)."""
    with running_sts(tmp_path, extra_toml=FEED_SUBSCRIBER) as server:
        yield server


def rs_verifier(sts: RunningSts, url: str, *, clock: ManualClock | None = None, **fields: Any) -> Verifier:
    return Verifier(ResourceSettings(issuer=sts.url, resource=url, **fields), clock=clock, identity=sts.identity(SVC_RS))


# -- a shared STS with two services ----------------------------------------------------------
@dataclass
class FeedEnv:
    sts: RunningSts
    a: Served
    b: Served
    http: httpx.Client

    def task(self, **fields: Any) -> dict[str, Any]:
        return create_task(self.sts, **{"audiences": [self.a.url, self.b.url], "scopes": ["wiki:read"], **fields})


@pytest.fixture(scope="module")
def fenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedEnv]:
    pa, pb = free_port(), free_port()
    a_url, b_url = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    resources = f'[[resources]]\nuri = "{a_url}"\nprincipals = ["{SVC_B}"]\n'
    with (
        running_sts(tmp_path_factory.mktemp("feed"), extra_toml=resources + "\n" + QUIET_MONITOR) as sts,
        serve(Verifier(ResourceSettings(issuer=sts.url, resource=a_url), identity=sts.identity(SVC_B)), pa) as a,
        serve(Verifier(ResourceSettings(issuer=sts.url, resource=b_url), identity=sts.identity(SVC_B)), pb) as b,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        yield FeedEnv(sts, a, b, http)


def test_task_completion_is_pushed_and_refused_at_every_service(fenv: FeedEnv) -> None:
    task, other = fenv.task(), fenv.task()
    session, client = session_token(fenv.sts, task["id"])
    for_a, for_b = hop_from(client, session, fenv.a.url), hop_from(client, session, fenv.b.url)
    unrelated, unrelated_key = hop_token(fenv.sts, other["id"], fenv.a.url)
    key = client.key
    assert status(fenv.http, fenv.a, for_a, key) == (200, None)
    assert status(fenv.http, fenv.b, for_b, key) == (200, None)

    complete_task(fenv.sts, task["id"])
    wait_refused(fenv.http, fenv.a, for_a, key)
    wait_refused(fenv.http, fenv.b, for_b, key)
    assert task["id"] in fenv.a.verifier.feed.tasks  # type: ignore[union-attr]  # this verifier follows the feed
    # Positive control: the other task's token still works at the same service.
    assert status(fenv.http, fenv.a, unrelated, unrelated_key) == (200, None)


def test_AUX_05_revoking_one_token_refuses_its_tree_only(fenv: FeedEnv) -> None:
    task = fenv.task()
    session, client = session_token(fenv.sts, task["id"])
    key = client.key
    h1, h2, h3 = (hop_from(client, session, aud) for aud in (fenv.a.url, fenv.a.url, fenv.b.url))
    # Service B's identity is registered for A: it exchanges h1 for a token for B (a child of h1).
    b_client = Client(fenv.sts)
    response = b_client.hop(h1, fenv.b.url, actor_token=fenv.sts.svid(SVC_B), actor_token_type=JWT)
    assert response.status_code == 200, response.text
    child = response.json()["access_token"]
    assert claims_of(child)["act"] == {"sub": SVC_B}
    for served, token, holder in ((fenv.a, h1, key), (fenv.a, h2, key), (fenv.b, h3, key), (fenv.b, child, b_client.key)):
        assert status(fenv.http, served, token, holder) == (200, None)

    revoke(fenv.http, fenv.sts, h1)
    wait_refused(fenv.http, fenv.a, h1, key)
    wait_refused(fenv.http, fenv.b, child, b_client.key)
    # Siblings and the parent are untouched.
    assert status(fenv.http, fenv.a, h2, key) == (200, None)
    assert status(fenv.http, fenv.b, h3, key) == (200, None)
    h4 = hop_from(client, session, fenv.a.url)
    assert status(fenv.http, fenv.a, h4, key) == (200, None)


def test_revocations_json_pages_by_cursor(fenv: FeedEnv) -> None:
    start = feed(fenv.http, fenv.sts)["cursor"]
    assert feed(fenv.http, fenv.sts, start) == {"revocations": [], "cursor": start}
    task = fenv.task()
    session, client = session_token(fenv.sts, task["id"])
    tokens = [hop_from(client, session, fenv.a.url) for _ in range(3)]
    for token in tokens:
        revoke(fenv.http, fenv.sts, token)
    page = feed(fenv.http, fenv.sts, start)
    entries = page["revocations"]
    assert [e["value"] for e in entries] == [claims_of(t)["jti"] for t in tokens]
    assert [e["kind"] for e in entries] == ["jti"] * 3
    assert [e["exp"] for e in entries] == [claims_of(t)["exp"] for t in tokens]
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and seqs[0] > start and len(set(seqs)) == 3
    assert page["cursor"] == seqs[-1]
    assert all(set(e) == {"seq", "kind", "value", "exp", "at"} for e in entries)

    rest = feed(fenv.http, fenv.sts, seqs[0])
    assert [e["seq"] for e in rest["revocations"]] == seqs[1:]
    assert feed(fenv.http, fenv.sts, seqs[-1]) == {"revocations": [], "cursor": seqs[-1]}

    complete_task(fenv.sts, task["id"])
    (ended,) = feed(fenv.http, fenv.sts, seqs[-1])["revocations"]
    assert (ended["kind"], ended["value"], ended["exp"]) == ("task", task["id"], task["expires_at"])


@pytest.mark.parametrize("after", ["-1", "abc", "1" * 19, "1.5", ""])
def test_revocations_cursor_must_be_a_non_negative_integer(fenv: FeedEnv, after: str) -> None:
    response = fenv.http.post(fenv.sts.url + "/revocations", data=fenv.sts.client_auth(after=after or "x"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    with stream(fenv.http, fenv.sts, headers={"Last-Event-ID": after or "x"}) as refused:
        refused.read()
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    assert feed(fenv.http, fenv.sts, 0)["cursor"] >= 0


def _events(lines: Iterator[str], deadline: float) -> Iterator[dict[str, str]]:
    """Raw SSE framing, parsed here independently of the SDK: blocks of ``field: value`` lines."""
    block: dict[str, str] = {}
    for line in lines:
        if time.monotonic() > deadline:
            raise AssertionError("stream deadline passed")
        if line == "":
            if block:
                yield block
            block = {}
            continue
        name, _, value = line.partition(": ")
        block[name] = value


def test_sse_wire_format_resume_and_live_push(fenv: FeedEnv) -> None:
    task = fenv.task()
    session, client = session_token(fenv.sts, task["id"])
    first, second = hop_from(client, session, fenv.a.url), hop_from(client, session, fenv.a.url)
    revoke(fenv.http, fenv.sts, first)
    seq = feed(fenv.http, fenv.sts)["cursor"]
    deadline = time.monotonic() + 10
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(seq - 1)}
    with stream(fenv.http, fenv.sts, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        events = _events(response.iter_lines(), deadline)
        revocation = next(events)
        assert revocation["id"] == str(seq)
        assert revocation["event"] == "revocation"
        data = json.loads(revocation["data"])
        assert (data["seq"], data["kind"], data["value"]) == (seq, "jti", claims_of(first)["jti"])
        heartbeat = next(events)
        assert heartbeat["event"] == "heartbeat" and "id" not in heartbeat
        beat = json.loads(heartbeat["data"])
        assert beat["cursor"] == seq and isinstance(beat["time"], int | float)

        revoke(fenv.http, fenv.sts, second)  # pushed live on the open stream
        for event in events:
            if event["event"] == "revocation":
                assert int(event["id"]) > seq
                assert json.loads(event["data"])["value"] == claims_of(second)["jti"]
                break
            assert event["event"] == "heartbeat"
    # ``after`` works like Last-Event-ID.
    with stream(fenv.http, fenv.sts, after=str(seq)) as response:
        block = next(_events(response.iter_lines(), time.monotonic() + 10))
        assert block["event"] == "revocation" and int(block["id"]) > seq


def test_parse_sse_follows_the_event_stream_rules() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            ": comment",
            "id: 7",
            "event: revocation",
            'data: {"a":',
            "data: 1}",
            "",
            "",
            "event: heartbeat",
            "data:{}",
            "",
            "data: x",
            "",
        ]:
            yield line

    async def collect() -> list[tuple[str, str, str | None]]:
        return [item async for item in parse_sse(lines())]

    assert asyncio.run(collect()) == [
        ("revocation", '{"a":\n1}', "7"),
        ("heartbeat", "{}", "7"),
        ("message", "x", "7"),
    ]


def test_revocations_page_at_1000_and_the_stream_delivers_the_whole_backlog(sts: RunningSts) -> None:
    """Revoking a session token with 1,000 hop tokens publishes 1,001 entries in one write."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = create_task(sts, audiences=[url], max_tokens=1100)
    session, client = session_token(sts, task["id"])
    hops = [hop_from(client, session, url) for _ in range(1000)]
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        revoke(http, sts, session)
        first = feed(http, sts, 0)
        assert len(first["revocations"]) == 1000
        rest = feed(http, sts, first["cursor"])
        assert len(rest["revocations"]) == 1
        assert feed(http, sts, rest["cursor"])["revocations"] == []
        published = {e["value"] for e in first["revocations"] + rest["revocations"]}
        assert published == {claims_of(t)["jti"] for t in [session, *hops]}

        # A service subscribing now receives the whole backlog (more than one page) before it serves.
        with serve(rs_verifier(sts, url), port) as rs:
            view = rs.verifier.feed
            assert view is not None
            assert published <= set(view.jtis)
            assert view.cursor == rest["cursor"]
            assert status(http, rs, hops[-1], client.key) == (401, "invalid_token")
            assert status(http, rs, hops[0], client.key) == (401, "invalid_token")
            fresh = create_task(sts, audiences=[url])
            token, key = hop_token(sts, fresh["id"], url)
            assert status(http, rs, token, key) == (200, None)


# -- entries expire with what they cover ---------------------------------------------------------
def test_feed_entries_drop_out_once_the_token_or_task_expires(sts: RunningSts) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rs_clock = ManualClock()
    with (
        serve(rs_verifier(sts, url, clock=rs_clock), port) as rs,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        task = create_task(sts, audiences=[url], max_duration=600)
        token, _ = hop_token(sts, task["id"], url)
        jti, exp = claims_of(token)["jti"], claims_of(token)["exp"]
        revoke(http, sts, token)
        complete_task(sts, task["id"])
        listed = {(e["kind"], e["value"]): e["exp"] for e in feed(http, sts)["revocations"]}
        assert listed == {("jti", jti): exp, ("task", task["id"]): task["expires_at"]}
        assert task["expires_at"] > exp
        view = rs.verifier.feed
        assert view is not None
        wait_until(lambda: jti in view.jtis and task["id"] in view.tasks, what="the service to receive both entries")

        sts.clock.advance(exp - sts.clock.now() + 1)
        assert {(e["kind"], e["value"]) for e in feed(http, sts)["revocations"]} == {("task", task["id"])}
        sts.clock.advance(task["expires_at"] - sts.clock.now() + 1)
        assert feed(http, sts)["revocations"] == []

        # The service forgets them too once they are well past expiry (pruned on a heartbeat).
        rs_clock.advance(task["expires_at"] - rs_clock.now() + 61)
        wait_until(lambda: jti not in view.jtis and task["id"] not in view.tasks, what="the service to prune", timeout=10)
        # Positive control: the moved service still accepts a new task's token.
        fresh = create_task(sts, audiences=[url])
        new_token, key = hop_token(sts, fresh["id"], url)
        assert status(http, rs, new_token, key, now=rs_clock.now()) == (200, None)


# -- disconnects, resume and fail-closed -----------------------------------------------------------
@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RestartableSts]:
    server = RestartableSts(tmp_path, extra_toml=FEED_SUBSCRIBER)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_feed_resumes_after_a_dropped_connection_without_missing_a_revocation(restartable: RestartableSts) -> None:
    sts = restartable.running
    assert sts is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task, other = create_task(sts, audiences=[url]), create_task(sts, audiences=[url])
    session, client = session_token(sts, task["id"])
    key = client.key
    early, revoked_offline, sibling = (hop_from(client, session, url) for _ in range(3))
    in_ended_task, other_key = hop_token(sts, other["id"], url)
    with (
        serve(rs_verifier(sts, url, stale_after=60.0), port) as rs,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        view = rs.verifier.feed
        assert view is not None
        revoke(http, sts, early)
        wait_refused(http, rs, early, key)
        cursor_before = view.cursor
        connects_before = view.connects
        assert cursor_before > 0

        restartable.stop()  # the resource server's stream drops; the issuer's port is dead
        wait_until(lambda: http.get(rs.url + "/public").status_code == 200, what="service alive")
        with pytest.raises(httpx.ConnectError):
            http.get(sts.url + "/healthz")

        # Meanwhile a second STS instance on the same data directory (another port) records
        # a token revocation and a task completion.
        side_port = free_port()
        side = restartable.start(port=side_port)
        try:
            offline = redirected_client(side, side_port)
            revoke(offline.http, side, revoked_offline)
            admin, admin_tok = admin_token(side, offline)
            response = admin.api("POST", f"/tasks/{other['id']}/complete", admin_tok)
            assert response.status_code == 200, response.text
        finally:
            restartable.stop()
        # The service has not heard of either yet (its bound is 60 s): it really was disconnected.
        assert status(http, rs, revoked_offline, key) == (200, None)
        assert view.cursor == cursor_before

        restartable.start()  # back on the issuer's port
        wait_refused(http, rs, revoked_offline, key, timeout=10)
        wait_refused(http, rs, in_ended_task, other_key, timeout=10)
        assert view.connects > connects_before
        assert view.cursor == feed(http, restartable.running, 0)["cursor"] > cursor_before  # type: ignore[arg-type]  # the feed body is untyped JSON
        # Positive control: the sibling token is still good.
        assert status(http, rs, sibling, key) == (200, None)


def test_fail_closed_when_the_sts_is_silent_beyond_stale_after_manual_clock(restartable: RestartableSts) -> None:
    sts = restartable.running
    assert sts is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clock = ManualClock()
    task = create_task(sts, audiences=[url])
    token, key = hop_token(sts, task["id"], url)
    with (
        serve(rs_verifier(sts, url, stale_after=30.0, clock=clock), port) as rs,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        assert status(http, rs, token, key) == (200, None)
        restartable.stop()
        # Within the bound the last view is still trusted (real seconds pass too: heartbeats
        # come every 2 s and the stop takes about one) ...
        clock.advance(20.0)
        assert status(http, rs, token, key) == (200, None)
        # ... beyond it, nothing is let through.
        clock.advance(11.0)
        response = call(http, "GET", url + "/whoami", token, key)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "1"

        restartable.start()
        wait_until(lambda: status(http, rs, token, key) == (200, None), timeout=10, what="service to resume")


def test_fail_closed_when_the_sts_is_gone_real_time(restartable: RestartableSts) -> None:
    sts = restartable.running
    assert sts is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = create_task(sts, audiences=[url])
    token, key = hop_token(sts, task["id"], url)
    with (
        serve(rs_verifier(sts, url, stale_after=2.5), port) as rs,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        assert status(http, rs, token, key) == (200, None)
        restartable.stop()

        def unavailable() -> bool:
            code, error = status(http, rs, token, key)
            assert code in (200, 503), code
            return (code, error) == (503, "temporarily_unavailable")

        wait_until(unavailable, timeout=10, what="the service to fail closed", step=0.05)
        restartable.start()
        wait_until(lambda: status(http, rs, token, key) == (200, None), timeout=10, what="service to resume")


def test_healthy_feed_never_fails_closed_with_a_small_stale_after(sts: RunningSts) -> None:
    """With the STS up and the stream connected, a 1 s bound must not produce spurious 503s."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = create_task(sts, audiences=[url])
    token, key = hop_token(sts, task["id"], url)
    with (
        serve(rs_verifier(sts, url, stale_after=1.0), port) as rs,
        httpx.Client(trust_env=False, timeout=10.0) as http,
    ):
        seen: dict[int, int] = {}
        end = time.monotonic() + 4.5
        while time.monotonic() < end:
            code, _ = status(http, rs, token, key)
            seen[code] = seen.get(code, 0) + 1
            time.sleep(0.01)
        assert seen.get(503, 0) == 0, f"healthy STS, yet {seen.get(503)} of {sum(seen.values())} requests got 503"
