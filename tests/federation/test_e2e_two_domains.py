"""Two trust domains, two ``tether serve`` processes, HTTPS on loopback (issue 19; SECURITY FED-01..03).

A (``a.example``) and B (``b.example``) are made by ``tether init --trust-domain --tls`` and
configured as operators would: B trusts A as ``[[federation]]`` peer ``a`` through A's signing
bundle endpoint (``GET /federation/bundle``, pinned to A's dev CA) and follows A's revocation feed
as ``spiffe://b.example/feed``; A trusts B's trust domain through B's SVID bundle endpoint
(``GET /spiffe/bundle``, so it can authenticate that follower) and lists it in ``[revocations]
subscribers``. Neither bundle's keys verify the other kind of token (SECURITY JWT-08, JWT-12). One pair of
processes serves the whole module.

The chain: A's agent hops at A to A's summarizer service; the service, as actor, exchanges at A
for a token whose audience is B's issuer and presents it at B (RFC 7523 jwt-bearer, DPoP with its
key). B opens a linked task and issues a session with A's chain namespaced ``fed:a/…``; the
service then hops at B to B's wiki. Revocation latency across the border is printed, never
asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from e2e_kit import DPoPClient, ServedDomain, claims_of, header_of, init_domains, trust_both

from helpers import ACCESS, JWT, JWT_BEARER, TOKEN_EXCHANGE
from tether.federation.published import SIGNING_BUNDLE_PATH, SVID_BUNDLE_PATH
from tether.rules.jws import sign_compact

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SUMMARIZER = "https://summarizer.a.example"
WIKI_B = "https://wiki.b.example"
AGENT, SERVICE = "agent/research", "svc/summarizer"


@dataclass
class Pair:
    a: ServedDomain
    b: ServedDomain


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("two-domains")
    a, b = init_domains(root, "a.example", "b.example")
    trust_both(a, b)
    a.append(f'[[trust_domains]]\nname = "b.example"\nbundle_endpoint = "{b.url}{SVID_BUNDLE_PATH}"\n'
             f'bundle_ca_file = "{b.ca_file}"\n\n'
             f'[[resources]]\nuri = "{SUMMARIZER}"\nprincipals = ["{a.principal(SERVICE)}"]\n\n'
             f'[revocations]\nsubscribers = ["{b.principal("feed")}"]')  # fmt: skip
    b.append(f'[[federation]]\nname = "a"\nissuer = "{a.url}"\nbundle_endpoint = "{a.url}{SIGNING_BUNDLE_PATH}"\n'
             f'bundle_ca_file = "{a.ca_file}"\nagents = ["{a.principal("agent/*")}", "{a.principal("svc/*")}"]\n'
             f'audiences = ["{WIKI_B}"]\nscopes = ["wiki:read"]\nmax_depth = 3\nmax_ttl = 600\nstale_after = 2\n'
             f'feed_principal = "{b.principal("feed")}"')  # fmt: skip
    b.launch()  # B first: its follower retries until A is up, and A fetches B's bundle when it first needs it
    a.launch()
    try:
        b.wait_healthy()
        a.wait_healthy()
        feed_fresh(b)
        yield Pair(a, b)
    finally:
        for side in (a, b):
            side.stop()
            for client in side.clients:
                client.close()


def feed_fresh(b: ServedDomain, *, fresh: bool = True, timeout: float = 20.0) -> float:
    """Wait until B's /healthz says A's feed is ``fresh`` (or stale); the seconds it took."""
    start = time.monotonic()
    want = {"fresh": 1, "stale": 0} if fresh else {"fresh": 0, "stale": 1}
    while b.health().get("federation") != want:
        assert time.monotonic() - start < timeout, f"feed never {'fresh' if fresh else 'stale'}: {b.log()[-3000:]}"
        time.sleep(0.05)
    return time.monotonic() - start


def logged(side: ServedDomain, text: str, timeout: float = 5.0) -> None:
    """The server's log says ``text`` (its feed watcher logs a change within a tick)."""
    deadline = time.monotonic() + timeout
    while text not in side.log():
        assert time.monotonic() < deadline, f"`{text}` never logged"
        time.sleep(0.05)


@dataclass
class Crossing:
    task: str
    foreign: str
    service: DPoPClient


