"""Issue 12 finding 15: the agent SDK's onward-exchange cache stays bounded and never serves an expired token.

``Onward`` caches the token it obtained for (incoming token, audience, scope). Before the
fix the map was a plain dict that nothing ever evicted: one entry per incoming token for
the life of the service, expired ones included. Now it is a ``TokenCache``: at most
``max_entries`` slots, a newer incoming token of the same task and caller replaces the
older one's entry (the parent changed), and a token near expiry is neither served nor
kept. Real STS, real exchanges; only the service's clock (a ``ManualClock``) is moved.
"""

from __future__ import annotations

import httpx
from agentkit import AgentEnv, claims_of

from helpers import SVC_B, Client
from tether.agent import DevIdentity, Onward
from tether.agent.exchange import run_sync
from tether.clock import ManualClock


def _incoming(aenv: AgentEnv, count: int, *, task_id: str | None = None) -> list[str]:
    """``count`` distinct hop tokens for ``x`` (what service x receives), all from one agent session."""
    client = Client(aenv.sts)
    session = client.session(task_id or aenv.task()["id"])
    assert session.status_code == 200, session.text
    tokens = []
    for _ in range(count):
        response = client.hop(session.json()["access_token"], aenv.x.url)
        assert response.status_code == 200, response.text
        tokens.append(str(response.json()["access_token"]))
    return tokens


def test_a_newer_incoming_token_replaces_the_older_ones_entry(aenv: AgentEnv) -> None:
    """Ten parents of one task and caller, two audiences' worth of scopes: never more than one slot each."""
    onward = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B))
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        seen: list[str] = []
        for incoming in _incoming(aenv, 10):
            token = str(run_sync(onward.token_flow(incoming, aenv.y.url), http))
            narrow = str(run_sync(onward.token_flow(incoming, aenv.y.url, "wiki:read"), http))
            assert claims_of(narrow)["scope"] == "wiki:read" and token != narrow
            # positive control: the same parent, audience and scope is a cache hit
            assert run_sync(onward.token_flow(incoming, aenv.y.url), http) == token
            assert len(onward.cache) == 2
            seen.append(token)
    assert len(set(seen)) == 10, "a new parent never gets the previous parent's onward token"


def test_the_cache_stays_bounded_under_many_tasks(aenv: AgentEnv) -> None:
    onward = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B), max_entries=3)
    parents = [_incoming(aenv, 1)[0] for _ in range(6)]  # six tasks: six slots wanted
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        tokens = [str(run_sync(onward.token_flow(p, aenv.y.url), http)) for p in parents]
        assert len(onward.cache) == 3
        # the three used last are still served from the cache; the first ones were evicted
        assert [run_sync(onward.token_flow(p, aenv.y.url), http) for p in parents[3:]] == tokens[3:]
        again = str(run_sync(onward.token_flow(parents[0], aenv.y.url), http))
    assert again != tokens[0] and len(onward.cache) == 3


def test_an_expired_entry_is_not_served_and_not_kept(aenv: AgentEnv) -> None:
    clock = ManualClock()
    onward = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B), clock=clock)
    first, second = _incoming(aenv, 1)[0], _incoming(aenv, 1)[0]  # two tasks: two slots
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        old = str(run_sync(onward.token_flow(first, aenv.y.url), http))
        run_sync(onward.token_flow(second, aenv.y.url), http)
        assert run_sync(onward.token_flow(first, aenv.y.url), http) == old  # control: fresh, served
        life = claims_of(old)["exp"] - claims_of(old)["iat"]
        clock.advance(life)  # the service's clock says both tokens have expired
        new = str(run_sync(onward.token_flow(first, aenv.y.url), http))
    assert new != old, "an expired onward token was served"
    assert len(onward.cache) == 1, "the other expired entry was kept"


def test_forget_drops_only_that_callers_entry(aenv: AgentEnv) -> None:
    """``Onward.forget`` (the MCP gateway drops a hop session's token when the session ends)."""
    onward = Onward(aenv.sts.url, DevIdentity(aenv.domain, SVC_B))
    first, second = _incoming(aenv, 1)[0], _incoming(aenv, 1)[0]  # two tasks: two slots
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        old = str(run_sync(onward.token_flow(first, aenv.y.url), http))
        kept = str(run_sync(onward.token_flow(second, aenv.y.url), http))
        onward.forget(first, aenv.y.url)
        assert len(onward.cache) == 1
        assert run_sync(onward.token_flow(second, aenv.y.url), http) == kept  # control: the other is still served
        assert run_sync(onward.token_flow(first, aenv.y.url), http) != old  # forgotten: a new exchange
