"""RFC 9396 ``authorization_details`` at the token endpoint: the ``tctx`` of one tool call (APR-01).

A token asked for one tool call carries ``tctx`` whether or not anyone must approve it, the
response echoes the details (RFC 9396 §7), Cedar ``call`` judges the call at the STS as the
audience will, and a token derived from it does not inherit ``tctx``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hold_kit import PLAIN, claims_of, details, hold_sts, hop, new_task, refused, session_token, tctx_of

from helpers import ADMIN, JWT, QUIET_MONITOR, TOKEN_EXCHANGE, Client, RunningSts


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with hold_sts(tmp_path_factory.mktemp("tctx"), extra_toml=QUIET_MONITOR) as server:
        yield server


def test_apr01_tool_call_token_carries_tctx_and_no_apr(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    arguments = {"query": "quarterly report", "limit": 5}
    response = hop(client, session, PLAIN, authorization_details=details("search", **arguments))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["authorization_details"] == [{"type": "tool_call", "tool": "search", "arguments": arguments}]
    claims = claims_of(body["access_token"])
    assert claims["tctx"] == tctx_of("search", arguments)
    assert "apr" not in claims
    issued = sts.last_audit("token.issued")
    assert issued.jti == claims["jti"]
    assert issued.detail["tctx"] == claims["tctx"] and "approval" not in issued.detail
    assert "quarterly" not in json.dumps(issued.detail)  # never argument values in the audit


def test_apr01_key_order_does_not_change_tctx(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    one = '[{"type":"tool_call","tool":"search","arguments":{"a":"1","b":"2"}}]'
    two = '[{"arguments":{"b":"2","a":"1"},"tool":"search","type":"tool_call"}]'
    first = claims_of(hop(client, session, PLAIN, authorization_details=one).json()["access_token"])
    second = claims_of(hop(client, session, PLAIN, authorization_details=two).json()["access_token"])
    assert first["tctx"] == second["tctx"] == tctx_of("search", {"a": "1", "b": "2"})
    other = claims_of(hop(client, session, PLAIN, authorization_details=details("search", a="1", b="3")).json()["access_token"])
    assert other["tctx"] != first["tctx"]


def test_token_without_details_has_no_tctx(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    response = hop(client, session, PLAIN)
    assert response.status_code == 200, response.text
    assert "authorization_details" not in response.json()
    assert "tctx" not in claims_of(response.json()["access_token"])


def test_apr01_derived_token_does_not_inherit_tctx(sts: RunningSts) -> None:
    client = Client(sts)
    task = new_task(sts)
    response = client.session(task, authorization_details=details("search", query="x"))
    assert response.status_code == 200, response.text
    session = response.json()["access_token"]
    assert claims_of(session)["tctx"] == tctx_of("search", {"query": "x"})
    derived = hop(client, session, PLAIN)
    assert derived.status_code == 200, derived.text
    assert "tctx" not in claims_of(derived.json()["access_token"])


def test_call_policy_deny_refuses_the_exchange(sts: RunningSts) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    response = hop(client, session, PLAIN, authorization_details=details("wipe", everything=True))
    refused(response, status=403, error="access_denied")
    record = sts.last_audit("token.refused")
    assert record.error == "access_denied"
    assert "no-wipe" in record.detail["policy"]["determining"]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        "[]",
        '[{"type":"tool_call","tool":"a"},{"type":"tool_call","tool":"b"}]',
        '[{"type":"payment_initiation","tool":"a"}]',
        '[{"type":"tool_call","tool":"a","arguments":{},"locations":["x"]}]',
        '[{"type":"tool_call","arguments":{}}]',
        '[{"type":"tool_call","tool":"a","arguments":[1]}]',
        '[{"type":"tool_call","tool":"a","tool":"b"}]',
    ],
)
def test_malformed_authorization_details_refused(sts: RunningSts, text: str) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    refused(hop(client, session, PLAIN, authorization_details=text), status=400, error="invalid_authorization_details")


@pytest.mark.parametrize("value", ["apr_short", "x" * 26, "apr_" + "A" * 21 + "!", "apr_" + "A" * 23])
def test_malformed_approval_id_refused(sts: RunningSts, value: str) -> None:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    refused(hop(client, session, PLAIN, approval_id=value), status=400, error="invalid_request")


def test_admin_token_takes_no_tool_call(sts: RunningSts) -> None:
    client = Client(sts)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(ADMIN), "subject_token_type": JWT,
            "authorization_details": details("search")}  # fmt: skip
    refused(client.post_token(form), status=400, error="invalid_request")


def test_metadata_lists_tool_call_details_type(sts: RunningSts) -> None:
    body = httpx.get(sts.url + "/.well-known/oauth-authorization-server", timeout=5).json()
    assert body["authorization_details_types_supported"] == ["tool_call"]
