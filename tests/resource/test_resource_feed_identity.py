"""The resource SDK follows the STS with a workload identity; the gateway follows the store (issue 12).

A ``Verifier`` that follows the revocation feed or takes its policies from the STS needs
the service's workload identity: without one it fails at construction, and with one the
STS does not know it still gets nothing — the service stays closed (503), never open.
The gateway's view reads the store in-process (``RevocationFeed.from_store``), with the
same checks and the same fail-closed bound. Real STS, real stores, real HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from joserfc.jwk import ECKey
from rskit import Env, call, hop_token, serve, wait_until

from helpers import AGENT, SVC_B, free_port
from services import ended_task, open_stores
from tether.agent.identity import DevIdentity, FileIdentity
from tether.clock import ManualClock
from tether.errors import InvalidToken, TemporarilyUnavailable
from tether.identity.dev_issuer import DevTrustDomain
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed
from tether.store.errors import StoreUnavailable
from tether.store.protocol import Store
from tether.store.records import Revocation

ISSUER = "http://127.0.0.1:8700"
RESOURCE = "http://127.0.0.1:9001"


# -- construction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({}, "for revocation_feed:"),
        ({"revocation_feed": False, "policy_from_sts": True}, "for policy_from_sts:"),
        ({"policy_from_sts": True}, "for revocation_feed and policy_from_sts:"),
    ],
)
def test_a_verifier_that_follows_the_sts_without_an_identity_fails_at_construction(
    fields: dict[str, bool], missing: str
) -> None:
    settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE, **fields)  # type: ignore[arg-type]  # only its bool fields are set
    with pytest.raises(ValueError, match=missing) as refused:
        Verifier(settings)
    assert "identity=" in str(refused.value) and "\n" not in str(refused.value)
    # positive control: the same settings with the service's identity
    identity = DevIdentity(DevTrustDomain("tether.local", ECKey.generate_key("P-256", private=True)), SVC_B)
    verifier = Verifier(settings, identity=identity)
    assert verifier.identity is not None and (verifier.feed is not None) == settings.revocation_feed


def test_a_verifier_that_follows_nothing_needs_no_identity() -> None:
    settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE, revocation_feed=False)
    assert Verifier(settings).feed is None


# -- an identity the STS does not know ------------------------------------------------------------
def test_a_service_whose_identity_is_not_registered_stays_closed(env: Env) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = env.task(audiences=[url])
    token, key = hop_token(env.sts, task["id"], url)
    settings = ResourceSettings(issuer=env.sts.url, resource=url)
    stranger = Verifier(settings, identity=env.sts.identity(AGENT))  # authenticates, but is not a subscriber
    with serve(stranger, port, sync=False):
        wait_until(lambda: any(r.kind == "feed.refused" and r.detail.get("caller") == AGENT for r in env.sts.audit()),
                   timeout=10, what="the STS to refuse the stranger's subscription")  # fmt: skip
        refused = env.sts.last_audit("feed.refused")
        assert refused.error == "access_denied"
        for _ in range(2):  # fail closed: no revocation view, no request
            response = call(env.http, "GET", url + "/whoami", token, key)
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "temporarily_unavailable"
        assert stranger.feed is not None and stranger.feed.connects == 0
    # positive control: the same service, the same token, as a registered workload
    with serve(Verifier(settings, identity=env.sts.identity(SVC_B)), port):
        assert call(env.http, "GET", url + "/whoami", token, key).status_code == 200


def test_a_service_whose_identity_is_not_there_yet_stays_closed_and_subscribes_once_it_is(env: Env, tmp_path: Path) -> None:
    """A JWT file that spiffe-helper has not written yet: retried (never fatal), closed meanwhile."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    task = env.task(audiences=[url])
    token, key = hop_token(env.sts, task["id"], url)
    svid = tmp_path / "svc.jwt"
    identity = FileIdentity(svid)
    verifier = Verifier(ResourceSettings(issuer=env.sts.url, resource=url), identity=identity)
    with serve(verifier, port, sync=False) as served:
        response = call(env.http, "GET", url + "/whoami", token, key)
        assert (response.status_code, response.json()["error"]) == (503, "temporarily_unavailable")
        # the file appears (a JWT-SVID without a jti, as SPIRE issues them: the same one serves every connect)
        svid.write_text(env.sts.svid(SVC_B, jti=False), encoding="ascii")
        served.wait_synced()
        assert call(env.http, "GET", url + "/whoami", token, key).status_code == 200


# -- the gateway's view: the store, in-process ---------------------------------------------------
class HeldStore:
    """The real store, except that feed reads fail while the test holds them (an outage's stand-in)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.held = False
        self.failures = 0

    async def revocations_after(self, seq: int, *, now: float, limit: int) -> list[Revocation]:
        if self.held:
            self.failures += 1
            raise StoreUnavailable("held by the test")
        return await self.store.revocations_after(seq, now=now, limit=limit)

    def revocation_generation(self) -> int:
        return self.store.revocation_generation()

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool:
        return await self.store.wait_for_revocations(since=since, timeout=timeout)


def run_two(tmp_path: Path, body: Callable[[Store, Store], Awaitable[None]]) -> None:
    """``body`` with two handles on one fresh store, as two processes would hold them."""

    async def main() -> None:
        async with open_stores(tmp_path, 2) as (one, two):
            await body(one, two)

    asyncio.run(main())


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_store_view_refuses_what_another_process_ended(tmp_path: Path) -> None:
    async def body(gateways: Store, sts: Store) -> None:
        feed = RevocationFeed.from_store(gateways, stale_after=2.0)
        feed.start()
        try:
            await feed.wait_synced()
            ended, running = await ended_task(sts), "tsk_still_running"
            await _until(lambda: ended in feed.tasks, "the ended task on the gateway's view")
            with pytest.raises(InvalidToken) as refused:
                feed.check(jti="j1", task=ended, now=time.time())
            assert refused.value.audit["after_end"] is True
            feed.check(jti="j2", task=running, now=time.time())  # positive control: another task passes
        finally:
            await feed.aclose()

    run_two(tmp_path, body)


def test_the_store_view_fails_closed_while_the_store_cannot_answer(tmp_path: Path) -> None:
    async def body(store: Store, _: Store) -> None:
        held, clock = HeldStore(store), ManualClock()
        feed = RevocationFeed.from_store(held, stale_after=2.0, clock=clock)
        feed.start()
        try:
            await feed.wait_synced()
            feed.check(jti="j", task=None, now=clock.now())
            held.held = True
            await _until(lambda: held.failures > 0, "a failed read")
            clock.advance(2.5)  # longer than stale_after without a successful read
            with pytest.raises(TemporarilyUnavailable):
                feed.check(jti="j", task=None, now=clock.now())
            held.held = False  # positive control: the store answers again, the view is fresh again
            await _until(lambda: feed.fresh(clock.now()), "the view to recover")
            feed.check(jti="j", task=None, now=clock.now())
        finally:
            await feed.aclose()

    run_two(tmp_path, body)
