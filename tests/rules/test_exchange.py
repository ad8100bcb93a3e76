"""RFC 8693 attenuation (``tether.rules.exchange``): SECURITY.md T-01, T-02, T-03, TX-05, TX-07; DESIGN "Rules that never bend".

Parents are built the way the STS builds them: a ``Grant`` from the rule, turned into claims by
``build_claims`` and read back by ``check_access_token_claims``. Every refusal test first derives
successfully from the same fixture, so it fails only for the reason it names. The hypothesis
properties check the attenuation invariants over random tasks, parents, requests and actors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import InvalidGrant, InvalidScope, InvalidTarget, OAuthError
from tether.model import AccessToken, IdentityKind, Task, TaskBudget, TaskState, WorkloadIdentity
from tether.rules import exchange
from tether.rules.claims import MAX_ACT_DEPTH, Expected, Grant, build_claims, check_access_token_claims
from tether.rules.exchange import Ask, Limits, check_task_usable

NOW = 1_700_000_000


def derive_session(
    ident: WorkloadIdentity, task: Task, *, scope: frozenset[str] | None, audience: str | None, issuer: str, jkt: str,
    limits: Limits, now: int, agent_source: tuple[str, str] | None = None,
) -> Grant:  # fmt: skip
    """``exchange.derive_session`` with the ask spelled out, as the cases below read best."""
    return exchange.derive_session(ident, task, Ask(scope, audience, jkt, issuer, limits), now=now, agent_source=agent_source)


def derive_hop(
    parent: AccessToken, task: Task, *, scope: frozenset[str] | None, audience: str | None, issuer: str, jkt: str,
    limits: Limits, now: int, **actor: Any,
) -> Grant:  # fmt: skip
    """``exchange.derive_hop`` with the ask spelled out (``actor`` holds the actor keywords)."""
    return exchange.derive_hop(parent, task, Ask(scope, audience, jkt, issuer, limits), now=now, **actor)


ISSUER = "https://sts.example"
AGENT = "spiffe://example.org/agent/research"
USER = "user:alice"
SVC = {name: f"spiffe://example.org/svc/{name}" for name in "bcde"}
URL = {name: f"https://{name}.example" for name in "bcde"}
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
JKT_B = "jkt-of-service-b-key-aaaaaaaaaaaaaaaaaaaaaa"
SCOPES = frozenset({"wiki:read", "wiki:write", "mail:send"})
LIMITS = Limits(session_ttl=900, hop_ttl=300)
ENDED = [TaskState.COMPLETED, TaskState.CANCELLED, TaskState.SUSPENDED, TaskState.EXPIRED]


def make_task(**changes: Any) -> Task:
    base: dict[str, Any] = {
        "id": "task-1",
        "agent": AGENT,
        "audiences": tuple(URL.values()),
        "scopes": SCOPES,
        "created_at": NOW - 100,
        "expires_at": NOW + 800,
        "max_depth": 3,
        "max_tokens": 100,
        "purpose": "summarise the wiki",
    }
    base.update(changes)
    return Task(**base)


def identity(**changes: Any) -> WorkloadIdentity:
    base: dict[str, Any] = {
        "principal": AGENT,
        "kind": IdentityKind.SPIFFE,
        "issuer": "spiffe://example.org",
        "exp": NOW + 600,
        "jti": "svid-1",
        "token_hash": "h",
    }
    base.update(changes)
    return WorkloadIdentity(**base)


def as_token(grant: Grant, *, jti: str = "jti-1", now: int = NOW) -> AccessToken:
    """What a resource or the STS reads back from a token signed for ``grant``."""
    claims = build_claims(grant, issuer=ISSUER, jti=jti, now=now)
    return check_access_token_claims({"typ": "at+jwt"}, claims, Expected(ISSUER, None, skew=0, max_lifetime=10**9), now=now)


def session_for(task: Task, **kwargs: Any) -> AccessToken:
    kwargs.setdefault("scope", None)
    kwargs.setdefault("audience", None)
    grant = derive_session(identity(), task, issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW, **kwargs)
    return as_token(grant, jti="session-1")


def session(**changes: Any) -> AccessToken:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": AGENT,
        "aud": ISSUER,
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "session-1",
        "client_id": AGENT,
        "scope": SCOPES,
        "txn": "task-1",
        "jkt": JKT,
        "agent": AGENT,
        "actors": (),
    }
    base.update(changes)
    return AccessToken(**base)


def hop(parent: AccessToken, task: Task, **kwargs: Any) -> Grant:
    kwargs.setdefault("scope", None)
    kwargs.setdefault("audience", URL["b"])
    kwargs.setdefault("issuer", ISSUER)
    kwargs.setdefault("jkt", JKT)
    kwargs.setdefault("limits", LIMITS)
    kwargs.setdefault("now", NOW)
    return derive_hop(parent, task, **kwargs)


def refused(error: type[OAuthError], parent: AccessToken, task: Task, **kwargs: Any) -> OAuthError:
    with pytest.raises(error) as info:
        hop(parent, task, **kwargs)
    assert type(info.value) is error
    assert info.value.error == error.error
    return info.value


# ---------------------------------------------------------------------------------------------
# derive_session
# ---------------------------------------------------------------------------------------------


def test_session_grant() -> None:
    grant = derive_session(
        identity(exp=NOW + 300), make_task(), scope=None, audience=None, issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW
    )
    assert grant == Grant(
        sub=AGENT,
        aud=ISSUER,
        scope=SCOPES,
        exp=NOW + 300,
        client_id=AGENT,
        agent=AGENT,
        jkt=JKT,
        txn="task-1",
        actors=(),
        purp="summarise the wiki",
        parent_jti=None,
        client_kind="spiffe",
        agent_kind="spiffe",
        client_domain="example.org",
        agent_domain="example.org",
        tsk=TaskBudget(exp=NOW + 800, depth=3, tokens=100),  # what the task has left (issue 19)
    )


def test_session_on_behalf_of_makes_agent_the_first_actor() -> None:
    grant = derive_session(
        identity(), make_task(on_behalf_of=USER), scope=None, audience=ISSUER, issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW
    )
    assert (grant.sub, grant.actors, grant.client_id, grant.agent) == (USER, (AGENT,), AGENT, AGENT)


@pytest.mark.parametrize(
    ("session_ttl", "task_exp", "svid_exp", "expected"),
    [
        pytest.param(900, NOW + 800, NOW + 600, NOW + 600, id="svid-exp"),
        pytest.param(60, NOW + 800, NOW + 600, NOW + 60, id="session-ttl"),
        pytest.param(900, NOW + 30, NOW + 600, NOW + 30, id="task-expiry"),
    ],
)
def test_T_03_session_exp_is_the_tightest_cap(session_ttl: int, task_exp: int, svid_exp: int, expected: int) -> None:
    grant = derive_session(
        identity(exp=svid_exp),
        make_task(expires_at=task_exp),
        scope=None,
        audience=None,
        issuer=ISSUER,
        jkt=JKT,
        limits=Limits(session_ttl=session_ttl),
        now=NOW,
    )
    assert grant.exp == expected


def _session(task: Task | None = None, ident: WorkloadIdentity | None = None, **kwargs: Any) -> Grant:
    kwargs.setdefault("scope", None)
    kwargs.setdefault("audience", None)
    return derive_session(ident or identity(), task or make_task(), issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW, **kwargs)


def test_session_narrower_scope_accepted_wider_refused() -> None:
    assert _session(scope=frozenset({"wiki:read"})).scope == {"wiki:read"}
    with pytest.raises(InvalidScope) as info:
        _session(scope=frozenset({"wiki:read", "admin"}))
    assert info.value.error == "invalid_scope"
    assert "`admin`" in info.value.description


def test_session_for_another_workload_refused() -> None:
    _session()
    with pytest.raises(InvalidGrant) as info:
        _session(ident=identity(principal=SVC["b"]))
    assert info.value.error == "invalid_grant"


@pytest.mark.parametrize("audience", [URL["b"], ISSUER + "/", "https://other.example"])
def test_session_audience_other_than_issuer_refused(audience: str) -> None:
    assert _session(audience=ISSUER).aud == ISSUER
    with pytest.raises(InvalidTarget) as info:
        _session(audience=audience)
    assert info.value.error == "invalid_target"


@pytest.mark.parametrize(
    "task",
    [*(make_task(state=s) for s in ENDED), make_task(expires_at=NOW), make_task(tokens_issued=100)],
    ids=[*(s.value for s in ENDED), "past-hard-cap", "token-cap"],
)
def test_session_for_unusable_task_refused(task: Task) -> None:
    _session()
    with pytest.raises(InvalidGrant) as info:
        _session(task)
    assert info.value.error == "invalid_grant"


def test_session_from_expired_svid_refused() -> None:
    _session()
    with pytest.raises(InvalidGrant):
        _session(ident=identity(exp=NOW))


# ---------------------------------------------------------------------------------------------
# derive_hop: the successful shape, delegation is sticky
# ---------------------------------------------------------------------------------------------


def test_holder_hop_grant() -> None:
    task = make_task()
    parent = session_for(task)
    grant = hop(parent, task, scope=frozenset({"wiki:read"}))
    assert grant == Grant(
        sub=AGENT,
        aud=URL["b"],
        scope=frozenset({"wiki:read"}),
        exp=NOW + 300,
        client_id=AGENT,
        agent=AGENT,
        jkt=JKT,
        txn="task-1",
        actors=(),
        purp="summarise the wiki",
        parent_jti="session-1",
        client_kind="spiffe",
        agent_kind="spiffe",
        client_domain="example.org",
        agent_domain="example.org",
        tsk=TaskBudget(exp=NOW + 800, depth=3, tokens=100),
    )


@pytest.mark.parametrize("kind", list(IdentityKind))
def test_kinds_come_from_the_identity_and_follow_the_chain(kind: IdentityKind) -> None:
    """The requester's and the agent's kinds are what their identities proved, never guessed from a name."""
    task = make_task()
    parent = as_token(derive_session(identity(kind=kind), task, scope=None, audience=None, issuer=ISSUER, jkt=JKT,
                                     limits=LIMITS, now=NOW), jti="session-1")  # fmt: skip
    assert (parent.client_kind, parent.agent_kind) == (kind.value, kind.value)
    holder = as_token(hop(parent, task), jti="hop-b")
    assert (holder.client_kind, holder.agent_kind) == (kind.value, kind.value)
    delegated = hop(holder, task, audience=URL["c"], actor=SVC["b"], actor_kind="client", audience_principals=(SVC["b"],))
    assert (delegated.client_kind, delegated.agent_kind) == ("client", kind.value)


def test_actor_hop_nests_actor_and_binds_its_key() -> None:
    task = make_task()
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]), jti="hop-b")
    grant = hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],), jkt=JKT_B)
    assert (grant.sub, grant.aud, grant.actors, grant.client_id, grant.agent, grant.jkt, grant.parent_jti) == (
        AGENT,
        URL["c"],
        (SVC["b"],),
        SVC["b"],
        AGENT,
        JKT_B,
        "hop-b",
    )


def test_TX_05_delegation_is_sticky_through_every_hop() -> None:
    task = make_task(on_behalf_of=USER, max_depth=4)
    parent = session_for(task)
    assert parent.actors == (AGENT,)
    for_b = as_token(hop(parent, task, audience=URL["b"]), jti="hop-b")
    assert (for_b.sub, for_b.actors) == (USER, (AGENT,))
    for_c = as_token(hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],)), jti="hop-c")
    assert for_c.actors == (SVC["b"], AGENT)
    assert for_c.current_actor == SVC["b"]
    grant = hop(for_c, task, audience=URL["d"], actor=SVC["c"], audience_principals=(SVC["c"],))
    assert grant.actors == (SVC["c"], SVC["b"], AGENT)
    assert build_claims(grant, issuer=ISSUER, jti="j", now=NOW)["act"] == {
        "sub": SVC["c"],
        "act": {"sub": SVC["b"], "act": {"sub": AGENT}},
    }
    assert grant.sub == USER


def test_actor_equal_to_principal_shaped_audience_accepted() -> None:
    task = make_task(audiences=(SVC["b"], URL["c"]))
    for_b = as_token(hop(session_for(task), task, audience=SVC["b"]))
    assert hop(for_b, task, audience=URL["c"], actor=SVC["b"]).actors == (SVC["b"],)


# ---------------------------------------------------------------------------------------------
# derive_hop refusals: task → invalid_grant
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        *({"state": s} for s in ENDED),
        {"expires_at": NOW},
        {"expires_at": NOW - 1},
        {"tokens_issued": 100},
        {"tokens_issued": 101},
        {"max_tokens": 1, "tokens_issued": 1},
    ],
    ids=[*(s.value for s in ENDED), "hard-cap-now", "hard-cap-past", "cap-reached", "cap-exceeded", "cap-of-one"],
)
def test_hop_for_unusable_task_refused(changes: dict[str, Any]) -> None:
    task = make_task()
    parent = session_for(task)
    hop(parent, task)
    refused(InvalidGrant, parent, dataclasses.replace(task, **changes))


def test_check_task_usable_boundaries() -> None:
    check_task_usable(make_task(expires_at=NOW + 1, tokens_issued=99), NOW)
    with pytest.raises(InvalidGrant, match="expired"):
        check_task_usable(make_task(expires_at=NOW + 1), NOW + 1)
    with pytest.raises(InvalidGrant, match="limit"):
        check_task_usable(make_task(tokens_issued=100), NOW)


@pytest.mark.parametrize("txn", ["task-2", None, "task-1 "], ids=repr)
def test_subject_token_of_another_task_refused(txn: str | None) -> None:
    task = make_task()
    hop(session(), task)
    refused(InvalidGrant, session(txn=txn), task)


# ---------------------------------------------------------------------------------------------
# derive_hop refusals: who may exchange → invalid_grant
# ---------------------------------------------------------------------------------------------


def test_holder_exchanging_a_non_session_token_refused() -> None:
    task = make_task()
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]))
    assert hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],)).aud == URL["c"]
    refused(InvalidGrant, for_b, task, audience=URL["c"])


@pytest.mark.parametrize(
    ("actor", "audience_principals"),
    [
        pytest.param(SVC["c"], (SVC["b"],), id="other-service"),
        pytest.param(SVC["b"], (), id="no-principals-registered"),
        pytest.param(SVC["c"], (), id="other-no-principals"),
        pytest.param(URL["c"], (SVC["b"],), id="other-url"),
        pytest.param(AGENT + "/x", (SVC["b"],), id="agent-lookalike"),
    ],
)
def test_actor_not_the_audience_refused_no_splicing(actor: str, audience_principals: tuple[str, ...]) -> None:
    task = make_task()
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]))
    hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],))
    refused(InvalidGrant, for_b, task, audience=URL["c"], actor=actor, audience_principals=audience_principals)


def test_cycle_actor_already_in_chain_refused() -> None:
    task = make_task(max_depth=5)
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]), jti="b")
    for_c = as_token(hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],)), jti="c")
    back_to_b = as_token(hop(for_c, task, audience=URL["b"], actor=SVC["c"], audience_principals=(SVC["c"],)), jti="b2")
    assert back_to_b.actors == (SVC["c"], SVC["b"])
    assert hop(back_to_b, task, audience=URL["d"], actor=SVC["e"], audience_principals=(SVC["e"], SVC["b"])).actors == (
        SVC["e"],
        SVC["c"],
        SVC["b"],
    )
    error = refused(InvalidGrant, back_to_b, task, audience=URL["d"], actor=SVC["b"], audience_principals=(SVC["b"],))
    assert "chain" in error.description


def test_cycle_actor_equal_to_sub_refused() -> None:
    task = make_task(audiences=(AGENT, URL["c"]))
    to_self = as_token(hop(session_for(task), task, audience=AGENT))
    assert to_self.sub == AGENT
    refused(InvalidGrant, to_self, task, audience=URL["c"], actor=AGENT)


def test_cycle_actor_equal_to_agent_refused() -> None:
    task = make_task(on_behalf_of=USER)
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]))
    assert (for_b.sub, for_b.agent) == (USER, AGENT)
    hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"], AGENT))
    refused(InvalidGrant, for_b, task, audience=URL["c"], actor=AGENT, audience_principals=(SVC["b"], AGENT))


def test_cycle_actor_equal_to_on_behalf_of_subject_refused() -> None:
    task = make_task(on_behalf_of=USER)
    for_b = as_token(hop(session_for(task), task, audience=URL["b"]))
    refused(InvalidGrant, for_b, task, audience=URL["c"], actor=USER, audience_principals=(USER,))


@pytest.mark.parametrize("max_depth", [0, 1, 2, 3])
def test_depth_over_max_depth_refused(max_depth: int) -> None:
    task = make_task(max_depth=max_depth)
    parent = as_token(hop(session_for(task), task, audience=URL["b"]), jti="hop-0")
    services = ["b", "c", "d", "e"]
    for depth in range(max_depth):
        here, there = services[depth], services[depth + 1]
        parent = as_token(hop(parent, task, audience=URL[there], actor=SVC[here], audience_principals=(SVC[here],)))
        assert parent.depth == depth + 1
    here = services[max_depth]
    error = refused(
        InvalidGrant, parent, task, audience=URL["b" if here != "b" else "c"], actor=SVC[here], audience_principals=(SVC[here],)
    )
    assert "max_depth" in error.description


def test_depth_capped_by_max_act_depth_even_if_task_allows_more() -> None:
    names = [f"spiffe://example.org/svc/n{i}" for i in range(MAX_ACT_DEPTH + 1)]
    task = make_task(max_depth=MAX_ACT_DEPTH + 3, audiences=(URL["b"],))
    parent = session(aud=URL["b"], actors=tuple(names[1:MAX_ACT_DEPTH]))
    newest = names[MAX_ACT_DEPTH]
    assert len(hop(parent, task, actor=newest, audience_principals=(newest,)).actors) == MAX_ACT_DEPTH
    parent = session(aud=URL["b"], actors=tuple(names[1 : MAX_ACT_DEPTH + 1]))
    refused(InvalidGrant, parent, task, actor=names[0], audience_principals=(names[0],))


def test_holder_path_never_exceeds_max_depth() -> None:
    """Defence in depth: a parent whose chain is already longer than the task allows yields nothing deeper."""
    task = make_task(max_depth=1)
    hop(session(actors=(AGENT,), sub=USER), task)
    refused(InvalidGrant, session(actors=(SVC["b"], AGENT), sub=USER), task)


# ---------------------------------------------------------------------------------------------
# derive_hop refusals: audience → invalid_target (T-02)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param(None, id="missing"),
        pytest.param(ISSUER, id="issuer"),
        pytest.param("https://other.example", id="not-in-task"),
        pytest.param(URL["b"] + "/", id="trailing-slash"),
        pytest.param(URL["b"].upper(), id="case"),
        pytest.param(URL["b"] + "#x", id="fragment"),
        pytest.param("", id="empty"),
    ],
)
def test_T_02_audience_not_allowed_refused(audience: str | None) -> None:
    task = make_task()
    hop(session(), task, audience=URL["b"])
    refused(InvalidTarget, session(), task, audience=audience)


def test_T_02_issuer_refused_even_if_listed_in_task() -> None:
    task = make_task(audiences=(URL["b"], ISSUER))
    hop(session(), task, audience=URL["b"])
    refused(InvalidTarget, session(), task, audience=ISSUER)


# ---------------------------------------------------------------------------------------------
# derive_hop refusals: scope → invalid_scope (T-01)
# ---------------------------------------------------------------------------------------------


def test_T_01_widening_beyond_parent_refused_naming_scope() -> None:
    task = make_task()
    parent = session(scope=frozenset({"wiki:read"}))
    assert hop(parent, task, scope=frozenset({"wiki:read"})).scope == {"wiki:read"}
    error = refused(InvalidScope, parent, task, scope=frozenset({"wiki:read", "wiki:write", "admin"}))
    assert "`admin wiki:write`" in error.description


def test_T_01_widening_beyond_task_refused() -> None:
    task = make_task(scopes=frozenset({"wiki:read"}))
    parent = session(scope=frozenset({"wiki:read", "mail:send"}))
    assert hop(parent, task, scope=frozenset({"wiki:read"})).scope == {"wiki:read"}
    error = refused(InvalidScope, parent, task, scope=frozenset({"mail:send"}))
    assert "the task" in error.description
    refused(InvalidScope, parent, task, scope=None)  # defaulting to the parent's scope is not a silent narrowing either


def test_T_01_widening_by_actor_refused() -> None:
    task = make_task()
    for_b = as_token(hop(session_for(task), task, scope=frozenset({"wiki:read"})))
    hop(for_b, task, audience=URL["c"], actor=SVC["b"], audience_principals=(SVC["b"],))
    refused(
        InvalidScope,
        for_b,
        task,
        audience=URL["c"],
        actor=SVC["b"],
        audience_principals=(SVC["b"],),
        scope=frozenset({"wiki:write"}),
    )


def test_scope_defaults_to_parent_and_empty_request_is_allowed() -> None:
    task = make_task()
    parent = session(scope=frozenset({"wiki:read", "mail:send"}))
    assert hop(parent, task).scope == {"wiki:read", "mail:send"}
    assert hop(parent, task, scope=frozenset()).scope == frozenset()


# ---------------------------------------------------------------------------------------------
# T-03 TTL: exp ≤ parent, ≤ task, ≤ now + hop_ttl; looping cannot extend access
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent_exp", "task_exp", "hop_ttl", "expected"),
    [
        pytest.param(NOW + 60, NOW + 800, 3600, NOW + 60, id="parent-exp"),
        pytest.param(NOW + 600, NOW + 30, 3600, NOW + 30, id="task-expiry"),
        pytest.param(NOW + 600, NOW + 800, 300, NOW + 300, id="hop-ttl"),
        pytest.param(NOW + 1, NOW + 800, 300, NOW + 1, id="one-second-left"),
    ],
)
def test_T_03_exp_is_the_tightest_cap(parent_exp: int, task_exp: int, hop_ttl: int, expected: int) -> None:
    grant = hop(session(exp=parent_exp), make_task(expires_at=task_exp), limits=Limits(hop_ttl=hop_ttl))
    assert grant.exp == expected


@pytest.mark.parametrize("parent_exp", [NOW, NOW - 1, NOW - 3600])
def test_T_03_expired_parent_refused(parent_exp: int) -> None:
    task = make_task()
    hop(session(exp=NOW + 1), task)
    refused(InvalidGrant, session(exp=parent_exp), task)


def test_T_03_fifty_re_exchanges_never_extend_exp() -> None:
    task = make_task(expires_at=NOW + 10_000, max_tokens=1000)
    parent = session(exp=NOW + 600)
    limits = Limits(hop_ttl=3600)
    seen = []
    for i in range(50):
        now = NOW + i * 11
        grant = hop(parent, dataclasses.replace(task, tokens_issued=i), limits=limits, now=now)
        assert grant.exp <= parent.exp
        assert grant.exp > now
        seen.append(grant.exp)
    assert max(seen) == parent.exp
    refused(InvalidGrant, parent, task, limits=limits, now=NOW + 600)


def test_T_03_chained_exchanges_exp_never_increases() -> None:
    task = make_task(max_depth=4, expires_at=NOW + 10_000)
    limits = Limits(hop_ttl=3600)
    parent = as_token(hop(session(exp=NOW + 120), task, limits=limits), jti="h0")
    services = ["b", "c", "d", "e"]
    for i, (here, there) in enumerate(zip(services, [*services[1:], "b"], strict=True)):
        now = NOW + 10 * (i + 1)
        grant = hop(
            parent, task, audience=URL[there], actor=SVC[here], audience_principals=(SVC[here],), limits=limits, now=now
        )
        assert grant.exp <= parent.exp <= NOW + 120
        parent = as_token(grant, jti=f"h{i + 1}", now=now)


# ---------------------------------------------------------------------------------------------
# hypothesis: attenuation invariants over random inputs
# ---------------------------------------------------------------------------------------------

_SCOPE_UNIVERSE = ["a", "b", "c", "d"]
_AUDIENCES = list(URL.values())
_PRINCIPALS = [AGENT, USER, *SVC.values()]
_scope_sets = st.frozensets(st.sampled_from(_SCOPE_UNIVERSE))


@st.composite
def exchange_cases(draw: st.DrawFn) -> dict[str, Any]:
    """Random inputs, biased so that roughly half of them pass every check but the one a property is about."""
    now = NOW + draw(st.integers(min_value=0, max_value=100))
    usable = draw(st.booleans()) or draw(st.booleans())
    task = make_task(
        scopes=draw(_scope_sets.filter(bool)),
        audiences=tuple(draw(st.lists(st.sampled_from([*_AUDIENCES, ISSUER]), min_size=1, max_size=4, unique=True))),
        max_depth=draw(st.integers(min_value=0, max_value=MAX_ACT_DEPTH + 1)),
        max_tokens=draw(st.integers(min_value=1, max_value=3)),
        tokens_issued=0 if usable else draw(st.integers(min_value=0, max_value=3)),
        expires_at=now + draw(st.integers(min_value=1 if usable else -10, max_value=2000)),
        state=TaskState.ACTIVE if usable else draw(st.sampled_from([TaskState.ACTIVE, *ENDED])),
    )
    actors = tuple(draw(st.lists(st.sampled_from(_PRINCIPALS), max_size=MAX_ACT_DEPTH, unique=True)))
    holder = draw(st.booleans())
    parent = session(
        sub=draw(st.sampled_from(_PRINCIPALS)),
        agent=draw(st.sampled_from(_PRINCIPALS)),
        aud=ISSUER if holder else draw(st.sampled_from([ISSUER, *_AUDIENCES, *SVC.values()])),
        scope=draw(_scope_sets),
        exp=now + draw(st.integers(min_value=1 if usable else -10, max_value=2000)),
        txn="task-1" if usable else draw(st.sampled_from(["task-1", "task-2", None])),
        actors=actors,
    )
    audience: str | None
    if usable or draw(st.booleans()):
        audience = draw(st.sampled_from(task.audiences))
    else:
        audience = draw(st.sampled_from([None, ISSUER, "https://other.example", *_AUDIENCES]))
    allowed = sorted(parent.scope & task.scopes)
    within = st.frozensets(st.sampled_from(allowed)) if allowed else st.just(frozenset[str]())
    scope = draw(st.one_of(st.none(), within, _scope_sets))
    actor = None if holder else draw(st.one_of(st.none(), st.sampled_from(_PRINCIPALS)))
    principals = draw(st.lists(st.sampled_from(_PRINCIPALS), max_size=3))
    if actor is not None and draw(st.booleans()):
        principals.append(actor)
    return {
        "parent": parent,
        "task": task,
        "scope": scope,
        "audience": audience,
        "actor": actor,
        "audience_principals": tuple(principals),
        "hop_ttl": draw(st.integers(min_value=1, max_value=3600)),
        "now": now,
    }


def _derive(case: dict[str, Any]) -> Grant | OAuthError:
    try:
        return derive_hop(
            case["parent"],
            case["task"],
            scope=case["scope"],
            audience=case["audience"],
            issuer=ISSUER,
            jkt=JKT,
            limits=Limits(hop_ttl=case["hop_ttl"]),
            now=case["now"],
            actor=case["actor"],
            audience_principals=case["audience_principals"],
        )
    except (InvalidGrant, InvalidTarget, InvalidScope) as exc:
        return exc


PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(exchange_cases())
def test_T_01_property_scope_within_parent_and_task(case: dict[str, Any]) -> None:
    grant = _derive(case)
    if isinstance(grant, Grant):
        assert grant.scope <= case["parent"].scope & case["task"].scopes
        if case["scope"] is not None:
            assert grant.scope == case["scope"]  # exactly what was asked: never silently narrowed


@PROPERTY
@given(exchange_cases())
def test_T_01_property_widening_raises_instead_of_narrowing(case: dict[str, Any]) -> None:
    requested = case["scope"] if case["scope"] is not None else case["parent"].scope
    result = _derive(case)
    if not requested <= case["parent"].scope & case["task"].scopes:
        assert not isinstance(result, Grant)


@PROPERTY
@given(exchange_cases(), st.data())
def test_T_01_property_widening_is_invalid_scope(case: dict[str, Any], data: st.DataObject) -> None:
    """With every other check satisfied, a request beyond the parent is ``invalid_scope``."""
    task = dataclasses.replace(
        case["task"], state=TaskState.ACTIVE, tokens_issued=0, expires_at=case["now"] + 100, audiences=(URL["b"],)
    )
    parent = dataclasses.replace(case["parent"], aud=ISSUER, txn="task-1", exp=case["now"] + 100, actors=())
    extra = data.draw(st.sampled_from([s for s in [*_SCOPE_UNIVERSE, "z"] if s not in parent.scope]))
    with pytest.raises(InvalidScope) as info:
        hop(parent, task, scope=parent.scope | {extra}, now=case["now"])
    assert f"`{extra}`" in info.value.description or extra in info.value.description


@PROPERTY
@given(exchange_cases())
def test_T_03_property_exp_never_exceeds_caps(case: dict[str, Any]) -> None:
    grant = _derive(case)
    if isinstance(grant, Grant):
        assert case["now"] < grant.exp <= min(case["parent"].exp, case["task"].expires_at, case["now"] + case["hop_ttl"])


@PROPERTY
@given(exchange_cases())
def test_property_depth_within_task_max_depth(case: dict[str, Any]) -> None:
    grant = _derive(case)
    if isinstance(grant, Grant):
        assert len(grant.actors) <= min(case["task"].max_depth, MAX_ACT_DEPTH)
        assert len(set(grant.actors)) == len(grant.actors)


@PROPERTY
@given(exchange_cases())
def test_T_02_property_audience_allowed_by_task(case: dict[str, Any]) -> None:
    grant = _derive(case)
    if isinstance(grant, Grant):
        assert grant.aud == case["audience"]
        assert grant.aud in case["task"].audiences
        assert grant.aud != ISSUER


@PROPERTY
@given(exchange_cases())
def test_TX_05_property_identity_and_chain_carried(case: dict[str, Any]) -> None:
    grant = _derive(case)
    if isinstance(grant, Grant):
        parent: AccessToken = case["parent"]
        assert (grant.sub, grant.agent, grant.txn, grant.parent_jti) == (parent.sub, parent.agent, case["task"].id, parent.jti)
        if case["actor"] is None:
            assert grant.actors == parent.actors
            assert parent.aud == ISSUER
        else:
            assert grant.actors == (case["actor"], *parent.actors)
            assert case["actor"] not in (parent.sub, parent.agent, *parent.actors)
            assert case["actor"] == parent.aud or case["actor"] in case["audience_principals"]
        assert case["task"].effective_state(case["now"]) is TaskState.ACTIVE
        assert case["task"].tokens_issued < case["task"].max_tokens


def test_session_needs_the_agent_from_the_source_that_owns_its_name() -> None:
    """Issue 21 finding 2: the same principal string from another identity source does not redeem the task."""
    task = make_task()
    own = ("spiffe", "spiffe://example.org")
    grant = derive_session(identity(), task, scope=None, audience=None, issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW,
                           agent_source=own)  # fmt: skip
    assert grant.client_id == AGENT  # positive control
    for other in (("oidc", "https://dev.k8s.example"), ("spiffe", "spiffe://dev.example"), ("none", "")):
        with pytest.raises(InvalidGrant):
            derive_session(identity(), task, scope=None, audience=None, issuer=ISSUER, jkt=JKT, limits=LIMITS, now=NOW,
                           agent_source=other)  # fmt: skip
