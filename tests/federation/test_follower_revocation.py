"""B follows A's revocation feed and ends the linked tasks (SECURITY FED-03), against a real STS A on loopback.

A is a ``tether init --trust-domain a.example`` deployment served in a thread; it trusts B's
trust domain (B's bundle file) and lists B's ``feed_principal`` in ``[revocations] subscribers``.
B is a ``tether init --trust-domain b.example`` deployment whose STS runs in the test's event
loop (``Sts.start`` starts the followers, as ``tether serve``'s lifespan does); its linked tasks
are written through the store API the exchange uses (``Store.link_task``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedkit import Domain, DomainSts, admin_api, eventually, federation_toml, link_task, make_domain, serve_domain

from helpers import Client
from tether.errors import ConfigError
from tether.federation.follower import FederationFeeds
from tether.model import TaskState
from tether.store.open import open_store
from tether.sts.bootstrap import Sts, build_sts
from tether.sts.context import StsContext


def _pair(root: Path, *, stale_after: int = 2) -> tuple[Domain, Domain]:
    a = make_domain(root / "a", "a.example")
    b = make_domain(root / "b", "b.example")
    a.append(f'[[trust_domains]]\nname = "b.example"\nbundle_file = "{b.bundle_file}"\n\n'
             f'[revocations]\nsubscribers = ["{b.principal("feed")}"]')  # fmt: skip
    b.append(federation_toml(a, local=b, stale_after=stale_after))
    return a, b


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DomainSts, Domain, Domain]]:
    a, b = _pair(tmp_path_factory.mktemp("follower"))
    with serve_domain(a) as running:
        yield running, a, b


@pytest.fixture
def pair(domains: tuple[DomainSts, Domain, Domain]) -> tuple[DomainSts, Domain]:
    return domains[0], domains[2]


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def new_task(a: DomainSts, agent: str = "agent/research") -> str:
    body = {"agent": f"spiffe://a.example/{agent}", "audiences": ["https://tools.example"], "scopes": ["wiki:read"]}
    response = admin_api(a, "POST", "/tasks", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def complete(a: DomainSts, task_id: str) -> None:
    response = admin_api(a, "POST", f"/tasks/{task_id}/complete")
    assert response.status_code == 200, response.text


async def started(b: Domain) -> tuple[Sts, StsContext]:
    sts = build_sts(b.config())
    ctx = await sts.start()
    assert isinstance(ctx.federation, FederationFeeds)
    await eventually(lambda: ctx.federation.fresh("a", ctx.now()))
    return sts, ctx


async def state(ctx: StsContext, task_id: str) -> TaskState:
    task = await ctx.store.get_task(task_id)
    assert task is not None
    return task.state


def test_fed03_task_entry_ends_every_linked_task_and_a_restart_replays_idempotently(pair: tuple[DomainSts, Domain]) -> None:
    a, b = pair
    ended, kept = new_task(a), new_task(a)

    async def scenario() -> None:
        sts, ctx = await started(b)
        try:
            agent = "fed:a/spiffe://a.example/agent/research"
            first = await link_task(ctx.store, peer="a", foreign_task=ended, foreign_jti="j-1", agent=agent)
            second = await link_task(ctx.store, peer="a", foreign_task=ended, foreign_jti="j-2", agent=agent + "/2")
            other = await link_task(ctx.store, peer="a", foreign_task=kept, foreign_jti="j-3", agent=agent)
            complete(a, ended)

            async def both_ended() -> bool:
                return {await state(ctx, first), await state(ctx, second)} == {TaskState.CANCELLED}

            await eventually(both_ended)
            assert await state(ctx, other) is TaskState.ACTIVE
            records = [r for r in await ctx.store.audit_records(after=0, limit=10_000) if r.kind == "task.cancelled"]
            assert {r.task for r in records} == {first, second}
            for record in records:
                assert record.principal == "federation:a"
                assert record.detail == {"federation": "a", "foreign_task": ended}
        finally:
            await sts.stop()

        # a restart starts from the first entry: A replays them, and nothing ends twice
        sts, ctx = await started(b)
        try:
            follower = ctx.federation.followers["a"]  # type: ignore[attr-defined]
            assert follower.feed.cursor > 0  # fresh: a heartbeat came, after the backlog
            assert follower.ended == 0
            records = [r for r in await ctx.store.audit_records(after=0, limit=10_000) if r.kind == "task.cancelled"]
            assert len(records) == 2
        finally:
            await sts.stop()

    asyncio.run(scenario())


def test_fed03_jti_entry_ends_the_task_opened_from_that_token(pair: tuple[DomainSts, Domain]) -> None:
    a, b = pair
    task_id = new_task(a)
    client = Client(a)
    response = client.session(task_id, svid=a.svid("spiffe://a.example/agent/research"))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    jti = str(claims_of(token)["jti"])

    async def scenario() -> None:
        sts, ctx = await started(b)
        try:
            agent = "fed:a/spiffe://a.example/agent/research"
            linked = await link_task(ctx.store, peer="a", foreign_task="tsk_elsewhere", foreign_jti=jti, agent=agent)
            other = await link_task(ctx.store, peer="a", foreign_task="tsk_elsewhere", foreign_jti="j-other",
                                    agent=agent + "/2")  # fmt: skip
            revoked = client.http.post(a.url + "/revoke", data=a.client_auth(a.admin(), token=token))
            assert revoked.status_code == 200, revoked.text

            async def ended() -> bool:
                return await state(ctx, linked) is TaskState.CANCELLED

            await eventually(ended)
            assert await state(ctx, other) is TaskState.ACTIVE
            record = [r for r in await ctx.store.audit_records(after=0, limit=10_000) if r.task == linked][-1]
            assert (record.kind, record.detail) == ("task.cancelled", {"federation": "a", "foreign_jti": jti})
        finally:
            await sts.stop()

    asyncio.run(scenario())


def test_fed03_feed_goes_stale_without_the_peer_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.federation")
    a, b = _pair(tmp_path, stale_after=1)

    async def scenario() -> None:
        with serve_domain(a):
            sts, ctx = await started(b)
        try:
            await eventually(lambda: not ctx.federation.fresh("a", ctx.now()), timeout=5)
            await eventually(lambda: "went stale" in caplog.text, timeout=3)
            with serve_domain(a):
                await eventually(lambda: ctx.federation.fresh("a", ctx.now()), timeout=10)
                await eventually(lambda: "is current again" in caplog.text, timeout=3)
        finally:
            await sts.stop()

    asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records if r.name == "tether.federation"]
    assert sum("went stale" in m for m in messages) == 1
    assert sum("is current again" in m for m in messages) == 1


def test_fed03_follower_refused_by_the_peer_is_never_fresh(domains: tuple[DomainSts, Domain, Domain], tmp_path: Path) -> None:
    running, a, _ = domains
    stranger = make_domain(tmp_path / "c", "c.example")  # A neither trusts c.example nor lists its principal
    stranger.append(federation_toml(a, local=stranger))

    async def scenario() -> None:
        sts = build_sts(stranger.config())
        ctx = await sts.start()
        store_a = await open_store(running.config)

        async def refused_at_a() -> bool:
            return any(r.kind == "feed.refused" for r in await store_a.audit_records(after=0, limit=100_000))

        try:
            await eventually(refused_at_a, timeout=5)
            follower = ctx.federation.followers["a"]  # type: ignore[attr-defined]
            assert follower.feed.connects == 0
            assert not ctx.federation.fresh("a", ctx.now())
        finally:
            await store_a.aclose()
            await sts.stop()

    asyncio.run(scenario())


def test_feed_principal_outside_the_dev_trust_domain_needs_an_identity_file(tmp_path: Path) -> None:
    a = make_domain(tmp_path / "a", "a.example")
    b = make_domain(tmp_path / "b", "b.example")
    b.append(federation_toml(a, local=b).replace('feed_principal = "spiffe://b.example/feed"',
                                                 'feed_principal = "spiffe://elsewhere.example/feed"'))  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        build_sts(b.config())
    assert refused.value.key == "federation[0].feed_principal"
