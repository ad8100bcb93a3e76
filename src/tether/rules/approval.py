"""Held requests and human approval — the pure rules (SECURITY APR-01, APR-02, APR-03, APR-05).

A Cedar permit annotated ``@approval("group")`` that determines a request makes it *held*:
not refused, not granted, until a human in that group says yes (``policy.engine.Decision.approval``).

* **What an approval covers** (APR-01) is ``ApprovalBinding``: the task, the agent, the
  requester, the subject, the actors, the audience, the scope, the token's key or certificate
  and, for a tool call, ``tctx`` — SHA-256 over the RFC 8785 JSON of ``{"arguments", "tool"}``
  (``tool_call_context``). A request redeems an approval only if its binding digests the same.
* **What the approver sees** (APR-05) is ``approval_view``, built from the same binding and
  the same tool call, with configured fields, vaulted secrets and token-shaped strings redacted.
* **Who may decide** (APR-02) is ``check_approver``: a human in every group the policies
  named, never a party to the request (the agent, the requester, an actor, the subject unless
  the group is ``subject``), never the task's creator unless the policy says
  ``@approval_creator("allowed")``.
* **What an approval yields** (APR-03) is ``redeem``: pending → RFC 8628 §3.5
  ``authorization_pending``; denied → ``access_denied``; expired → ``expired_token``; approved →
  tokens while its window lasts and its uses remain.
* **At the resource** (APR-01) ``check_call``: a token carrying ``tctx`` serves only the call it
  names; a call the policy holds needs a token carrying ``apr`` (and, for a tool call, ``tctx``).

The request is carried at the token endpoint as RFC 9396 ``authorization_details`` with one
entry of type ``tool_call`` (``parse_authorization_details``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tether.errors import (
    AccessDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidGrant,
    InvalidRequest,
    OAuthError,
)
from tether.model import Approval, ApprovalClaim, ApprovalStatus, Task, binding_name
from tether.rules.jws import JWSError, strict_json_loads
from tether.rules.tool_call import DEFAULT_MAX_ARGUMENT_BYTES, ToolCall, ToolCallError, canonical_json, digest, parse_tool_call

__all__ = [
    "ANNOTATION",
    "CREATOR_ANNOTATION",
    "SUBJECT_GROUP",
    "TOOL_CALL_TYPE",
    "ApprovalBinding",
    "ApprovalRequired",
    "Approver",
    "InvalidAuthorizationDetails",
    "approval_claim",
    "approval_view",
    "check_approver",
    "check_call",
    "check_grant",
    "check_pending",
    "check_use",
    "parse_authorization_details",
    "redact",
    "redeem",
    "sealed_subject",
    "tool_call_context",
    "valid_approval_id",
    "valid_group",
]

#: the Cedar annotation that makes a permit hold its requests for a group's approval
ANNOTATION = "approval"
#: ``@approval_creator("allowed")``: the task's creator may approve (APR-02 "unless the policy says otherwise")
CREATOR_ANNOTATION = "approval_creator"
#: ``@approval("subject")``: the end user the task acts for approves their own request
SUBJECT_GROUP = "subject"
#: the RFC 9396 ``authorization_details`` type of one MCP tool call
TOOL_CALL_TYPE = "tool_call"
REDACTED = "[redacted]"

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{22}")
#: a compact JWS/JWE: never shown to an approver, whatever field it is in
_TOKEN_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: a vaulted secret shorter than this is not searched for in arguments (it would redact common words)
MIN_SECRET_MATCH = 8


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5: ``authorization_details`` malformed or of a type this server does not know."""

    error = "invalid_authorization_details"


class ApprovalRequired(AccessDenied):
    """A call the policy holds for approval, presented without a token that carries it.

    The body (and an MCP error's ``data``) names the groups and, for a tool call, the
    ``tctx`` to ask for: the agent requests a token for exactly this call and waits."""

    def __init__(self, groups: Collection[str], *, tctx: str | None) -> None:
        super().__init__("this call needs a human approval: request a token for it and wait for the approval")
        self.groups = tuple(sorted(groups))
        self.tctx = tctx
        self.fields.update({"approval_required": list(self.groups)})
        if tctx is not None:
            self.fields["tctx"] = tctx


