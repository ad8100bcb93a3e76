"""The request builders (pure): every request they build conforms to ``tether.cedarschema``.

Conformance is checked by Cedar itself: ``cedarpy.is_authorized(..., schema=...)``
refuses a request or entity that does not match the schema with an error in the
diagnostics. TX-05: policies see the current actor as ``context.actor`` (and as the
principal of a delegation); nested actors only in the ``context.actors`` set.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policykit import ADMIN, AGENT, NOON, PAY, SVC_B, SVC_C, WIKI, admin, call, create, exchange, task

from tether.policy.cases import build_request
from tether.policy.entities import ExchangeQuestion, PolicyRequest, exchange_request
from tether.policy.loader import schema, schema_text

TRIVIAL = "permit (principal, action, resource);"
SVC_D = "spiffe://tether.local/svc/d"


def decide(request: PolicyRequest, policies: str = TRIVIAL) -> cedarpy.AuthzResult:
    return cedarpy.is_authorized(request.cedar(), policies, request.entities, schema=schema())


def assert_conforms(request: PolicyRequest) -> None:
    result = decide(request)
    assert result.diagnostics.errors == [], result.diagnostics.errors
    assert result.decision == cedarpy.Decision.Allow


REQUESTS: dict[str, Any] = {
    "session": lambda: exchange(kind="session", audience="http://127.0.0.1:8443"),
    "session on behalf of a user": lambda: exchange(
        kind="session", actors=(AGENT,), the_task=task(on_behalf_of="user:alice@example.org")
    ),
    "hop": lambda: exchange(kind="hop", tags={WIKI: ["wiki", "docs"]}),
    "hop on behalf of a user": lambda: exchange(actors=(AGENT,), the_task=task(on_behalf_of="alice")),
    "delegation": lambda: exchange(kind="delegation", principal=SVC_C, actors=(SVC_C, SVC_B)),
    "delegation on behalf of a user": lambda: exchange(
        kind="delegation", principal=SVC_B, actors=(SVC_B, AGENT), the_task=task(on_behalf_of="alice")
    ),
    "bearer exchange": lambda: exchange(key_bound=False, client=None),
    "ipv6 client": lambda: exchange(client="::1"),
    "garbage client address": lambda: exchange(client="not-an-address"),
    "task without purpose": lambda: exchange(the_task=task(purpose=None)),
    "create_task": create,
    "create_task on behalf of a user": lambda: create(the_task=task(on_behalf_of="alice")),
    "admin token": lambda: admin(operation="token"),
    "admin tasks.read": admin,
    "admin by a non-admin": lambda: admin(caller=AGENT, operation="principals.block"),
    "call": call,
    "call by an actor": lambda: call(caller=SVC_C, actors=(SVC_C, SVC_B), method="POST", path="/write"),
    "call with a tool": lambda: call(tool="search", tags={WIKI: ["wiki"]}),
    "call at the root": lambda: call(path="/"),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_every_builder_request_conforms_to_the_schema(name: str) -> None:
    assert_conforms(REQUESTS[name]())


@pytest.mark.parametrize("action", ["exchange", "create_task", "admin", "call"])
def test_policy_case_requests_conform_to_the_schema(action: str) -> None:
    raw = {"action": action, "principal": AGENT, "resource": PAY, "tags": {PAY: ["payments"]}, "depth": 2}
    if action != "exchange":
        del raw["depth"]
    assert_conforms(build_request(raw, admins=[ADMIN]))


def test_schema_check_is_real_a_malformed_request_is_refused() -> None:
    good = exchange()
    assert_conforms(good)
    no_actor = replace(good, context={k: v for k, v in good.context.items() if k != "actor"})
    assert "attribute `actor`" in " ".join(decide(no_actor).diagnostics.errors)
    wrong_type = replace(good, context={**good.context, "depth": "2"})
    assert decide(wrong_type).diagnostics.errors
    bad_entity = replace(
        good,
        entities=[
            {**e, "attrs": {**e["attrs"], "tags": "wiki"}} if e["uid"]["type"] == "Tether::Service" else e
            for e in good.entities
        ],
    )
    assert decide(bad_entity).diagnostics.errors
    # the schema file is the one the loader validates against
    assert "namespace Tether" in schema_text()


# -- context values ----------------------------------------------------------------------------
def test_exchange_context_carries_what_policies_need() -> None:
    the_task = task(on_behalf_of="alice", purpose="quarterly report")
    request = exchange(
        kind="delegation", principal=SVC_C, actors=(SVC_C, SVC_B, AGENT), scopes=("b", "a"), risk=150, the_task=the_task
    )
    ctx = request.context
    assert request.principal == {"type": "Tether::Workload", "id": SVC_C}
    assert request.resource == {"type": "Tether::Service", "id": WIKI}
    assert ctx["kind"] == "delegation" and ctx["depth"] == 3
    assert ctx["actor"] == SVC_C and set(ctx["actors"]) == {SVC_C, SVC_B, AGENT}
    assert ctx["scopes"] == ["a", "b"] and ctx["risk"] == 100  # clamped to 0-100
    assert ctx["hour"] == 12 and ctx["weekday"] == 3  # 2026-01-01 12:00Z is a Thursday
    assert ctx["task_age"] == 60 and ctx["purpose"] == "quarterly report"
    assert ctx["subject"] == "alice" and ctx["agent"] == AGENT
    assert ctx["client"] == {"__extn": {"fn": "ip", "arg": "127.0.0.1"}}
    assert exchange(risk=-5).context["risk"] == 0
    assert exchange(actors=()).context["actor"] == ""
    assert exchange(client="garbage").context["client"]["__extn"]["arg"] == "0.0.0.0"


def test_policies_can_read_task_group_and_tags() -> None:
    checks = {
        'permit (principal in Tether::Group::"admins", action, resource);': (create(), create(caller=AGENT)),
        'permit (principal, action, resource) when { resource.agent.trust_domain == "tether.local" };': (
            create(),
            create(the_task=task(agent="spiffe://other.example/agent")),
        ),
        'permit (principal, action, resource) when { context.task.on_behalf_of.contains(Tether::User::"alice") };': (
            exchange(the_task=task(on_behalf_of="alice")),
            exchange(),
        ),
        'permit (principal, action, resource) when { resource.tags.contains("payments") };': (
            exchange(audience=PAY, tags={PAY: ["payments"]}),
            exchange(audience=PAY),
        ),
        'permit (principal, action, resource) when { resource in Tether::Service::"https://wiki.example" };': (
            call(),
            call(service=PAY),
        ),
        'permit (principal, action, resource) when { context.tool == "design" && resource.method == "GET" };': (
            call(path="/pages/design/"),
            call(path="/pages/other"),
        ),
        "permit (principal, action, resource) when { context.client.isLoopback() };": (
            exchange(),
            exchange(client="203.0.113.9"),
        ),
    }
    for policy, (allowed, denied) in checks.items():
        yes, no = decide(allowed, policy), decide(denied, policy)
        assert yes.diagnostics.errors == [] and no.diagnostics.errors == [], (policy, yes.diagnostics.errors)
        assert (yes.decision, no.decision) == (cedarpy.Decision.Allow, cedarpy.Decision.Deny), policy


# -- TX-05: the current actor only -------------------------------------------------------------
FORBID_B_AS_ACTOR = (
    f'{TRIVIAL}\nforbid (principal, action, resource) when {{ context.actor == "spiffe://tether.local/svc/b" }};'
)


def test_TX_05_forbid_on_the_current_actor_ignores_nested_actors() -> None:
    nested = exchange(kind="delegation", principal=SVC_C, actors=(SVC_C, SVC_B))
    assert decide(nested, FORBID_B_AS_ACTOR).decision == cedarpy.Decision.Allow
    deeper = exchange(kind="delegation", principal=SVC_D, actors=(SVC_D, SVC_C, SVC_B))
    assert decide(deeper, FORBID_B_AS_ACTOR).decision == cedarpy.Decision.Allow
    nested_call = call(caller=SVC_C, actors=(SVC_C, SVC_B))
    assert decide(nested_call, FORBID_B_AS_ACTOR).decision == cedarpy.Decision.Allow
    # positive control: B as the current actor is refused, for exchange and call
    current = exchange(kind="delegation", principal=SVC_B, actors=(SVC_B,))
    assert decide(current, FORBID_B_AS_ACTOR).decision == cedarpy.Decision.Deny
    assert decide(call(caller=SVC_B, actors=(SVC_B, SVC_C)), FORBID_B_AS_ACTOR).decision == cedarpy.Decision.Deny


def test_TX_05_principal_of_a_delegation_is_the_current_actor() -> None:
    forbid_principal = f'{TRIVIAL}\nforbid (principal == Tether::Workload::"{SVC_B}", action, resource);'
    nested = exchange(kind="delegation", principal=SVC_C, actors=(SVC_C, SVC_B))
    assert nested.principal["id"] == SVC_C
    assert decide(nested, forbid_principal).decision == cedarpy.Decision.Allow
    assert decide(exchange(kind="delegation", principal=SVC_B, actors=(SVC_B,)), forbid_principal).decision == (
        cedarpy.Decision.Deny
    )


def test_TX_05_nested_actors_are_only_in_the_actors_set() -> None:
    request = exchange(kind="delegation", principal=SVC_C, actors=(SVC_C, SVC_B))
    context_strings = {k: v for k, v in request.context.items() if isinstance(v, str)}
    assert SVC_B not in context_strings.values()  # nowhere as a scalar: not actor, subject or agent
    assert request.context["actors"] == [SVC_C, SVC_B]
    informational = f'{TRIVIAL}\nforbid (principal, action, resource) when {{ context.actors.contains("{SVC_B}") }};'
    assert decide(request, informational).decision == cedarpy.Decision.Deny  # visible, as a set
    assert "actors" not in call(caller=SVC_C, actors=(SVC_C, SVC_B)).context  # a call sees only the current actor


def test_requests_are_reproducible() -> None:
    assert exchange(actors=(SVC_B,)) == exchange(actors=(SVC_B,))
    assert exchange(now=NOON).context != exchange(now=NOON + 3600).context


# -- the memo key: equal keys must build equal requests (no decision shared by mistake) ------
_TASKS = [task(), task(id="tsk_other"), task(purpose="payments"), task(on_behalf_of="user:ann"), task(max_depth=1)]
_FIELDS = {
    "kind": st.sampled_from(["session", "hop", "delegation"]),
    "principal": st.sampled_from([AGENT, SVC_B, ADMIN]),
    "principal_kind": st.sampled_from(["spiffe", "oidc"]),
    "audience": st.sampled_from([WIKI, PAY]),
    "task": st.sampled_from(_TASKS),
    "scopes": st.frozensets(st.sampled_from(["wiki:read", "wiki:write"])),
    "actors": st.lists(st.sampled_from([SVC_B, SVC_C]), max_size=2).map(tuple),
    "subject": st.sampled_from([AGENT, "user:ann"]),
    "now": st.sampled_from([NOON, NOON + 0.25, NOON + 0.75, NOON + 1, NOON + 3600]),
    "client": st.sampled_from([None, "127.0.0.1", "10.0.0.7", "::1", "not an ip"]),
    "admins": st.sampled_from([frozenset(), frozenset({ADMIN}), frozenset({ADMIN, AGENT})]),
    "tags": st.sampled_from([{}, {PAY: ("pci",)}, {WIKI: ("internal", "docs")}]),
    "risk": st.sampled_from([0, 50, 100]),
    "key_bound": st.booleans(),
    "binding": st.sampled_from(["dpop", "mtls", "dpop+mtls"]),
}
_ARGS = st.fixed_dictionaries(_FIELDS)


@settings(max_examples=400, deadline=None)
@given(_ARGS, _ARGS, st.sets(st.sampled_from(sorted(_FIELDS)), min_size=1, max_size=2))
def test_equal_memo_keys_build_equal_requests(a: dict[str, Any], other: dict[str, Any], redrawn: set[str]) -> None:
    b = {**a, **{name: other[name] for name in redrawn}}  # one or two inputs differ, often to an equal value
    if ExchangeQuestion(**a).key() == ExchangeQuestion(**b).key():
        assert exchange_request(ExchangeQuestion(**a)) == exchange_request(ExchangeQuestion(**b))
    if exchange_request(ExchangeQuestion(**a)) != exchange_request(ExchangeQuestion(**b)):
        assert ExchangeQuestion(**a).key() != ExchangeQuestion(**b).key()


@pytest.mark.parametrize(
    ("name", "other"),
    [("principal", SVC_B), ("audience", PAY), ("task", task(max_tokens=5)), ("scopes", frozenset({"wiki:write"})),
     ("actors", (SVC_C,)), ("now", NOON + 1), ("client", "10.9.9.9"), ("admins", frozenset({AGENT})),
     ("tags", {WIKI: ("secret",)}), ("risk", 90), ("key_bound", False), ("kind", "delegation"),
     ("principal_kind", "oidc"), ("subject", "user:ann"), ("binding", "mtls")],
)  # fmt: skip
def test_every_input_of_the_request_is_in_its_memo_key(name: str, other: Any) -> None:
    base: dict[str, Any] = {
        "kind": "hop", "principal": AGENT, "principal_kind": "spiffe", "audience": WIKI, "task": task(),
        "scopes": frozenset({"wiki:read"}), "actors": (), "subject": AGENT, "now": NOON, "client": "127.0.0.1",
        "admins": frozenset({ADMIN}), "tags": {}, "risk": 0, "key_bound": True,
    }  # fmt: skip
    changed = {**base, name: other}
    assert ExchangeQuestion(**base).key() != ExchangeQuestion(**changed).key()
