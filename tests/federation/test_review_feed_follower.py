"""Review of the federation follower (issue 19, SECURITY FED-03): what a peer's feed, or a forged
link row at B, can make B's follower do.

- A ``federation_links`` row is only a pointer: a database writer (or a bug) can make one of peer
  ``a`` point at a local task or at another peer's linked task. The follower must end only tasks
  that peer ``a`` opened here (agent in ``fed:a/``, created by ``federation:a``), so ``a``'s feed
  can never end B's own tasks nor those linked from another peer.
- A peer's ``/revocations/stream`` is read line by line: a peer (or its feed in a compromised
  state) that sends one endless line, or endless ``data:`` lines with no blank line, must not make
  B buffer without bound; the connection is dropped and the follower is not fresh from it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fedkit import Domain, eventually, federation_toml, make_domain

from tether.audit.chain import AuditEvent
from tether.federation.follower import FederationFeeds
from tether.model import Task, TaskState
from tether.resource.revocations import RevocationFeed
from tether.store.protocol import Store
from tether.store.records import FederationLink
from tether.streams import lines_at_most
from tether.sts.bootstrap import build_sts


@pytest.fixture(scope="module")
def b_domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    root = tmp_path_factory.mktemp("rvfeed")
    a = make_domain(root / "a", "a.example")
    b = make_domain(root / "b", "b.example")
    b.append(federation_toml(a, local=b))
    yield b


async def _task_behind_link(store: Store, *, link_peer: str, agent: str, created_by: str, foreign_task: str) -> str:
    """A task and a ``federation_links`` row of ``link_peer`` pointing at it, whatever the task is
    (the state a database writer at B can leave behind)."""
    now = int(time.time())
    task = Task(id="tsk_" + secrets.token_hex(8), agent=agent, audiences=("https://tools.example",),
                scopes=frozenset({"wiki:read"}), created_at=now, expires_at=now + 600, max_depth=2, max_tokens=10,
                created_by=created_by)  # fmt: skip
    link = FederationLink(peer=link_peer, foreign_task=foreign_task, foreign_jti="j-" + secrets.token_hex(4),
                          task_id=task.id, created_at=now)  # fmt: skip
    linked = await store.link_task(task, link, now=now, audit=AuditEvent(kind="federation.linked", outcome="ok"))
    return linked.id


def test_review_feed_fed03_forged_link_never_ends_a_local_or_other_peers_task(b_domain: Domain) -> None:
    async def scenario() -> None:
        sts = build_sts(b_domain.config())
        ctx = await sts.start()
        try:
            assert isinstance(ctx.federation, FederationFeeds)
            follower = ctx.federation.followers["a"]
            foreign = "tsk_" + secrets.token_hex(6)
            store = ctx.store
            local = await _task_behind_link(store, link_peer="a", agent="spiffe://b.example/agent/own",
                                            created_by="spiffe://b.example/admin", foreign_task=foreign)  # fmt: skip
            others = await _task_behind_link(store, link_peer="a", agent="fed:c/spiffe://c.example/agent/x",
                                             created_by="federation:c", foreign_task=foreign)  # fmt: skip
            posing = await _task_behind_link(store, link_peer="a", agent="fed:a/spiffe://a.example/agent/x",
                                             created_by="spiffe://b.example/admin", foreign_task=foreign)  # fmt: skip
            genuine = await _task_behind_link(store, link_peer="a", agent="fed:a/spiffe://a.example/agent/y",
                                              created_by="federation:a", foreign_task=foreign)  # fmt: skip

            await follower.apply({"kind": "task", "value": foreign, "exp": int(time.time()) + 600, "seq": 1})

            states = {}
            for name, task_id in (("local", local), ("others", others), ("posing", posing), ("genuine", genuine)):
                task = await store.get_task(task_id)
                assert task is not None
                states[name] = task.state
            assert states == {"local": TaskState.ACTIVE, "others": TaskState.ACTIVE, "posing": TaskState.ACTIVE,
                              "genuine": TaskState.CANCELLED}  # fmt: skip
            assert follower.ended == 1
        finally:
            await sts.stop()

    asyncio.run(scenario())


class _Identity:
    """The follower's identity at the hostile feed below (which checks nothing)."""

    principal: str | None = "spiffe://b.example/feed"

    def token(self, audience: str) -> str:
        return "not-checked-by-the-hostile-feed"


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
_HEARTBEAT = b'event: heartbeat\ndata: {"cursor": 0, "time": 0}\n\n'


