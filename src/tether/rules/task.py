"""Tasks: creation limits and the state machine every token is bound to.

A task is created active and ends exactly once (completed, cancelled, suspended or expired)
and never comes back: everything derived from it dies with it. Requests beyond the server's
caps are refused, not clamped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tether.errors import InvalidRequest, InvalidTarget
from tether.model import Task, TaskState
from tether.rules.principal import is_federated, is_principal
from tether.rules.resource import check_resource_uri
from tether.rules.scope import parse_scope_list

__all__ = ["MAX_AUDIENCES", "TaskLimits", "TaskRequest", "build_task", "check_transition", "is_purpose"]

MAX_AUDIENCES = 32
_MAX_PURPOSE = 256


def is_purpose(text: str) -> bool:
    """A task's purpose is shown to operators (console, CLI, audit): printable text (no control or
    bidi characters, which could make it read as something else) of bounded length."""
    return len(text) <= _MAX_PURPOSE and text.isprintable()


@dataclass(frozen=True)
class TaskLimits:
    """Server maxima and defaults (``tether.toml`` ``[tasks]``)."""

    max_duration: int = 900
    max_depth: int = 5
    max_tokens: int = 10_000
    default_max_depth: int = 3
    default_max_tokens: int = 100


@dataclass(frozen=True)
class TaskRequest:
    agent: str
    audiences: Sequence[str]
    scopes: Sequence[str]
    purpose: str | None = None
    on_behalf_of: str | None = None
    max_duration: int | None = None
    max_depth: int | None = None
    max_tokens: int | None = None


def _bounded(name: str, value: int | None, default: int, maximum: int, minimum: int = 1) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidRequest(f"`{name}` must be an integer from {minimum} to {maximum}")
    return value


def build_task(request: TaskRequest, *, task_id: str, issuer: str, limits: TaskLimits, now: int, created_by: str) -> Task:
    """Validate a creation request against the server's limits and build the task."""
    if not is_principal(request.agent):
        raise InvalidRequest("`agent` must be a principal such as a spiffe id")
    if request.on_behalf_of is not None:
        if not is_principal(request.on_behalf_of):
            raise InvalidRequest("`on_behalf_of` must be a principal such as `user:alice`")
        if request.on_behalf_of == request.agent:
            raise InvalidRequest("`on_behalf_of` must differ from `agent`")
    for name, value in (("agent", request.agent), ("on_behalf_of", request.on_behalf_of)):
        if value is not None and is_federated(value):
            # FED-02: only a peer's verified token opens a task for a `fed:` principal (its linked task)
            raise InvalidRequest(f"`{name}` must not name a federation peer's principal (`fed:`)")
    if not request.audiences or len(request.audiences) > MAX_AUDIENCES:
        raise InvalidRequest(f"between 1 and {MAX_AUDIENCES} audiences are required")
    audiences = tuple(dict.fromkeys(check_resource_uri(a) for a in request.audiences))
    if issuer in audiences:
        raise InvalidTarget("the issuer cannot be a task audience")
    scopes = parse_scope_list(request.scopes)
    if not scopes:
        raise InvalidRequest("at least one scope is required")
    purpose = request.purpose
    if purpose is not None and not is_purpose(purpose):
        raise InvalidRequest(f"`purpose` must be printable text of at most {_MAX_PURPOSE} characters")
    duration = _bounded("max_duration", request.max_duration, limits.max_duration, limits.max_duration)
    min_depth = 1 if request.on_behalf_of else 0
    depth = _bounded(
        "max_depth",
        request.max_depth,
        max(limits.default_max_depth, min_depth),
        limits.max_depth,
        minimum=min_depth,
    )
    tokens = _bounded("max_tokens", request.max_tokens, limits.default_max_tokens, limits.max_tokens)
    return Task(
        id=task_id,
        agent=request.agent,
        audiences=audiences,
        scopes=scopes,
        created_at=now,
        expires_at=now + duration,
        max_depth=depth,
        max_tokens=tokens,
        on_behalf_of=request.on_behalf_of,
        purpose=purpose or None,
        created_by=created_by,
    )


def check_transition(task: Task, target: TaskState, now: float) -> None:
    """Only an active task can end; an ended task never changes again."""
    if target is TaskState.ACTIVE:
        raise InvalidRequest("a task cannot be reactivated")
    state = task.effective_state(now)
    if state is not TaskState.ACTIVE:
        raise InvalidRequest(f"task is already {state.value}")