def valid_group(name: object) -> bool:
    """An approver group name: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    return isinstance(name, str) and _GROUP.fullmatch(name) is not None


def valid_approval_id(value: object) -> bool:
    """``apr_`` and 22 base64url characters (128 random bits, ``secrets.token_urlsafe(16)``): unguessable,
    since the id is what an agent polls with."""
    return isinstance(value, str) and _APPROVAL_ID.fullmatch(value) is not None


def tool_call_context(tool: str, arguments: Mapping[str, Any]) -> str:
    """``tctx``: SHA-256 (base64url, no padding) over the RFC 8785 JSON of ``{"arguments", "tool"}``.

    The tool's name is inside the hash, so the same arguments to another tool differ; RFC 8785
    makes key order and number spelling irrelevant, so a client re-serialising the call does not."""
    return digest(canonical_json({"arguments": dict(arguments), "tool": tool}))


def parse_authorization_details(text: str, *, max_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES) -> ToolCall:
    """RFC 9396 §2 ``authorization_details``: a JSON array of exactly one ``tool_call`` object.

    ``{"type": "tool_call", "tool": "<name>", "arguments": {...}}``; no other member (an
    unknown member could carry a restriction this server would silently ignore, §5), duplicate
    keys refused, the arguments capped and checked as a ``tools/call``'s are."""
    if len(text) > 2 * max_bytes + 1024:
        raise InvalidAuthorizationDetails("`authorization_details` is too large")
    try:
        value = strict_json_loads(text.encode("utf-8"))
    except (JWSError, ValueError, UnicodeError):  # JWSError: invalid JSON, a duplicate key, NaN
        raise InvalidAuthorizationDetails("`authorization_details` is not valid JSON") from None
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise InvalidAuthorizationDetails("`authorization_details` must be an array of one object")
    entry = value[0]
    if entry.get("type") != TOOL_CALL_TYPE:
        raise InvalidAuthorizationDetails(f"only the `{TOOL_CALL_TYPE}` authorization details type is supported")
    unknown = set(entry) - {"type", "tool", "arguments"}
    if unknown:
        raise InvalidAuthorizationDetails(f"unknown member `{sorted(unknown)[0]:.40}` in authorization details")
    if "tool" not in entry:
        raise InvalidAuthorizationDetails("a tool_call needs `tool`")
    try:
        return parse_tool_call({"name": entry["tool"], "arguments": entry.get("arguments", {})}, max_bytes=max_bytes)
    except ToolCallError as exc:
        raise InvalidAuthorizationDetails(f"invalid tool call: {exc}") from None


@dataclass(frozen=True)
class ApprovalBinding:
    """Everything one approval covers (APR-01); two requests redeem the same approval only if equal."""

    task: str
    agent: str
    client: str
    sub: str
    aud: str
    scope: frozenset[str]
    actors: tuple[str, ...]
    kind: str
    jkt: str | None
    x5t: str | None
    tctx: str | None

    def canonical(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "agent": self.agent,
            "client": self.client,
            "sub": self.sub,
            "aud": self.aud,
            "scope": sorted(self.scope),
            "actors": list(self.actors),
            "kind": self.kind,
            "jkt": self.jkt,
            "x5t": self.x5t,
            "tctx": self.tctx,
        }

    def digest(self) -> str:
        return digest(canonical_json(self.canonical()))


