"""Task creation limits and the task state machine (``tether.rules.task``): DESIGN "The flow" step 1, STYLE rule 6.

Requests beyond the server's limits are refused with ``invalid_request``, never clamped; the
issuer can never be a task audience (``invalid_target``); a task ends exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tether.errors import InvalidRequest, InvalidScope, InvalidTarget, OAuthError
from tether.model import Task, TaskState
from tether.rules.task import MAX_AUDIENCES, TaskLimits, TaskRequest, build_task, check_transition

NOW = 1_700_000_000
ISSUER = "https://sts.example"
AGENT = "spiffe://example.org/agent/research"
API = "https://api.example"
LIMITS = TaskLimits(max_duration=900, max_depth=5, max_tokens=10_000, default_max_depth=3, default_max_tokens=100)


def request(**changes: Any) -> TaskRequest:
    base: dict[str, Any] = {"agent": AGENT, "audiences": [API], "scopes": ["wiki:read", "wiki:write"]}
    base.update(changes)
    return TaskRequest(**base)


def build(req: TaskRequest, limits: TaskLimits = LIMITS) -> Task:
    return build_task(req, task_id="task-1", issuer=ISSUER, limits=limits, now=NOW, created_by="spiffe://example.org/admin")


def refused(req: TaskRequest, error: type[OAuthError] = InvalidRequest, limits: TaskLimits = LIMITS) -> OAuthError:
    assert build(request(), limits).state is TaskState.ACTIVE  # positive control
    with pytest.raises(error) as info:
        build(req, limits)
    assert type(info.value) is error
    assert info.value.error == error.error
    return info.value


# ---------------------------------------------------------------------------------------------
# build_task: defaults and exact values
# ---------------------------------------------------------------------------------------------


def test_defaults_applied() -> None:
    task = build(request())
    assert task == Task(
        id="task-1",
        agent=AGENT,
        audiences=(API,),
        scopes=frozenset({"wiki:read", "wiki:write"}),
        created_at=NOW,
        expires_at=NOW + LIMITS.max_duration,
        max_depth=LIMITS.default_max_depth,
        max_tokens=LIMITS.default_max_tokens,
        state=TaskState.ACTIVE,
        on_behalf_of=None,
        purpose=None,
        tokens_issued=0,
        ended_at=None,
        created_by="spiffe://example.org/admin",
    )


@pytest.mark.parametrize(
    ("field", "value", "attribute", "expected"),
    [
        ("max_duration", 1, "expires_at", NOW + 1),
        ("max_duration", 900, "expires_at", NOW + 900),
        ("max_depth", 0, "max_depth", 0),
        ("max_depth", 5, "max_depth", 5),
        ("max_tokens", 1, "max_tokens", 1),
        ("max_tokens", 10_000, "max_tokens", 10_000),
    ],
)
def test_values_within_limits_used_exactly(field: str, value: int, attribute: str, expected: int) -> None:
    assert getattr(build(request(**{field: value})), attribute) == expected


def test_audiences_deduplicated_in_order() -> None:
    task = build(request(audiences=[API, "https://b.example", API]))
    assert task.audiences == (API, "https://b.example")


def test_on_behalf_of_and_purpose_kept() -> None:
    task = build(request(on_behalf_of="user:alice", purpose="summarise the wiki"))
    assert (task.on_behalf_of, task.purpose) == ("user:alice", "summarise the wiki")
    assert task.max_depth == LIMITS.default_max_depth


# ---------------------------------------------------------------------------------------------
# every limit refused, not clamped
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_duration", 0),
        ("max_duration", -1),
        ("max_duration", 901),
        ("max_duration", 10**12),
        ("max_duration", True),
        ("max_duration", 60.0),
        ("max_duration", "60"),
        ("max_depth", -1),
        ("max_depth", 6),
        ("max_depth", True),
        ("max_depth", 2.5),
        ("max_depth", "3"),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 10_001),
        ("max_tokens", False),
        ("max_tokens", 1.0),
        ("max_tokens", "100"),
    ],
    ids=lambda v: repr(v)[:16],
)
def test_limit_exceeded_refused_not_clamped(field: str, value: object) -> None:
    error = refused(request(**{field: value}))
    assert f"`{field}`" in error.description


def test_limits_follow_server_configuration() -> None:
    tight = TaskLimits(max_duration=60, max_depth=1, max_tokens=5, default_max_depth=1, default_max_tokens=5)
    assert build(request(max_duration=60, max_depth=1, max_tokens=5), tight).expires_at == NOW + 60
    for field, value in (("max_duration", 61), ("max_depth", 2), ("max_tokens", 6)):
        refused(request(**{field: value}), limits=tight)


def test_on_behalf_of_requires_depth_of_at_least_one() -> None:
    assert build(request(on_behalf_of="user:alice", max_depth=1)).max_depth == 1
    refused(request(on_behalf_of="user:alice", max_depth=0))


def test_on_behalf_of_default_depth_at_least_one() -> None:
    zero_default = TaskLimits(default_max_depth=0)
    assert build(request(), zero_default).max_depth == 0
    assert build(request(on_behalf_of="user:alice"), zero_default).max_depth == 1


@pytest.mark.parametrize("count", [0, MAX_AUDIENCES + 1])
def test_audience_count_refused(count: int) -> None:
    assert len(build(request(audiences=[f"https://s{i}.example" for i in range(MAX_AUDIENCES)])).audiences) == MAX_AUDIENCES
    refused(request(audiences=[f"https://s{i}.example" for i in range(count)]))


@pytest.mark.parametrize(
    "purpose",
    [
        pytest.param("p" * 257, id="too-long"),
        pytest.param("line\nbreak", id="newline"),
        pytest.param("tab\there", id="tab"),
        pytest.param("\x00", id="nul"),
    ],
)
def test_purpose_refused(purpose: str) -> None:
    assert build(request(purpose="p" * 256)).purpose == "p" * 256
    refused(request(purpose=purpose))


# ---------------------------------------------------------------------------------------------
# identities and targets
# ---------------------------------------------------------------------------------------------


def test_on_behalf_of_equal_to_agent_refused() -> None:
    refused(request(on_behalf_of=AGENT))


@pytest.mark.parametrize("agent", ["research-agent", "spiffe://Example.org/agent", "spiffe://example.org", "", "user: x"])
def test_agent_must_be_a_principal(agent: str) -> None:
    refused(request(agent=agent))


@pytest.mark.parametrize("subject", ["alice", "spiffe://example.org/a/", "user:"])
def test_on_behalf_of_must_be_a_principal(subject: str) -> None:
    refused(request(on_behalf_of=subject))


@pytest.mark.parametrize(
    "audiences", [pytest.param([ISSUER], id="only-issuer"), pytest.param([API, ISSUER], id="issuer-among-others")]
)
def test_issuer_as_audience_refused(audiences: list[str]) -> None:
    refused(request(audiences=audiences), InvalidTarget)


@pytest.mark.parametrize("audience", [API + "#x", "/relative", "api.example/x", "https://"], ids=repr)
def test_AUX_02_invalid_audience_refused(audience: str) -> None:
    refused(request(audiences=[API, audience]), InvalidTarget)


def test_scopes_required_and_valid() -> None:
    refused(request(scopes=[]))
    refused(request(scopes=["ok", "not ok"]), InvalidScope)
    refused(request(scopes=['q"uote']), InvalidScope)


# ---------------------------------------------------------------------------------------------
# state machine: only an active task can end, and an ended task never changes
# ---------------------------------------------------------------------------------------------

ENDED = [TaskState.COMPLETED, TaskState.CANCELLED, TaskState.SUSPENDED, TaskState.EXPIRED]


@pytest.mark.parametrize("target", ENDED)
def test_active_task_can_end(target: TaskState) -> None:
    check_transition(build(request()), target, NOW + 1)


@pytest.mark.parametrize("state", ENDED)
@pytest.mark.parametrize("target", [*ENDED, TaskState.ACTIVE])
def test_ended_task_never_changes(state: TaskState, target: TaskState) -> None:
    active = build(request())
    check_transition(active, TaskState.COMPLETED, NOW + 1)
    ended = dataclasses.replace(active, state=state, ended_at=NOW + 1)
    with pytest.raises(InvalidRequest) as info:
        check_transition(ended, target, NOW + 2)
    assert info.value.error == "invalid_request"


def test_active_task_cannot_be_reactivated() -> None:
    with pytest.raises(InvalidRequest):
        check_transition(build(request()), TaskState.ACTIVE, NOW + 1)


def test_task_past_hard_cap_is_expired_and_cannot_end_again() -> None:
    task = build(request(max_duration=60))
    assert task.effective_state(NOW + 59) is TaskState.ACTIVE
    assert task.effective_state(NOW + 60) is TaskState.EXPIRED
    check_transition(task, TaskState.COMPLETED, NOW + 59)
    with pytest.raises(InvalidRequest) as info:
        check_transition(task, TaskState.COMPLETED, NOW + 60)
    assert "expired" in info.value.description
