"""``TaskSession.auth()`` with real ``httpx`` clients (sync and async) against real services.

The agent picks the audience (configured map or RFC 9728 discovery), exchanges once
per audience, signs a fresh proof per request, retries once on a nonce challenge,
and never hands a token to a host it was not issued for (MCP-03).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentkit import AgentEnv, claims_of, metadata_app, serve_app
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from helpers import AGENT, free_port
from tether.agent import Agent, DiscoveryError, DPoPKey, ExchangeError, FileIdentity, TaskSession
from tether.rules.dpop import compute_ath

METADATA = "/.well-known/oauth-protected-resource"


def client(auth: httpx.Auth, **kw: Any) -> httpx.Client:
    return httpx.Client(auth=auth, trust_env=False, timeout=10.0, **kw)


# -- audience from a map, sync and async --------------------------------------------------------
def test_sync_client_with_a_configured_audience_map(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with client(session.auth(audiences={aenv.x.url: aenv.x.url}, discover=False)) as http:
        response = http.get(aenv.x.url + "/whoami", params={"q": "design"})
    assert response.status_code == 200, response.text
    seen = response.json()
    assert (seen["subject"], seen["agent"], seen["task"], seen["audience"]) == (AGENT, AGENT, task["id"], aenv.x.url)
    assert seen["jkt"] == session.key.jkt
    assert session.exchanges == 2  # session token + one hop token
    assert not aenv.x.requests(METADATA), "a configured audience needs no discovery"
    # Positive/negative pair: without a map entry and with discovery off, nothing is sent.
    with client(session.auth(discover=False)) as http, pytest.raises(DiscoveryError):
        http.get(aenv.y.url + "/whoami")
    assert session.exchanges == 2


def test_async_client_with_a_configured_audience_map(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    audiences = {aenv.x.url: aenv.x.url, aenv.y.url: aenv.y.url}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(auth=session.auth(audiences=audiences), trust_env=False, timeout=10.0) as http:
            first = await http.get(aenv.x.url + "/whoami")
            second = await http.post(aenv.y.url + "/whoami")
            third = await http.get(aenv.x.url + "/whoami")
            return [first, second, third]

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert [r.json()["audience"] for r in responses] == [aenv.x.url, aenv.y.url, aenv.x.url]
    assert responses[1].json()["proof"]["htm"] == "POST"
    assert session.exchanges == 3


# -- RFC 9728 discovery ------------------------------------------------------------------------
def test_RFC9728_audience_from_discovery_sync(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    before = len(aenv.y.log)
    with client(session.auth()) as http:
        assert http.get(aenv.y.url + "/whoami").status_code == 200
        assert http.get(aenv.y.url + "/whoami").status_code == 200
    sent = aenv.y.log[before:]
    assert [r["path"] for r in sent] == [METADATA, "/whoami", "/whoami"], "metadata fetched once, before the first call"
    assert "authorization" not in sent[0]["headers"] and "dpop" not in sent[0]["headers"]
    assert all(claims_of(t)["aud"] == aenv.y.url for t in aenv.y.tokens())


def test_RFC9728_audience_from_discovery_async(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(auth=session.auth(), trust_env=False, timeout=10.0) as http:
            return await http.get(aenv.x.url + "/whoami")

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    assert response.json()["audience"] == aenv.x.url


def test_AUX_03_metadata_naming_another_resource_is_not_used(aenv: AgentEnv) -> None:
    """A host whose metadata claims to be ``x`` must not obtain ``x``'s token."""
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    auth = session.auth()
    before = len(aenv.impostor.log)
    with client(auth) as http:
        with pytest.raises(DiscoveryError):
            http.get(aenv.impostor.url + "/steal")
        assert session.exchanges == 0, "no token is even requested"
        assert [r["path"] for r in aenv.impostor.log[before:]] == [METADATA]
        assert not aenv.impostor.tokens()
        # Positive control with the same auth object and client.
        assert http.get(aenv.x.url + "/whoami").status_code == 200


