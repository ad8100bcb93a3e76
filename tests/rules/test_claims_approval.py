"""The ``apr`` and ``tctx`` claims (``tether.rules.claims``; SECURITY APR-01, APR-03).

A token issued under an approval names it (``apr``: id, approver, time) and, for a tool call,
the call (``tctx``). ``build_claims`` writes them and ``check_access_token_claims`` reads them
back; a malformed one makes the whole token ``invalid_token`` (never silently dropped: a
resource that ignored a bad ``tctx`` would let the token serve any call).
"""

from __future__ import annotations

from typing import Any

import pytest

from tether.errors import InvalidToken
from tether.model import ApprovalClaim
from tether.rules.approval import tool_call_context
from tether.rules.claims import Expected, Grant, build_claims, check_access_token_claims

NOW = 1_800_000_000
ISS = "https://sts.example"
AUD = "https://pay.example"
AGENT = "spiffe://example.org/agent/pay"
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
HEADER = {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}
EXPECTED = Expected(issuer=ISS, audience=AUD, skew=10, max_lifetime=900)
TCTX = tool_call_context("pay", {"amount": 10})
APR = ApprovalClaim(id="apr_" + "A" * 22, by="user:alice@example.com", at=NOW - 30)


def grant(**changes: Any) -> Grant:
    values: dict[str, Any] = {"sub": AGENT, "aud": AUD, "scope": frozenset({"pay:write"}), "exp": NOW + 120,
                              "client_id": AGENT, "agent": AGENT, "jkt": JKT, "txn": "tsk_1", "tctx": TCTX,
                              "apr": APR}  # fmt: skip
    values.update(changes)
    return Grant(**values)


def claims(**changes: Any) -> dict[str, Any]:
    built = build_claims(grant(), issuer=ISS, jti="jti-1", now=NOW)
    built.update(changes)
    return built


def test_apr03_build_claims_round_trip() -> None:
    built = build_claims(grant(), issuer=ISS, jti="jti-1", now=NOW)
    assert built["tctx"] == TCTX
    assert built["apr"] == {"id": APR.id, "by": APR.by, "at": APR.at}
    token = check_access_token_claims(HEADER, built, EXPECTED, now=NOW)
    assert token.tctx == TCTX and token.apr == APR


def test_apr01_token_without_approval_has_neither_claim() -> None:
    built = build_claims(grant(tctx=None, apr=None), issuer=ISS, jti="jti-1", now=NOW)
    assert "tctx" not in built and "apr" not in built
    token = check_access_token_claims(HEADER, built, EXPECTED, now=NOW)
    assert token.tctx is None and token.apr is None


def test_apr01_tctx_alone_round_trips() -> None:
    """A tool call named without a hold: the token carries ``tctx`` and no ``apr``."""
    built = build_claims(grant(apr=None), issuer=ISS, jti="jti-1", now=NOW)
    token = check_access_token_claims(HEADER, built, EXPECTED, now=NOW)
    assert token.tctx == TCTX and token.apr is None


def refused(c: dict[str, Any]) -> None:
    check_access_token_claims(HEADER, claims(), EXPECTED, now=NOW)  # positive control
    with pytest.raises(InvalidToken) as caught:
        check_access_token_claims(HEADER, c, EXPECTED, now=NOW)
    assert caught.value.error == "invalid_token"


@pytest.mark.parametrize("tctx", [None, "", 7, TCTX[:-1], TCTX + "A", TCTX[:-1] + "=", TCTX[:-1] + "+", [TCTX],
                                  {"tctx": TCTX}, True])  # fmt: skip
def test_apr01_malformed_tctx_is_invalid_token(tctx: object) -> None:
    refused(claims(tctx=tctx))


APR_OK = {"id": APR.id, "by": APR.by, "at": APR.at}


@pytest.mark.parametrize(
    "apr",
    [
        None,
        "apr_x",
        [APR.id],
        {},
        {"id": APR.id, "by": APR.by},  # a member missing
        {**APR_OK, "groups": ["finance"]},  # an unknown member
        {**APR_OK, "id": ""},
        {**APR_OK, "id": "a" * 65},
        {**APR_OK, "id": 7},
        {**APR_OK, "by": "alice"},  # not a principal
        {**APR_OK, "by": ""},
        {**APR_OK, "by": None},
        {**APR_OK, "at": "yesterday"},
        {**APR_OK, "at": float(NOW)},
        {**APR_OK, "at": True},
        {**APR_OK, "at": None},
    ],
)
def test_apr03_malformed_apr_is_invalid_token(apr: object) -> None:
    refused(claims(apr=apr))
