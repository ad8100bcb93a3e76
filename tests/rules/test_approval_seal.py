"""``tether.rules.approval_seal``: approvals bound to the master key, one-time links (SECURITY APR-04).

A database writer without the master key must not be able to approve a request, nor change
what a pending one shows: every field of an approval is under the request MAC or the decision
MAC, and flipping any one of them fails ``check_sealed``. Links: the tag is checked before the
payload is read; forged, tampered, truncated, foreign-key, expired and oversize links are refused
with the exact wire code.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from typing import Any

import pytest

from tether.errors import OAuthError
from tether.model import Approval, ApprovalStatus
from tether.rules.approval_seal import (
    MAX_LINK,
    ApprovalTampered,
    Link,
    check_sealed,
    decision_mac,
    request_mac,
    sign_link,
    verify_link,
)

KEY = hashlib.sha256(b"approvals").digest()
LINK_KEY = hashlib.sha256(b"approval-links").digest()
NOW = 1_800_000_000
APR_ID = "apr_" + "B" * 22


def pending(**changes: Any) -> Approval:
    base = Approval(
        **{
            "id": APR_ID,
            "task": "tsk_1",
            "digest": "d" * 43,
            "request": {"aud": "https://pay.example", "scope": ["pay:write"], "actors": []},
            "view": {"tool": "pay", "arguments": {"amount": 10}},
            "groups": ("finance",),
            "policies": ("payments-need-finance",),
            "created_at": NOW - 10,
            "expires_at": NOW + 290,
            "request_mac": "",
            **changes,
        }
    )
    return dataclasses.replace(base, request_mac=request_mac(KEY, base))


def decided(**changes: Any) -> Approval:
    base = dataclasses.replace(
        pending(),
        status=ApprovalStatus.APPROVED,
        decided_by="user:alice@example.com",
        decided_at=NOW,
        reason="invoice checked",
        uses=1,
        until=NOW + 300,
        **changes,
    )
    return dataclasses.replace(base, decision_mac=decision_mac(KEY, base))


#: one changed value per field; ``request_mac`` and ``decision_mac`` are the tags themselves
REQUEST_FIELDS: dict[str, Any] = {
    "id": "apr_" + "C" * 22,
    "task": "tsk_2",
    "digest": "e" * 43,
    "request": {"aud": "https://evil.example", "scope": ["pay:write"], "actors": []},
    "view": {"tool": "pay", "arguments": {"amount": 1}},
    "groups": ("ops",),
    "policies": ("other",),
    "created_at": NOW - 11,
    "expires_at": NOW + 10_000,
    "creator_may_approve": True,
}
DECISION_FIELDS: dict[str, Any] = {
    "status": ApprovalStatus.DENIED,
    "decided_by": "user:mallory@example.com",
    "decided_at": NOW + 1,
    "reason": "looks fine to me",
    "uses": 20,
    "until": NOW + 3600,
}


def test_every_field_is_under_a_mac() -> None:
    names = {f.name for f in dataclasses.fields(Approval)} - {"request_mac", "decision_mac"}
    assert names == set(REQUEST_FIELDS) | set(DECISION_FIELDS)


def test_apr04_sealed_approval_verifies() -> None:
    check_sealed(KEY, pending(), decided=False)
    check_sealed(KEY, decided(), decided=True)
    check_sealed(KEY, decided(), decided=False)


@pytest.mark.parametrize("field", sorted(REQUEST_FIELDS))
def test_apr04_flipping_a_request_field_fails(field: str) -> None:
    for sealed in (pending(), decided()):
        tampered = dataclasses.replace(sealed, **{field: REQUEST_FIELDS[field]})
        with pytest.raises(ApprovalTampered, match="request MAC"):
            check_sealed(KEY, tampered, decided=False)
        with pytest.raises(ApprovalTampered):
            check_sealed(KEY, tampered, decided=True)


def test_apr04_nested_request_and_view_changes_fail() -> None:
    sealed = pending()
    view = json.loads(json.dumps(sealed.view))
    view["arguments"]["amount"] = 10.5
    with pytest.raises(ApprovalTampered):
        check_sealed(KEY, dataclasses.replace(sealed, view=view), decided=False)
    request = {**sealed.request, "scope": ["pay:write", "pay:admin"]}
    with pytest.raises(ApprovalTampered):
        check_sealed(KEY, dataclasses.replace(sealed, request=request), decided=False)


@pytest.mark.parametrize("field", sorted(DECISION_FIELDS))
def test_apr04_flipping_a_decision_field_fails(field: str) -> None:
    tampered = dataclasses.replace(decided(), **{field: DECISION_FIELDS[field]})
    check_sealed(KEY, tampered, decided=False)  # what was asked is intact
    with pytest.raises(ApprovalTampered, match="decision MAC"):
        check_sealed(KEY, tampered, decided=True)


def test_apr04_a_database_writer_cannot_approve() -> None:
    """Setting status, approver, uses and window without the key: no decision MAC verifies."""
    forged = dataclasses.replace(pending(), status=ApprovalStatus.APPROVED, decided_by="user:mallory@example.com",
                                 decided_at=NOW, uses=20, until=NOW + 3600)  # fmt: skip
    for mac in ("", forged.request_mac, decision_mac(b"\x00" * 32, forged)):
        with pytest.raises(ApprovalTampered):
            check_sealed(KEY, dataclasses.replace(forged, decision_mac=mac), decided=True)


def test_apr04_a_decision_mac_does_not_move_to_another_approval() -> None:
    one = decided()
    other = dataclasses.replace(pending(id="apr_" + "D" * 22), status=one.status, decided_by=one.decided_by,
                                decided_at=one.decided_at, reason=one.reason, uses=one.uses, until=one.until,
                                decision_mac=one.decision_mac)  # fmt: skip
    with pytest.raises(ApprovalTampered):
        check_sealed(KEY, other, decided=True)


def test_apr04_request_and_decision_tags_are_domain_separated() -> None:
    sealed = decided()
    assert sealed.request_mac != sealed.decision_mac
    with pytest.raises(ApprovalTampered):
        check_sealed(KEY, dataclasses.replace(sealed, request_mac=sealed.decision_mac), decided=False)


def test_apr04_wrong_key_fails() -> None:
    with pytest.raises(ApprovalTampered):
        check_sealed(LINK_KEY, decided(), decided=False)


def test_tampered_is_not_an_oauth_error() -> None:
    # it must never be rendered to a caller as is: the edge logs it and answers invalid_grant / 404
    assert not issubclass(ApprovalTampered, OAuthError)


# -- one-time links (APR-04) ----------------------------------------------------------------------
LINK = Link(APR_ID, "user:alice@example.com", "approve", NOW + 900, "n" * 22)


def link_refused(token: object, *, key: bytes = LINK_KEY, now: float = NOW, error: str = "access_denied") -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        verify_link(key, token, now=now)  # type: ignore[arg-type]
    assert caught.value.error == error, caught.value
    return caught.value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_payload(payload: Any, key: bytes = LINK_KEY) -> str:
    """A link carrying ``payload`` with a correct tag (what only the STS can make)."""
    body = _b64(json.dumps(payload).encode())
    tag = hmac.new(key, b"tether approval link v1\x00" + body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(tag)}"


def test_apr04_link_round_trip() -> None:
    token = sign_link(LINK_KEY, LINK)
    assert verify_link(LINK_KEY, token, now=NOW) == LINK
    assert len(token) < MAX_LINK and "=" not in token
    deny = Link(APR_ID, "user:alice@example.com", "deny", NOW + 900, "m" * 22)
    assert verify_link(LINK_KEY, sign_link(LINK_KEY, deny), now=NOW) == deny


def test_apr04_links_differ_per_approver_decision_and_nonce() -> None:
    tokens = {sign_link(LINK_KEY, dataclasses.replace(LINK, **change)) for change in
              ({}, {"approver": "user:bob@example.com"}, {"decision": "deny"}, {"nonce": "o" * 22}, {"exp": NOW + 1},
               {"approval": "apr_" + "C" * 22})}  # fmt: skip
    assert len(tokens) == 6


def test_apr04_forged_tag_refused() -> None:
    payload = sign_link(LINK_KEY, LINK).split(".")[0]
    for tag in ("", "A" * 43, _b64(b"\x00" * 32), sign_link(LINK_KEY, dataclasses.replace(LINK, nonce="x")).split(".")[1]):
        error = link_refused(f"{payload}.{tag}")
        assert error.description == "the link is not valid" and error.status == 403


def test_apr04_tampered_payload_refused() -> None:
    payload, tag = sign_link(LINK_KEY, LINK).split(".")
    for change in ({"decision": "deny"}, {"approver": "user:mallory@example.com"}, {"exp": NOW + 10**6}):
        other = sign_link(LINK_KEY, dataclasses.replace(LINK, **change)).split(".")[0]
        link_refused(f"{other}.{tag}")
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    link_refused(f"{flipped}.{tag}")


def test_apr04_truncated_link_refused() -> None:
    token = sign_link(LINK_KEY, LINK)
    for cut in (token[:-1], token[:-10], token.split(".")[0], token.split(".")[0] + ".", "." + token.split(".")[1],
                token[1:], ""):  # fmt: skip
        link_refused(cut)


def test_apr04_wrong_key_refused() -> None:
    link_refused(sign_link(KEY, LINK))  # the approvals MAC key is not the links key
    link_refused(sign_link(LINK_KEY, LINK), key=KEY)


@pytest.mark.parametrize("at", [NOW + 900, NOW + 901, NOW + 10**6])
def test_apr04_expired_link_refused(at: float) -> None:
    error = link_refused(sign_link(LINK_KEY, LINK), now=at, error="expired_token")
    assert error.status == 400


def test_apr04_link_valid_until_just_before_expiry() -> None:
    assert verify_link(LINK_KEY, sign_link(LINK_KEY, LINK), now=NOW + 899.9) == LINK


@pytest.mark.parametrize(
    "payload",
    [
        {"a": APR_ID, "p": "user:a@example.com", "d": "delete", "x": NOW + 9, "n": "n"},  # bad decision
        {"a": APR_ID, "p": "user:a@example.com", "d": "APPROVE", "x": NOW + 9, "n": "n"},
        {"a": APR_ID, "p": "user:a@example.com", "d": ["approve"], "x": NOW + 9, "n": "n"},
        {"a": APR_ID, "p": "user:a@example.com", "d": "approve", "x": "tomorrow", "n": "n"},
        {"a": APR_ID, "p": "user:a@example.com", "d": "approve", "x": float(NOW + 9), "n": "n"},
        {"a": APR_ID, "p": "user:a@example.com", "d": "approve", "x": True, "n": "n"},
        {"a": APR_ID, "p": ["user:a@example.com"], "d": "approve", "x": NOW + 9, "n": "n"},
        {"a": 7, "p": "user:a@example.com", "d": "approve", "x": NOW + 9, "n": "n"},
        {"a": APR_ID, "p": "user:a@example.com", "d": "approve", "x": NOW + 9, "n": None},
        {"a": APR_ID, "p": "user:a@example.com", "d": "approve", "x": NOW + 9},  # a member missing
        ["approve"],
        "approve",
        None,
    ],
)
def test_apr04_well_signed_but_malformed_payload_refused(payload: Any) -> None:
    link_refused(signed_payload(payload))


def test_apr04_payload_not_base64_json_refused() -> None:
    for body in ("!!!!", "e30", _b64(b"\xff\xfe"), _b64(b"not json")):
        tag = hmac.new(LINK_KEY, b"tether approval link v1\x00" + body.encode(), hashlib.sha256).digest()
        link_refused(f"{body}.{_b64(tag)}")


def test_apr04_oversize_link_refused() -> None:
    link = dataclasses.replace(LINK, approver="user:" + "a" * MAX_LINK + "@example.com")
    token = sign_link(LINK_KEY, link)
    assert len(token) > MAX_LINK
    link_refused(token)


@pytest.mark.parametrize("token", [None, 7, b"a.b", "a.b.c", "nodot", "\ud800.x", "é.x", "a.b\x00"])
def test_apr04_malformed_link_refused_not_crashing(token: object) -> None:
    link_refused(token)
