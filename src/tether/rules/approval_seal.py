"""Approvals bound to the master key, and one-time approve/deny links (SECURITY APR-04).

Data in the store is not trusted because it is in the store: a database writer must not be
able to approve a request, nor change what a pending request shows its approver. So each
approval carries two HMAC-SHA256 tags (RFC 2104) over RFC 8785 JSON, under a key derived from
the master key (``keys.sealed.derive_key(master, "approvals")``):

* ``request_mac`` over what was asked (id, task, binding, view, groups, times), set when the
  request is held and checked before it is shown or decided;
* ``decision_mac`` over the decision (id, digest, status, approver, time, uses, window, reason), set
  when a human decides and checked before a token is issued under it.

A webhook carries one link per approver and decision. A link is ``payload.tag``: the payload
names the approval, the approver, the decision, an expiry and a nonce; the tag is an HMAC under
a second derived key (``"approval-links"``). The STS spends the nonce once (``Store.first_use``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.errors import AccessDenied, ExpiredToken, TetherError
from tether.model import Approval
from tether.rules.signed_token import b64url, open_payload, seal_payload
from tether.rules.tool_call import canonical_json

__all__ = ["DECISIONS", "ApprovalTampered", "Link", "check_sealed", "decision_mac", "request_mac", "sign_link", "verify_link"]

DECISIONS = ("approve", "deny")
MAX_LINK = 1024
_LINK_TAG = b"tether approval link v1\x00"


class ApprovalTampered(TetherError):
    """An approval whose MAC does not verify: written by someone without the master key."""


def _tag(key: bytes, content: Mapping[str, Any], *, prefix: bytes = b"") -> str:
    mac = hmac.new(key, prefix + canonical_json(dict(content)).encode(), hashlib.sha256).digest()
    return b64url(mac)


def request_mac(key: bytes, approval: Approval) -> str:
    return _tag(key, {
        "id": approval.id, "task": approval.task, "digest": approval.digest, "request": approval.request,
        "view": approval.view, "groups": list(approval.groups), "policies": list(approval.policies),
        "created_at": approval.created_at, "expires_at": approval.expires_at,
        "creator_may_approve": approval.creator_may_approve,
    }, prefix=b"request\x00")  # fmt: skip


def decision_mac(key: bytes, approval: Approval) -> str:
    return _tag(key, {
        "id": approval.id, "digest": approval.digest, "status": approval.status.value,
        "decided_by": approval.decided_by, "decided_at": approval.decided_at, "uses": approval.uses,
        "until": approval.until, "reason": approval.reason,
    }, prefix=b"decision\x00")  # fmt: skip


def check_sealed(key: bytes, approval: Approval, *, decided: bool) -> None:
    """Raise ``ApprovalTampered`` unless the request (and, if ``decided``, the decision) MAC verifies."""
    if not hmac.compare_digest(approval.request_mac, request_mac(key, approval)):
        raise ApprovalTampered(f"approval {approval.id}: request MAC does not verify")
    if decided and not hmac.compare_digest(approval.decision_mac, decision_mac(key, approval)):
        raise ApprovalTampered(f"approval {approval.id}: decision MAC does not verify")


@dataclass(frozen=True)
class Link:
    """What one approve/deny link authorises: one decision, by one approver, on one approval, once."""

    approval: str
    approver: str
    decision: str
    exp: int
    nonce: str


def sign_link(key: bytes, link: Link) -> str:
    return seal_payload(key, _LINK_TAG, {"a": link.approval, "p": link.approver, "d": link.decision, "x": link.exp,
                                         "n": link.nonce})  # fmt: skip


_INVALID = "the link is not valid"


def verify_link(key: bytes, token: str, *, now: float) -> Link:
    """The link's content if its tag verifies and it has not expired (``AccessDenied`` / ``ExpiredToken``).

    The tag is checked before anything in the payload is read; single use is the caller's
    (the nonce, ``Store.first_use``)."""
    data = open_payload(key, _LINK_TAG, token, max_length=MAX_LINK)
    if data is None:
        raise AccessDenied(_INVALID, debug="link malformed or its tag does not verify")
    try:
        link = Link(data["a"], data["p"], data["d"], data["x"], data["n"])
    except KeyError:
        raise AccessDenied(_INVALID, debug="link payload malformed") from None
    texts = (link.approval, link.approver, link.nonce)
    if (
        link.decision not in DECISIONS
        or isinstance(link.exp, bool)
        or not isinstance(link.exp, int)
        or not all(isinstance(t, str) for t in texts)
    ):
        raise AccessDenied(_INVALID, debug="link payload malformed")
    if now >= link.exp:
        raise ExpiredToken("the link has expired", debug=f"link for {link.approval} expired")
    return link