def foreign_token(pair: Pair, *, scope: str = "wiki:read", task: str | None = None) -> Crossing:
    """At A: a task (unless given), the agent's session and hop to the summarizer, and the
    summarizer's actor exchange for a token whose audience is B's issuer."""
    a = pair.a
    if task is None:
        body = {"agent": a.principal(AGENT), "audiences": [SUMMARIZER, pair.b.url], "scopes": ["wiki:read", "wiki:write"],
                "max_depth": 3}  # fmt: skip
        created = a.admin("POST", "/tasks", json=body)
        assert created.status_code == 201, created.text
        task = str(created.json()["id"])
    agent = DPoPClient(a)
    session = agent.token(a.svid(AGENT), task=task)
    hop = agent.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS,
                            "resource": SUMMARIZER, "scope": "wiki:read wiki:write"})  # fmt: skip
    assert hop.status_code == 200, hop.text
    service = DPoPClient(a)
    onward = service.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": hop.json()["access_token"],
                                 "subject_token_type": ACCESS, "actor_token": a.svid(SERVICE), "actor_token_type": JWT,
                                 "resource": pair.b.url, "scope": scope})  # fmt: skip
    assert onward.status_code == 200, onward.text
    return Crossing(task, str(onward.json()["access_token"]), service)


def cross(pair: Pair, crossing: Crossing, **extra: str) -> tuple[httpx.Response, DPoPClient]:
    """At B: the foreign token as an RFC 7523 grant, DPoP from the key it is bound to."""
    at_b = DPoPClient(pair.b, crossing.service.key)
    return at_b.post_token({"grant_type": JWT_BEARER_GRANT, "assertion": crossing.foreign, **extra}), at_b


def hop_at_b(client: DPoPClient, session: str, resource: str = WIKI_B) -> httpx.Response:
    return client.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS,
                              "resource": resource})  # fmt: skip


def test_e2e_fed01_fed02_chained_exchange_keeps_the_act_chain_namespaced(pair: Pair) -> None:
    crossing = foreign_token(pair)
    foreign = claims_of(crossing.foreign)
    assert foreign["act"] == {"sub": pair.a.principal(SERVICE)} and foreign["aud"] == pair.b.url
    response, at_b = cross(pair, crossing)
    assert response.status_code == 200, response.text
    session = response.json()["access_token"]
    claims = claims_of(session)
    assert claims["iss"] == pair.b.url and claims["sub"] == f"fed:a/{pair.a.principal(AGENT)}"
    assert claims["act"] == {"sub": f"fed:a/{pair.a.principal(SERVICE)}"}
    assert claims["cnf"] == {"jkt": crossing.service.key.jkt}
    hop = hop_at_b(at_b, session)
    assert hop.status_code == 200, hop.text
    hop_claims = claims_of(hop.json()["access_token"])
    assert hop_claims["aud"] == WIKI_B and hop_claims["txn"] == claims["txn"]  # inside the linked task
    seen = pair.b.introspect(hop.json()["access_token"])
    assert seen["active"] is True and seen["act"] == claims["act"] and seen["txn"] == claims["txn"]


def test_e2e_fed01_beyond_the_ceiling_is_refused_never_narrowed(pair: Pair) -> None:
    wider = foreign_token(pair, scope="wiki:read wiki:write")  # within A's task, beyond B's ceiling
    response, _ = cross(pair, wider)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope", response.text
    elsewhere = foreign_token(pair)
    response, _ = cross(pair, elsewhere, resource="https://payroll.b.example")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target", response.text


