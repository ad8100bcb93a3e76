"""A peer's token at the border (``tether.rules.federation``): SECURITY FED-01, FED-02; the ``tsk`` claim.

Foreign tokens are built the way trust domain A builds them (``build_claims``) and read back by
``check_access_token_claims``, as B reads them. Every refusal test starts from the fixture that
passes, so it fails only for the reason it names, with the exact OAuth error code; hypothesis
checks that the ceiling refuses rather than narrows and that the linked task's limits never
exceed what A's task has left or the ceiling.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.config.federation import FederationPeer
from tether.errors import InvalidDPoPProof, InvalidGrant, InvalidScope, InvalidTarget, InvalidToken, UnauthorizedClient
from tether.model import AccessToken, Task, TaskBudget
from tether.rules.claims import Expected, Grant, build_claims, check_access_token_claims
from tether.rules.exchange import Ask, Limits, task_budget
from tether.rules.federation import (
    FEDERATED_KIND,
    check_ceiling,
    check_foreign_token,
    derive_linked_session,
    linked_limits,
    local_chain,
    peek_issuer,
)

NOW = 1_800_000_000
A, B = "https://sts.a.example", "https://sts.b.example"
AGENT = "spiffe://a.example/agent/research"
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
OTHER_JKT = "1ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
WIKI = "https://wiki.b.example"
LIMITS = Limits(session_ttl=900, hop_ttl=300)
PEER = FederationPeer(
    name="a", issuer=A, agents=("spiffe://a.example/agent/*",), audiences=(WIKI,),
    scopes=frozenset({"wiki:read", "wiki:write"}), feed_principal="spiffe://b.example/feed", jwks_uri=A + "/jwks",
    max_depth=3, max_ttl=600, max_tokens=20,
)  # fmt: skip


def foreign(**changes: Any) -> AccessToken:
    """A's hop token for B, as A signs it (``tsk`` from A's task) and B reads it."""
    grant = Grant(
        sub=changes.pop("sub", AGENT), aud=changes.pop("aud", B), scope=changes.pop("scope", frozenset({"wiki:read"})),
        exp=changes.pop("exp", NOW + 300), client_id=changes.pop("client_id", AGENT), agent=AGENT,
        jkt=changes.pop("jkt", JKT), txn=changes.pop("txn", "tsk_home"), actors=changes.pop("actors", ()),
        tsk=changes.pop("tsk", TaskBudget(exp=NOW + 3600, depth=3, tokens=50)),
    )  # fmt: skip
    claims = build_claims(grant, issuer=A, jti="jti-1", now=NOW)
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return check_access_token_claims({"typ": "at+jwt"}, claims, Expected(A, B, skew=10, max_lifetime=900), now=NOW)


def ask(scope: frozenset[str] | None = None, audience: str | None = None, jkt: str | None = JKT) -> Ask:
    return Ask(scope, audience, jkt, B, LIMITS)


def linked(token: AccessToken, **changes: Any) -> Task:
    limits = linked_limits(token, PEER, now=NOW)
    values: dict[str, Any] = {
        "id": "tsk_linked", "agent": PEER.local_name(token.client_id), "audiences": PEER.audiences, "scopes": token.scope,
        "created_at": NOW, "expires_at": limits.expires_at, "max_depth": limits.max_depth, "max_tokens": limits.max_tokens,
    }  # fmt: skip
    values.update(changes)
    return Task(**values)


# -- the tsk claim -----------------------------------------------------------------------------
def test_tsk_is_what_the_task_has_left_and_round_trips() -> None:
    task = Task("t", AGENT, (B,), frozenset({"r"}), NOW, NOW + 900, max_depth=3, max_tokens=40)
    assert task_budget(task, ("x",)) == TaskBudget(exp=NOW + 900, depth=2, tokens=40)
    assert task_budget(task, ("x", "y", "z", "w")).depth == 0
    assert foreign().tsk == TaskBudget(exp=NOW + 3600, depth=3, tokens=50)
    assert foreign(tsk=None).tsk is None  # absent: only a peer's border needs it (and refuses without it)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        "x",
        {"exp": NOW, "depth": 1},
        {"exp": NOW, "depth": 1, "tokens": 1, "more": 1},
        {"exp": NOW, "depth": True, "tokens": 1},
        {"exp": float(NOW), "depth": 1, "tokens": 1},
        {"exp": NOW, "depth": -1, "tokens": 1},
        {"exp": NOW, "depth": 1, "tokens": 0},
        {"exp": 0, "depth": 1, "tokens": 1},
        {"exp": NOW, "depth": 1, "tokens": 2**31},
        {"exp": NOW, "depth": "1", "tokens": 1},
        None,
    ],
)
def test_tsk_malformed_is_invalid_token(bad: Any) -> None:
    grant = Grant(sub=AGENT, aud=B, scope=frozenset(), exp=NOW + 60, client_id=AGENT, agent=AGENT, jkt=JKT, txn="t")
    claims = {**build_claims(grant, issuer=A, jti="j", now=NOW), "tsk": bad}
    with pytest.raises(InvalidToken):
        check_access_token_claims({"typ": "at+jwt"}, claims, Expected(A, B, skew=10, max_lifetime=900), now=NOW)


# -- telling a peer's token apart ---------------------------------------------------------------
def _jws(payload: Any) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "ES256"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}.c2ln"


def test_peek_issuer_reads_iss_and_nothing_else() -> None:
    assert peek_issuer(_jws({"iss": A}), max_length=8192) == A
    assert peek_issuer(_jws({"iss": 7}), max_length=8192) is None
    assert peek_issuer(_jws(["iss"]), max_length=8192) is None
    assert peek_issuer(_jws({"sub": "x"}), max_length=8192) is None
    assert peek_issuer("not a jwt", max_length=8192) is None
    assert peek_issuer(_jws({"iss": A, "pad": "x" * 9000}), max_length=8192) is None  # the size gate first


# -- check_foreign_token ------------------------------------------------------------------------
def test_fed01_a_key_bound_task_bound_token_of_an_admitted_agent_passes() -> None:
    assert check_foreign_token(foreign(), PEER) == TaskBudget(exp=NOW + 3600, depth=3, tokens=50)


@pytest.mark.parametrize(
    ("token", "error", "why"),
    [
        (lambda: foreign(cnf=None), InvalidGrant, "cnf.jkt"),
        (lambda: foreign(cnf={"x5t#S256": JKT}), InvalidGrant, "cnf.jkt"),
        (lambda: foreign(txn=None), InvalidGrant, "txn"),
        (lambda: foreign(tsk=None), InvalidGrant, "tsk"),
        (lambda: foreign(client_id="spiffe://a.example/tool/x"), UnauthorizedClient, "not in peer agents"),
        (lambda: foreign(client_id="spiffe://b.example/agent/x"), UnauthorizedClient, "not in peer agents"),
    ],
)
def test_fed01_foreign_token_refusals(token: Any, error: type[Exception], why: str) -> None:
    with pytest.raises(error) as raised:
        check_foreign_token(token(), PEER)
    assert why in str(getattr(raised.value, "debug", "")), raised.value


# -- check_ceiling ------------------------------------------------------------------------------
def test_fed01_within_the_ceiling_the_asked_scope_is_granted_as_asked() -> None:
    token = foreign(scope=frozenset({"wiki:read", "wiki:write"}))
    assert check_ceiling(token, PEER, ask(), now=NOW) == frozenset({"wiki:read", "wiki:write"})
    assert check_ceiling(token, PEER, ask(frozenset({"wiki:read"})), now=NOW) == frozenset({"wiki:read"})
    assert check_ceiling(token, PEER, ask(audience=WIKI), now=NOW) == token.scope
    assert check_ceiling(token, PEER, ask(audience=B), now=NOW) == token.scope


@pytest.mark.parametrize(
    ("token", "request_", "error"),
    [
        (lambda: foreign(scope=frozenset({"wiki:read"})), ask(frozenset({"wiki:write"})), InvalidScope),
        (lambda: foreign(scope=frozenset({"wiki:read", "wiki:admin"})), ask(), InvalidScope),
        (lambda: foreign(scope=frozenset({"wiki:read", "wiki:admin"})), ask(frozenset({"wiki:admin"})), InvalidScope),
        (foreign, ask(audience="https://elsewhere.example"), InvalidTarget),
        (
            lambda: foreign(actors=("spiffe://a.example/s1", "spiffe://a.example/s2", "spiffe://a.example/s3")),
            ask(),
            InvalidGrant,
        ),
        (lambda: foreign(tsk=TaskBudget(exp=NOW + 60, depth=0, tokens=5)), ask(), InvalidGrant),
        (lambda: foreign(tsk=TaskBudget(exp=NOW, depth=2, tokens=5)), ask(), InvalidGrant),
    ],
)
def test_fed01_beyond_the_ceiling_is_refused(token: Any, request_: Ask, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_ceiling(token(), PEER, request_, now=NOW)


def test_fed01_an_expired_foreign_token_is_refused_even_within_the_skew() -> None:
    token = foreign(exp=NOW + 5)
    with pytest.raises(InvalidGrant):
        check_ceiling(token, PEER, ask(), now=NOW + 5)


_SCOPES = st.frozensets(st.sampled_from(["wiki:read", "wiki:write", "wiki:admin", "mail:send"]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(token_scope=_SCOPES, ceiling=_SCOPES, asked=st.none() | _SCOPES)
def test_fed01_property_refused_never_narrowed(token_scope: frozenset[str], ceiling: frozenset[str],
                                               asked: frozenset[str] | None) -> None:  # fmt: skip
    peer = replace(PEER, scopes=ceiling)
    token = replace(foreign(), scope=token_scope)
    wanted = token_scope if asked is None else asked
    if wanted <= token_scope and wanted <= ceiling:
        assert check_ceiling(token, peer, ask(asked), now=NOW) == wanted
    else:
        with pytest.raises(InvalidScope):
            check_ceiling(token, peer, ask(asked), now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    chain=st.integers(0, 4), depth=st.integers(0, 6), tokens=st.integers(1, 10_000), task_left=st.integers(1, 100_000),
    ceiling_depth=st.integers(0, 5), ttl=st.integers(1, 86_400), ceiling_tokens=st.integers(1, 100_000),
)  # fmt: skip
def test_fed01_property_the_linked_task_never_exceeds_tsk_or_the_ceiling(
    chain: int, depth: int, tokens: int, task_left: int, ceiling_depth: int, ttl: int, ceiling_tokens: int
) -> None:
    peer = replace(PEER, max_depth=ceiling_depth, max_ttl=ttl, max_tokens=ceiling_tokens)
    actors = tuple(f"spiffe://a.example/s{i}" for i in range(chain))
    token = replace(foreign(), actors=actors, tsk=TaskBudget(exp=NOW + task_left, depth=depth, tokens=tokens))
    try:
        check_ceiling(token, peer, ask(), now=NOW)
    except InvalidGrant:
        assert chain >= ceiling_depth or depth < 1
        return
    limits = linked_limits(token, peer, now=NOW)
    assert limits.expires_at <= NOW + task_left and limits.expires_at <= NOW + ttl
    assert limits.max_tokens <= tokens and limits.max_tokens <= ceiling_tokens
    assert limits.max_depth <= ceiling_depth and limits.max_depth <= chain + depth - 1
    assert limits.max_depth >= chain  # the chain as it stands always fits its linked task
    task = linked(token, **limits.__dict__)
    grant = derive_linked_session(token, task, peer, ask(), now=NOW)
    assert grant.tsk is not None and grant.tsk.depth <= depth - 1 and grant.tsk.tokens <= tokens
    assert grant.exp <= token.exp and grant.exp <= task.expires_at


# -- derive_linked_session ----------------------------------------------------------------------
def test_fed02_the_session_keeps_the_chain_namespaced_and_the_key() -> None:
    token = foreign(sub="user:alice", actors=(AGENT,))
    grant = derive_linked_session(token, linked(token), PEER, ask(), now=NOW)
    assert grant.sub == "fed:a/user:alice" and grant.actors == (f"fed:a/{AGENT}",)
    assert grant.client_id == grant.agent == f"fed:a/{AGENT}" and grant.aud == B and grant.jkt == JKT
    assert grant.client_kind == grant.agent_kind == FEDERATED_KIND and grant.client_domain == "a"
    assert grant.txn == "tsk_linked" and grant.exp == token.exp  # never outlives the foreign token
    assert local_chain(("spiffe://b.example/x",), PEER) == ("fed:a/spiffe://b.example/x",)  # never B's own name


@pytest.mark.parametrize(
    ("request_", "task_changes", "error"),
    [
        (ask(jkt=None), {}, InvalidDPoPProof),
        (ask(jkt=OTHER_JKT), {}, InvalidDPoPProof),
        (ask(), {"agent": AGENT}, InvalidGrant),  # a local task of the same-named agent
        (ask(), {"agent": "fed:a/spiffe://a.example/agent/other"}, InvalidGrant),
        (ask(), {"scopes": frozenset({"wiki:write"})}, InvalidScope),  # a joined task of narrower scope
        (ask(), {"expires_at": NOW}, InvalidGrant),
        (ask(), {"max_depth": 0}, InvalidGrant),
    ],
)
def test_fed01_linked_session_refusals(request_: Ask, task_changes: dict[str, Any], error: type[Exception]) -> None:
    token = foreign(sub="user:alice", actors=(AGENT,))
    derive_linked_session(token, linked(token), PEER, ask(), now=NOW)  # the fixture passes
    with pytest.raises(error):
        derive_linked_session(token, linked(token, **task_changes), PEER, request_, now=NOW)