def redact(value: Any, *, fields: Collection[str], secrets: Collection[str] = ()) -> Any:
    """``value`` with every member named in ``fields`` (any depth, case-insensitive), every string
    holding a vaulted secret and every token-shaped string replaced by ``[redacted]`` (APR-05).

    Member names are text the approver reads too: one holding a secret or a token is shown as
    ``[redacted]`` (numbered if several in one object), and a number is searched as its digits
    (a vaulted PIN or account number sent as a JSON number)."""
    names = {f.lower() for f in fields}
    needles = [s for s in secrets if len(s) >= MIN_SECRET_MATCH]

    def hides(text: str) -> bool:
        return bool(_TOKEN_SHAPED.search(text)) or any(s in text for s in needles)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            taken = {k for k in node if not hides(k)}  # a redacted name never overwrites another member
            out: dict[str, Any] = {}
            for k, v in node.items():
                label, n = k, 1
                if hides(k):
                    label = REDACTED
                    while label in taken:
                        n += 1
                        label = f"{REDACTED} {n}"
                    taken.add(label)
                out[label] = REDACTED if k.lower() in names else walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and hides(node):
            return REDACTED
        if isinstance(node, int | float) and not isinstance(node, bool) and hides(str(node)):
            return REDACTED
        return node

    return walk(value)


def approval_view(
    binding: ApprovalBinding,
    *,
    task: Task,
    call: ToolCall | None,
    fields: Collection[str],
    secrets: Collection[str] = (),
) -> dict[str, Any]:
    """What the approver reads, in plain words, from the binding and the call that ``tctx`` hashes (APR-05)."""
    view: dict[str, Any] = {
        "agent": task.agent,
        "requester": binding.client,
        "on_behalf_of": task.on_behalf_of,
        # sealed with the view (``request_mac``): the task row is not, and APR-02 keeps its creator out
        "created_by": task.created_by,
        "task": task.id,
        "purpose": task.purpose or "",
        "audience": binding.aud,
        "scope": sorted(binding.scope),
        "actors": list(binding.actors),
        "kind": binding.kind,
        "binding": binding_name(binding.jkt, binding.x5t),
    }
    if call is not None:
        view["tool"] = call.name
        view["arguments"] = redact(dict(call.arguments), fields=fields, secrets=secrets)
        view["tctx"] = binding.tctx
    return view


# -- redeeming (the token endpoint) ---------------------------------------------------------


def redeem(approval: Approval, request_digest: str, *, now: float, interval: int) -> None:
    """May this request be issued under ``approval``? Raises the RFC 8628 §3.5 answer if not (APR-03).

    Uses are counted by the caller, atomically, after this check (``Store.count``)."""
    if approval.digest != request_digest:
        raise InvalidGrant("the approval does not cover this request", debug=f"approval {approval.id} digest mismatch")
    status = approval.effective_status(now)
    if status is ApprovalStatus.PENDING:
        raise AuthorizationPending(approval.id, interval=interval, expires_in=int(approval.expires_at - now))
    if status is ApprovalStatus.DENIED:
        raise AccessDenied("the request was denied by its approver", debug=f"approval {approval.id} denied")
    if status is ApprovalStatus.EXPIRED:
        raise ExpiredToken("the approval expired before anyone decided", debug=f"approval {approval.id} expired")
    if approval.until is None or now >= approval.until or approval.uses < 1:
        raise InvalidGrant("the approval has been used", debug=f"approval {approval.id} window ended")


def check_use(approval: Approval, count: int) -> None:
    """``count`` is this redemption's number (1 for the first token): beyond ``uses`` it is spent."""
    if count > approval.uses:
        raise InvalidGrant("the approval has been used", debug=f"approval {approval.id} use {count} of {approval.uses}")


def approval_claim(approval: Approval) -> ApprovalClaim:
    """The ``apr`` claim of a token issued under ``approval``."""
    assert approval.decided_by is not None and approval.decided_at is not None
    return ApprovalClaim(id=approval.id, by=approval.decided_by, at=approval.decided_at)


# -- deciding (the approvers' API) ----------------------------------------------------------


@dataclass(frozen=True)
class Approver:
    """A human proved by the organisation's OIDC provider, with the approver groups they are in."""

    principal: str
    groups: frozenset[str]