def test_e2e_fed03_revocation_crosses_the_border(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    crossing = foreign_token(pair)
    response, at_b = cross(pair, crossing)
    assert response.status_code == 200, response.text
    session = response.json()["access_token"]
    hop = hop_at_b(at_b, session).json()["access_token"]
    assert pair.b.introspect(hop)["active"] is True
    ended = pair.a.admin("POST", f"/tasks/{crossing.task}/complete")
    assert ended.status_code == 200, ended.text
    start = time.monotonic()
    while pair.b.introspect(hop)["active"] or pair.b.introspect(session)["active"]:
        assert time.monotonic() - start < 10, "B still honours the linked task's tokens"
        time.sleep(0.01)
    latency = time.monotonic() - start
    with capsys.disabled():
        print(f"\ncross-domain revocation: B's tokens inactive {latency * 1000:.0f} ms after A's task completed")
    refused = hop_at_b(at_b, session)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text


def test_e2e_fed03_token_of_an_ended_foreign_task_opens_nothing(pair: Pair) -> None:
    crossing = foreign_token(pair)
    spare = foreign_token(pair, task=crossing.task)  # minted before the end, presented after it
    response, _ = cross(pair, crossing)
    assert response.status_code == 200, response.text
    assert pair.a.admin("POST", f"/tasks/{crossing.task}/complete").status_code == 200
    start = time.monotonic()
    while pair.b.introspect(response.json()["access_token"])["active"]:
        assert time.monotonic() - start < 10
        time.sleep(0.01)
    late, _ = cross(pair, spare)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant", late.text


def test_e2e_fed03_b_fails_closed_without_a_feed_and_recovers(pair: Pair) -> None:
    crossing = foreign_token(pair)
    response, at_b = cross(pair, crossing)
    assert response.status_code == 200, response.text
    session = response.json()["access_token"]
    waiting = foreign_token(pair)
    # the gauge is published on the feed watcher's tick (``PeerFollower.observe``), not on the crossing
    deadline = time.monotonic() + 5
    while 'tether_federation_feed_fresh{peer="a"} 1.0' not in pair.b.http().get(pair.b.url + "/metrics").text:
        assert time.monotonic() < deadline, "B's /metrics never said A's feed is fresh"
        time.sleep(0.05)
    pair.a.stop()
    try:
        feed_fresh(pair.b, fresh=False)
        refused = hop_at_b(at_b, session)
        assert refused.status_code == 503 and refused.json()["error"] == "temporarily_unavailable", refused.text
        refused, _ = cross(pair, waiting)
        assert refused.status_code == 503 and refused.json()["error"] == "temporarily_unavailable", refused.text
        logged(pair.b, "went stale")
    finally:
        pair.a.start()
    feed_fresh(pair.b)
    assert hop_at_b(at_b, session).status_code == 200
    again, _ = cross(pair, waiting)
    assert again.status_code == 200, again.text
    logged(pair.b, "is current again")


def test_e2e_jwt08_access_token_signed_by_a_svid_key_is_refused_at_the_peer(pair: Pair) -> None:
    """A's crossing token exactly (typ ``at+jwt``, iss A, aud B, cnf, txn, tsk …), signed by the dev
    trust domain key ``tether init`` made: whoever mints A's SVIDs cannot forge A's crossings at B."""
    crossing = foreign_token(pair)
    dev = pair.a.dev()
    header = {**header_of(crossing.foreign), "alg": "ES256", "kid": dev.kid}
    forged = Crossing(crossing.task, sign_compact(header, claims_of(crossing.foreign), dev.key, "ES256"), crossing.service)
    refused, _ = cross(pair, forged)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text
    genuine, _ = cross(pair, crossing)  # the same claims under A's token key: accepted
    assert genuine.status_code == 200, genuine.text


def test_e2e_jwt12_svid_signed_by_the_token_key_is_refused_where_the_svid_bundle_is_trusted(pair: Pair) -> None:
    """A trusts b.example through B's SVID bundle: a JWT-SVID of B's feed follower signed by B's
    access-token key is no SVID of b.example (``invalid_client`` at A's feed)."""
    b_feed = pair.b.principal("feed")
    genuine = pair.b.dev().issue(b_feed, audience=pair.a.url, ttl=120, now=int(time.time()))
    claims = claims_of(pair.b.dev().issue(b_feed, audience=pair.a.url, ttl=120, now=int(time.time())))
    forged = pair.b.signing_ring().sign(claims, typ="JWT")
    feed = pair.a.http()
    refused = feed.post(pair.a.url + "/revocations", data={"client_assertion": forged, "client_assertion_type": JWT_BEARER})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", refused.text
    accepted = feed.post(pair.a.url + "/revocations", data={"client_assertion": genuine, "client_assertion_type": JWT_BEARER})
    assert accepted.status_code == 200, accepted.text


def test_e2e_published_bundles_hold_disjoint_keys(pair: Pair) -> None:
    from tether.identity.spiffe_bundle import parse_bundle

    http = pair.a.http()
    svid_response = http.get(pair.a.url + SVID_BUNDLE_PATH)
    signing_response = http.get(pair.a.url + SIGNING_BUNDLE_PATH)
    for response in (svid_response, signing_response):
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        cached = http.get(str(response.url), headers={"If-None-Match": response.headers["etag"]})
        assert cached.status_code == 304 and cached.headers["etag"] == response.headers["etag"]
    svids, signing = parse_bundle(svid_response.json()), parse_bundle(signing_response.json())
    jwks = http.get(pair.a.url + "/jwks").json()
    assert set(svids.jwt.by_kid) == {pair.a.dev().kid} and len(svids.x509) == 1
    assert set(signing.jwt.by_kid) == {k["kid"] for k in jwks["keys"]} and signing.x509 == ()
    assert not set(svids.jwt.by_kid) & set(signing.jwt.by_kid)
    assert svid_response.headers["etag"] != signing_response.headers["etag"]