async def _hostile_feed(body: list[bytes], connections: list[int]) -> tuple[asyncio.Server, str]:
    """A peer's feed on loopback that answers every connection with ``body`` (in chunks), then a heartbeat."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            writer.write(_HEAD)
            for chunk in body:
                writer.write(chunk)
                await writer.drain()
            writer.write(_HEARTBEAT)
            await writer.drain()
            await reader.read()  # until the follower hangs up
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


_ENTRY = b'"kind": "task", "exp": 9999999999, "seq": 1'


@pytest.mark.parametrize(
    "body",
    [
        # one well-formed entry whose single data line is 8 MiB long
        [b"event: revocation\ndata: {" + _ENTRY + b', "value": "'] + [b"x" * (1 << 20)] * 8 + [b'"}\n\n'],
        # one well-formed entry spread over 8,192 data lines (no blank line between them)
        [b"event: revocation\ndata: {" + _ENTRY + b', "value": "v", "pad": [\n']
        + [b'data: "' + b"y" * 1000 + b'",\n'] * 8192
        + [b"data: 0]}\n\n"],
    ],
    ids=["endless-line", "endless-event"],
)
def test_review_feed_fed03_oversized_feed_event_drops_the_connection(body: list[bytes], tmp_path: Path) -> None:
    async def scenario() -> None:
        connections: list[int] = []
        server, url = await _hostile_feed(body, connections)
        async with httpx.AsyncClient(trust_env=False) as http:
            feed = RevocationFeed(url, http, identity=_Identity(), stale_after=3.0, reconnect_delay=0.05)
            feed.start()
            try:
                await eventually(lambda: len(connections) >= 2, timeout=10)
                # the oversized event was refused before the heartbeat behind it: never fresh
                assert feed.last_heard is None and not feed.fresh(time.time())
            finally:
                await feed.aclose()
                server.close()
                await server.wait_closed()

    asyncio.run(scenario())


def test_review_feed_bounded_lines_split_as_the_event_stream_says() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a\r", b"\nb\rc\n", b"\n\xc3", b"\xa9\r\n", b"d\r"):
            yield chunk

    async def collect() -> list[str]:
        return [line async for line in lines_at_most(chunks(), 8, lambda: ValueError("long"))]

    assert asyncio.run(collect()) == ["a", "b", "c", "", "é", "d"]


def test_review_feed_fed03_a_peer_entry_is_kept_no_longer_than_a_foreign_token_can_live(b_domain: Domain) -> None:
    """A peer names its entries' ``exp``: one far in the future is kept only as long as any token the
    peer signed could still cross here (the longest token lifetime, with both clocks' skew), so a
    peer cannot make B's view grow with entries it never lets expire — while a near ``exp`` stands."""

    async def scenario() -> None:
        sts = build_sts(b_domain.config())
        ctx = await sts.start()
        try:
            assert isinstance(ctx.federation, FederationFeeds)
            feed = ctx.federation.followers["a"].feed
            now = int(ctx.now())
            horizon = ctx.settings.max_token_lifetime + 2 * ctx.settings.skew
            feed.apply({"kind": "task", "value": "tsk_far", "exp": now + 10 * 365 * 86_400, "seq": 1})
            feed.apply({"kind": "jti", "value": "jti_near", "exp": now + 5, "seq": 2})
            assert now + horizon - 1 <= feed.tasks["tsk_far"] <= now + horizon + 1
            assert feed.jtis["jti_near"] == now + 5
        finally:
            await sts.stop()

    asyncio.run(scenario())


def test_a_feed_from_ones_own_sts_keeps_entries_until_their_exp() -> None:
    feed = RevocationFeed("http://127.0.0.1:9", httpx.AsyncClient(), identity=_Identity())
    far = int(time.time()) + 10 * 365 * 86_400
    feed.apply({"kind": "task", "value": "tsk_far", "exp": far, "seq": 1})
    assert feed.tasks["tsk_far"] == far