def check_pending(approval: Approval, *, now: float) -> None:
    """Only a pending, unexpired approval can be decided (a decision is final)."""
    status = approval.effective_status(now)
    if status is ApprovalStatus.EXPIRED:
        raise ExpiredToken("the approval has expired")
    if status is not ApprovalStatus.PENDING:
        raise InvalidRequest(f"the approval is already {status.value}")


def sealed_subject(approval: Approval, task: Task) -> str | None:
    """The end user the task acts for, if the approval sealed the same one (else ``None``).

    The task row is not sealed: a database writer could name anyone its ``on_behalf_of``. The
    approval's binding is, under ``request_mac``, and its ``sub`` is the task's user (the agent
    for a task that acts for nobody), so the ``subject`` who may approve is the task's user only
    while it is still the one the held request was made for."""
    user = task.on_behalf_of
    if not user or approval.request.get("sub") != user:
        return None
    return user


def check_approver(approval: Approval, approver: Approver, *, task: Task) -> None:
    """Separation of duties (APR-02): in every named group, and no party to the request.

    ``subject`` is satisfied only by the end user the task acts for (``on_behalf_of``); any
    other group by membership (``tether.toml`` lists or the provider's group claim). The agent,
    the requester and every actor can never approve; the subject only for ``subject``; the
    task's creator (as the task says, and as the sealed view recorded it: the task row is not
    sealed) only where the policy said ``@approval_creator("allowed")``."""
    who = approver.principal
    request = approval.request
    # a party is refused whatever the case of its name: providers send the same mailbox as
    # ``Alice@Example.com`` and ``alice@example.com`` (``user:{/email}``); refusing more is fail-closed
    me = who.casefold()
    parties = {str(request.get("agent")), str(request.get("client")), *(str(a) for a in request.get("actors", []))}
    if me in {p.casefold() for p in parties}:
        raise AccessDenied("an approver cannot approve a request they are party to", debug=f"{who} is a party")
    for group in approval.groups:
        if group == SUBJECT_GROUP:
            subject = sealed_subject(approval, task)
            if subject is None or who != subject:
                raise AccessDenied("only the user this task acts for can approve this request", debug=f"{who} not subject")
        elif group not in approver.groups:
            raise AccessDenied(f"the approver is not in group `{group}`", debug=f"{who} not in {group}")
    if SUBJECT_GROUP not in approval.groups and me == str(request.get("sub")).casefold():
        raise AccessDenied("an approver cannot approve a request they are party to", debug=f"{who} is the subject")
    creators = {str(c).casefold() for c in (task.created_by, approval.view.get("created_by")) if c is not None}
    if me in creators and not approval.creator_may_approve:
        raise AccessDenied("the task's creator cannot approve its requests", debug=f"{who} created the task")


def check_grant(
    uses: object, window: object, *, now: int, max_uses: int, max_window: int, default_window: int
) -> tuple[int, int]:
    """The approver's grant: ``uses`` tokens (1 by default) within ``window`` seconds; returns ``(uses, until)``."""
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= max_uses:
        raise InvalidRequest(f"`uses` must be an integer from 1 to {max_uses}")
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= max_window:
        raise InvalidRequest(f"`window` must be a number of seconds from 0 to {max_window}")
    return uses, now + (window or default_window)


# -- at the resource ------------------------------------------------------------------------


def check_call(tctx: str | None, apr: ApprovalClaim | None, call: ToolCall | None, *, required: Collection[str]) -> None:
    """What a token issued under approval may serve, and what a held call needs (APR-01).

    ``call`` is the MCP ``tools/call`` being served (``None`` for any other request);
    ``required`` the groups of the ``call`` policies that hold it (empty if none)."""
    call_tctx = tool_call_context(call.name, call.arguments) if call is not None else None
    if tctx is not None:
        if call_tctx is None:
            raise AccessDenied("this token was approved for one tool call only", debug="tctx token on a non-tool request")
        if call_tctx != tctx:
            raise AccessDenied("the call differs from the one approved", debug=f"tctx {tctx} call {call_tctx}")
    if required and (apr is None or (call is not None and tctx is None)):
        raise ApprovalRequired(required, tctx=call_tctx)