def test_AUX_03_metadata_not_listing_our_sts_is_not_used(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with client(session.auth()) as http:
        with pytest.raises(DiscoveryError):
            http.get(aenv.foreign.url + "/thing")
        assert not aenv.foreign.tokens()
        assert session.exchanges == 0
        assert http.get(aenv.x.url + "/whoami").status_code == 200


def test_AUX_03_host_without_metadata_gets_no_token(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with client(session.auth()) as http:
        with pytest.raises(DiscoveryError):
            http.get(aenv.plain.url + "/anything")
        assert not aenv.plain.tokens()
        assert http.get(aenv.y.url + "/whoami").status_code == 200


# -- caching and proofs --------------------------------------------------------------------------
def test_hop_token_cached_per_audience_one_issuance_each(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    x_before, y_before = len(aenv.x.log), len(aenv.y.log)
    with client(session.auth(audiences={aenv.x.url: aenv.x.url, aenv.y.url: aenv.y.url})) as http:
        for _ in range(5):
            assert http.get(aenv.x.url + "/whoami").status_code == 200
        for _ in range(3):
            assert http.get(aenv.y.url + "/whoami").status_code == 200
    assert session.exchanges == 3
    hops = aenv.hop_audits(task["id"])
    assert sorted(h["aud"] for h in hops) == sorted([aenv.x.url, aenv.y.url]), hops
    x_tokens = {r["headers"]["authorization"][0] for r in aenv.x.log[x_before:]}
    y_tokens = {r["headers"]["authorization"][0] for r in aenv.y.log[y_before:]}
    assert len(x_tokens) == 1 and len(y_tokens) == 1 and x_tokens != y_tokens


def test_DPOP_13_fresh_proof_with_ath_per_request(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with client(session.auth(audiences={aenv.x.url: aenv.x.url})) as http:
        responses = [http.get(aenv.x.url + "/whoami", params={"i": str(i)}) for i in range(6)]
    assert all(r.status_code == 200 for r in responses)
    proofs = [r.json()["proof"] for r in responses]
    jtis = [p["jti"] for p in proofs]
    assert len(set(jtis)) == len(jtis)
    for jti in jtis:
        assert len(base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))) * 8 >= 96
    token = aenv.x.tokens()[-1]
    assert {p["ath"] for p in proofs} == {compute_ath(token)}
    assert {p["htu"] for p in proofs} == {aenv.x.url + "/whoami"}, "query stripped from htu"
    assert {p["htm"] for p in proofs} == {"GET"}


def test_RFC9449_9_nonce_challenge_retried_once_then_reused(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    before = len(aenv.n.log)
    with client(session.auth(audiences={aenv.n.url: aenv.n.url})) as http:
        first = http.get(aenv.n.url + "/whoami")
        assert first.status_code == 200, first.text
        attempts = aenv.n.log[before:]
        assert len(attempts) == 2
        assert "nonce" not in _proof(attempts[0]) and "nonce" in _proof(attempts[1])
        second = http.get(aenv.n.url + "/whoami")
        assert second.status_code == 200
        assert len(aenv.n.log) == before + 3, "the remembered nonce is used without another challenge"
    assert first.json()["proof"]["nonce"] == second.json()["proof"]["nonce"]


def _proof(record: dict[str, Any]) -> dict[str, Any]:
    return claims_of(record["headers"]["dpop"][0])


def test_DPOP_10_stale_nonce_is_replaced_after_one_challenge(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    before = len(aenv.n.log)
    with client(session.auth(audiences={aenv.n.url: aenv.n.url})) as http:
        # As if the agent had kept a nonce the service no longer honours.
        stale = httpx.Response(401, headers={"DPoP-Nonce": "not-a-server-nonce"})
        session.nonces.remember(httpx.URL(aenv.n.url + "/whoami"), stale)
        assert http.get(aenv.n.url + "/whoami").status_code == 200
    attempts = aenv.n.log[before:]
    assert len(attempts) == 2
    assert _proof(attempts[0])["nonce"] == "not-a-server-nonce" != _proof(attempts[1])["nonce"]


def test_RFC9449_9_nonce_challenge_is_retried_only_once(aenv: AgentEnv) -> None:
    """A service that challenges every proof gets exactly two attempts, then its 401 is returned."""
    log: list[dict[str, Any]] = []

    async def always_challenge(request: Request) -> Response:
        return JSONResponse(
            {"error": "use_dpop_nonce"},
            status_code=401,
            headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": secrets.token_urlsafe(8)},
        )

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    app = metadata_app(log, lambda o: {"resource": o, "authorization_servers": [aenv.sts.url]})
    app.router.routes.insert(1, Route("/whoami", always_challenge))
    with serve_app(app, port, log) as stubborn:
        session = aenv.agent().session(aenv.task(audiences=[origin])["id"])
        with client(session.auth()) as http:
            response = http.get(stubborn.url + "/whoami")
        assert response.status_code == 401
        assert [r["path"] for r in log] == [METADATA, "/whoami", "/whoami"]
        first, second = (_proof(r) for r in log[1:])
        assert "nonce" not in first and second["nonce"]


# -- MCP-03: tokens go only to their audience -------------------------------------------------------
def test_MCP_03_cross_origin_redirect_does_not_carry_the_token(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    before = len(aenv.plain.log)
    with client(session.auth(audiences={aenv.x.url: aenv.x.url}), follow_redirects=True) as http:
        response = http.get(aenv.x.url + "/go", params={"to": aenv.plain.url + "/sink"})
    assert response.status_code == 200 and response.json() == {"path": "/sink"}
    received = aenv.plain.log[before:]
    assert [r["path"] for r in received] == ["/sink"]
    assert "authorization" not in received[0]["headers"]


def test_MCP_03_each_host_only_sees_tokens_for_itself(aenv: AgentEnv) -> None:
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    with client(session.auth(audiences={aenv.x.url: aenv.x.url})) as http:
        assert http.get(aenv.x.url + "/whoami").status_code == 200
        assert http.get(aenv.y.url + "/whoami").status_code == 200  # discovered
        with pytest.raises(DiscoveryError):
            http.get(aenv.plain.url + "/sink")
    for app in (aenv.x, aenv.y):
        assert {claims_of(t)["aud"] for t in app.tokens()} == {app.url}
    assert not aenv.plain.tokens()


def test_MCP_03_userinfo_lookalike_url_does_not_get_the_mapped_token(aenv: AgentEnv) -> None:
    """``http://X@Y/`` is a request to Y: the audience map for X must not match it."""
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    lookalike = aenv.x.url + "@" + aenv.plain.url.removeprefix("http://") + "/sink"
    assert httpx.URL(lookalike).port == httpx.URL(aenv.plain.url).port
    before = len(aenv.plain.log)
    with client(session.auth(audiences={aenv.x.url: aenv.x.url})) as http:
        # Either outcome is fine (plain has no metadata, so discovery fails) — except a token.
        with contextlib.suppress(DiscoveryError, ExchangeError):
            http.get(lookalike)
        leaked = [claims_of(t)["aud"] for t in aenv.plain.tokens()]
        assert not leaked, f"a token for {leaked} was sent to {aenv.plain.url}"
        assert len(aenv.plain.log) > before, "the request did go to the other host"
        assert http.get(aenv.x.url + "/whoami").status_code == 200


# -- refusals from the STS surface as ExchangeError -------------------------------------------------
def test_unknown_task_raises_exchange_error(aenv: AgentEnv) -> None:
    session = aenv.agent().session("tsk_does_not_exist")
    before = len(aenv.x.log)
    with client(session.auth(audiences={aenv.x.url: aenv.x.url})) as http, pytest.raises(ExchangeError) as caught:
        http.get(aenv.x.url + "/whoami")
    assert caught.value.error == "invalid_grant"
    assert len(aenv.x.log) == before, "nothing reaches the service without a token"
    good = aenv.agent().session(aenv.task()["id"])
    with client(good.auth(audiences={aenv.x.url: aenv.x.url})) as http:
        assert http.get(aenv.x.url + "/whoami").status_code == 200


def test_audience_outside_the_task_is_refused_by_the_sts(aenv: AgentEnv) -> None:
    task = aenv.task(audiences=[aenv.x.url])
    session = aenv.agent().session(task["id"])
    with client(session.auth()) as http:
        with pytest.raises(ExchangeError) as caught:
            http.get(aenv.y.url + "/whoami")
        assert caught.value.error == "invalid_target"
        assert http.get(aenv.x.url + "/whoami").status_code == 200


def test_private_key_never_printed() -> None:
    key = DPoPKey()
    assert repr(key) == f"DPoPKey(jkt={key.jkt!r})"
    assert "d" not in key.public_jwk
    assert not hasattr(key, "__dict__")


# -- concurrency: one exchange per audience, even for a burst of first requests ------------------------
def _warm(aenv: AgentEnv) -> None:
    """One sequential call first, so the service has its JWKS and only the agent is under test."""
    warm = aenv.agent().session(aenv.task()["id"])
    with client(warm.auth(audiences={aenv.x.url: aenv.x.url})) as http:
        assert http.get(aenv.x.url + "/whoami").status_code == 200


def _burst(session: TaskSession, url: str, n: int = 5) -> list[Any]:
    async def run() -> list[Any]:
        async with httpx.AsyncClient(auth=session.auth(audiences={url: url}), trust_env=False, timeout=10.0) as http:
            return await asyncio.gather(*(http.get(url + "/whoami") for _ in range(n)), return_exceptions=True)

    return asyncio.run(run())


def test_concurrent_first_requests_share_one_hop_exchange(aenv: AgentEnv) -> None:
    _warm(aenv)
    task = aenv.task()
    session = aenv.agent().session(task["id"])
    results = _burst(session, aenv.x.url)
    assert [getattr(r, "status_code", repr(r)) for r in results] == [200] * 5
    assert session.exchanges == 2, f"{session.exchanges} exchanges for one audience"
    assert len(aenv.hop_audits(task["id"])) == 1


def test_concurrent_first_requests_with_a_file_identity_all_succeed(aenv: AgentEnv, tmp_path: Path) -> None:
    """A JWT-SVID file holds one single-use JWT: a burst must not redeem it more than once."""
    _warm(aenv)
    path = tmp_path / "svid.jwt"
    path.write_text(aenv.sts.svid(), encoding="ascii")
    session = Agent(aenv.sts.url, FileIdentity(path)).session(aenv.task()["id"])
    results = _burst(session, aenv.x.url)
    assert [getattr(r, "status_code", repr(r)) for r in results] == [200] * 5
    # Positive control: a single request with a freshly written file.
    path.write_text(aenv.sts.svid(), encoding="ascii")
    single = Agent(aenv.sts.url, FileIdentity(path)).session(aenv.task()["id"])
    assert [getattr(r, "status_code", repr(r)) for r in _burst(single, aenv.x.url, 1)] == [200]


# -- the provider's lock covers the token fetch, not the request it was fetched for -----------------
HELD = 5.0  # how long a held request waits for an exchange before the test reports none came


class _HoldUntilExchange(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Real HTTP, except that a request to ``held`` waits until a ``/token`` request has gone out
    meanwhile (or ``HELD`` seconds pass): an exchange can only go out if no lock is left held."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.arrived = threading.Event()
        self.exchanged = threading.Event()
        self.exchanged_while_held: bool | None = None
        self.sync, self.asynchronous = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()

    def _note(self, request: httpx.Request) -> bool:
        if request.url.path == "/token" and self.arrived.is_set():
            self.exchanged.set()
        if str(request.url).startswith(self.held):
            self.arrived.set()
            return True
        return False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._note(request):
            self.exchanged_while_held = self.exchanged.wait(HELD)
        return self.sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._note(request):
            self.exchanged_while_held = await asyncio.to_thread(self.exchanged.wait, HELD)
        return await self.asynchronous.handle_async_request(request)

    def close(self) -> None:
        self.sync.close()

    async def aclose(self) -> None:
        await self.asynchronous.aclose()


def test_sync_token_lock_is_released_before_the_request_is_sent(aenv: AgentEnv) -> None:
    _warm(aenv)
    session = aenv.agent().session(aenv.task()["id"])
    gate = _HoldUntilExchange(aenv.x.url + "/whoami")
    audiences = {aenv.x.url: aenv.x.url, aenv.y.url: aenv.y.url}
    with httpx.Client(auth=session.auth(audiences=audiences), transport=gate, trust_env=False, timeout=10.0) as http:
        held: list[int] = []
        first = threading.Thread(target=lambda: held.append(http.get(aenv.x.url + "/whoami").status_code))
        first.start()
        assert gate.arrived.wait(HELD), "the first request never went out"
        other = http.get(aenv.y.url + "/whoami")  # needs a hop token of its own while the first is in flight
        first.join()
    assert gate.exchanged_while_held, "the hop exchange for y waited for the request to x to finish"
    assert (held, other.status_code) == ([200], 200)
    assert session.exchanges == 3  # session, hop for x, hop for y


def test_async_token_lock_is_released_before_the_request_is_sent(aenv: AgentEnv) -> None:
    _warm(aenv)
    session = aenv.agent().session(aenv.task()["id"])
    gate = _HoldUntilExchange(aenv.x.url + "/whoami")
    audiences = {aenv.x.url: aenv.x.url, aenv.y.url: aenv.y.url}

    async def run() -> list[int]:
        auth = session.auth(audiences=audiences)
        async with httpx.AsyncClient(auth=auth, transport=gate, trust_env=False, timeout=10.0) as http:
            first = asyncio.create_task(http.get(aenv.x.url + "/whoami"))
            await asyncio.to_thread(gate.arrived.wait, HELD)
            other = await http.get(aenv.y.url + "/whoami")
            return [(await first).status_code, other.status_code]

    assert asyncio.run(run()) == [200, 200]
    assert gate.exchanged_while_held, "the hop exchange for y waited for the request to x to finish"
    assert session.exchanges == 3


def test_atoken_for_runs_the_exchange_flows_on_an_async_client(aenv: AgentEnv) -> None:
    task = aenv.task(audiences=[aenv.x.url])
    session = aenv.agent().session(task["id"])

    async def run() -> tuple[str, str]:
        async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
            return await session.atoken_for(aenv.x.url, http), await session.atoken_for(aenv.x.url, http)

    token, again = asyncio.run(run())
    claims = claims_of(token)
    assert (claims["aud"], claims["txn"], claims["cnf"]["jkt"]) == (aenv.x.url, task["id"], session.key.jkt)
    assert again == token and session.exchanges == 2  # session and one hop; the second call is served from the cache
    with pytest.raises(ExchangeError) as caught:  # an audience outside the task: the STS's refusal, raised
        asyncio.run(session.atoken_for(aenv.y.url))
    assert (caught.value.status, caught.value.error) == (400, "invalid_target")
