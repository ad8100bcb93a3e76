"""Held calls at a resource server (issue 17; SECURITY APR-01): the resource SDK's side of approvals.

A ``call`` permit annotated ``@approval`` holds a route: a token without an approval is
refused ``access_denied`` naming the groups (``approval_required``); a token issued under an
approval (``apr``) serves one held call, spent in the verifier's replay cache — in memory,
or in Redis shared by replicas; a token issued for one tool call (``tctx``) serves no plain
HTTP request. Tokens are signed by a key the verifier trusts (``rs_approval_kit``); the
app, HTTP and crypto are real.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rs_approval_kit import HeldService, approval_policies, serve_held, signed_call

from services import REDIS_URL, require_postgres_and_redis
from tether.agent.proof import DPoPKey
from tether.errors import AccessDenied
from tether.resource.approvals import APPROVED_CALL_PREFIX, ApprovalSpent
from tether.resource.principal import Principal
from tether.rules.approval import ApprovalRequired
from tether.rules.tool_call import parse_tool_call
from tether.store.redis.cache import RedisCache
from tether.web.server import free_port

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

APPROVAL = "apr_" + "A" * 22


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return approval_policies(tmp_path_factory.mktemp("apr-policies"))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        yield client


def _body(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert isinstance(body, dict)
    return body


# -- APR-01: a held route needs an approved token ------------------------------------------------
def test_apr01_held_route_without_approval_is_refused_naming_the_groups(policies: Path, http: httpx.Client) -> None:
    key = DPoPKey()
    with serve_held(policies) as svc:
        token = svc.signer.token(key)
        held = signed_call(http, "POST", svc.url, "/pay", token, key)
        assert held.status_code == 403, held.text
        body = _body(held)
        assert body["error"] == "access_denied"
        assert body["approval_required"] == ["finance"]
        assert "tctx" not in body, "a plain HTTP call has no tool call to name"
        assert held.headers["cache-control"] == "no-store"
        assert 'error="access_denied"' in held.headers["www-authenticate"]
        # one approver must satisfy every group the determining permits name (sorted)
        both = signed_call(http, "POST", svc.url, "/refund", svc.signer.token(key), key)
        assert both.status_code == 403 and _body(both)["approval_required"] == ["finance", "subject"]
        # a route no @approval permit determines is served as before
        assert signed_call(http, "GET", svc.url, "/read", svc.signer.token(key), key).status_code == 200


def test_apr01_approved_token_serves_one_held_call_then_is_refused(policies: Path, http: httpx.Client) -> None:
    key = DPoPKey()
    with serve_held(policies) as svc:
        token = svc.signer.token(key, approval=APPROVAL)
        first = signed_call(http, "POST", svc.url, "/pay", token, key)
        assert first.status_code == 200, first.text
        apr = _body(first)["apr"]
        assert isinstance(apr, dict) and apr["id"] == APPROVAL and apr["by"] == "user:alice@example.com"
        second = signed_call(http, "POST", svc.url, "/pay", token, key)
        assert second.status_code == 403, second.text
        assert _body(second)["error"] == "access_denied"
        assert "already been used" in str(_body(second)["error_description"])
        # the same token on a route nobody holds: not a second approved call, served
        assert signed_call(http, "GET", svc.url, "/read", token, key).status_code == 200
        assert signed_call(http, "GET", svc.url, "/read", token, key).status_code == 200


def test_apr01_tool_call_token_serves_no_http_request(policies: Path, http: httpx.Client) -> None:
    key = DPoPKey()
    with serve_held(policies) as svc:
        for token in (
            svc.signer.token(key, tool="pay", arguments={"amount": 10}),
            svc.signer.token(key, tool="pay", arguments={"amount": 10}, approval=APPROVAL),
        ):
            for method, path in (("GET", "/read"), ("POST", "/pay")):
                refused = signed_call(http, method, svc.url, path, token, key)
                assert refused.status_code == 403, refused.text
                assert _body(refused)["error"] == "access_denied"
                assert "one tool call only" in str(_body(refused)["error_description"])


def test_apr01_token_for_another_audience_never_reaches_the_approval_check(policies: Path, http: httpx.Client) -> None:
    key = DPoPKey()
    with serve_held(policies) as svc:
        token = svc.signer.token(key, approval=APPROVAL, aud="http://elsewhere.test")
        refused = signed_call(http, "POST", svc.url, "/pay", token, key)
        assert refused.status_code == 401 and _body(refused)["error"] == "invalid_token"
        # the refused token spent nothing: a proper token for this audience is served once
        ok = svc.signer.token(key, approval=APPROVAL)
        assert signed_call(http, "POST", svc.url, "/pay", ok, key).status_code == 200


def test_apr01_held_call_is_logged_with_the_approval_never_arguments(
    policies: Path, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    key = DPoPKey()
    caplog.set_level(logging.INFO, logger="tether.resource")
    with serve_held(policies) as svc:
        token = svc.signer.token(key, approval=APPROVAL)
        assert signed_call(http, "POST", svc.url, "/pay", token, key).status_code == 200
        assert signed_call(http, "POST", svc.url, "/pay", token, key).status_code == 403
        assert signed_call(http, "POST", svc.url, "/pay", svc.signer.token(key), key).status_code == 403
    reused = [r for r in caplog.records if "used again" in r.getMessage()]
    assert reused and getattr(reused[0], "approval", None) == APPROVAL
    held = [r for r in caplog.records if "held for approval" in r.getMessage()]
    assert held and "finance" in held[0].getMessage()
    assert all(token not in r.getMessage() for r in caplog.records)


# -- the verifier's API (what mcp.protect and the gateway call) ----------------------------------
def test_apr01_authorize_call_returns_groups_lists_held_tools_and_checks_tctx(policies: Path) -> None:
    text = """
@id("pay-tool-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.tool == "pay" };
"""
    directory = approval_policies(policies.parent / "tool-policies", text)
    key = DPoPKey()
    with serve_held(directory) as svc:
        verifier = svc.verifier
        plain = _principal(svc, key)
        now = verifier.clock.now()
        call = parse_tool_call({"name": "pay", "arguments": {"amount": 10, "to": "bob"}})
        other = parse_tool_call({"name": "pay", "arguments": {"amount": 11, "to": "bob"}})
        common: dict[str, Any] = {"method": "POST", "path": "/mcp", "client": None, "now": now}
        # tools/list visibility: a held tool is listed (it can be called once approved)
        assert verifier.authorize_call(plain, tool="pay", **common) == ("finance",)
        with pytest.raises(ApprovalRequired) as held:
            verifier.authorize_call(plain, call=call, **common)
        assert held.value.groups == ("finance",) and held.value.tctx is not None
        approved = _principal(svc, key, tool="pay", arguments={"to": "bob", "amount": 10}, approval=APPROVAL)
        assert verifier.authorize_call(approved, call=call, **common) == ("finance",)
        with pytest.raises(AccessDenied, match="differs from the one approved"):
            verifier.authorize_call(approved, call=other, **common)
        # a tctx token without apr does not satisfy a held call (APR-01: the approval is the point)
        unapproved = _principal(svc, key, tool="pay", arguments={"to": "bob", "amount": 10})
        with pytest.raises(ApprovalRequired):
            verifier.authorize_call(unapproved, call=call, **common)

        async def spend_twice() -> None:
            await verifier.spend_approval(approved, required=(), call=call, now=now)
            with pytest.raises(ApprovalSpent):
                await verifier.spend_approval(approved, required=(), call=call, now=now)
            # a token without apr is never spent
            await verifier.spend_approval(plain, required=("finance",), call=call, now=now)
            await verifier.spend_approval(plain, required=("finance",), call=call, now=now)

        asyncio.run(spend_twice())


def _principal(svc: HeldService, key: DPoPKey, **claims: Any) -> Principal:
    """The Principal the verifier builds for a token signed with ``claims`` (via a real verification)."""
    token = svc.signer.token(key, **claims)
    proof = key.proof("POST", svc.verifier.settings.resource + "/mcp", access_token=token)
    headers = {"authorization": f"DPoP {token}", "dpop": proof}

    async def verify() -> Principal:
        return await svc.verifier.verify(method="POST", path="/mcp", headers=headers, authorize=False)

    return asyncio.run(verify())


# -- APR-01 across replicas: one approved call in all, through a shared Redis --------------------
def _fresh_deployment() -> str:
    """A Redis key prefix for a deployment that has never accepted a proof: its replay epoch
    begins at 0, as the store that creates a schema begins it (``RedisCache.begin_empty``)."""
    prefix = "t-apr-" + secrets.token_hex(6)

    async def begin() -> None:
        cache = RedisCache.from_url(REDIS_URL, prefix=prefix)
        try:
            await cache.begin_empty()
        finally:
            await cache.aclose()

    asyncio.run(begin())
    return prefix


def test_apr01_approved_token_serves_one_call_across_replicas_sharing_redis(policies: Path, http: httpx.Client) -> None:
    require_postgres_and_redis()  # fails under CI, never skips silently
    prefix = _fresh_deployment()
    first_port = free_port()
    resource = f"http://127.0.0.1:{first_port}"
    key = DPoPKey()
    with (
        serve_held(policies, replay=RedisCache.from_url(REDIS_URL, prefix=prefix), port=first_port) as one,
        serve_held(policies, replay=RedisCache.from_url(REDIS_URL, prefix=prefix), resource=resource) as two,
    ):
        two.signer.key = one.signer.key  # one STS key for both replicas
        two.verifier.keys = one.signer.keys()
        token = one.signer.token(key, approval=APPROVAL)
        assert signed_call(http, "POST", one.url, "/pay", token, key).status_code == 200
        again = signed_call(http, "POST", two.url, "/pay", token, key, audience=resource)
        assert again.status_code == 403, again.text
        assert "already been used" in str(_body(again)["error_description"])
    assert APPROVED_CALL_PREFIX == "apr-call:"


def test_apr01_approved_token_issued_before_the_redis_epoch_is_refused(policies: Path, http: httpx.Client) -> None:
    """Redis restarted without persistence loses the mark of the call an approved token made: the
    replay cache's new epoch began after the token was issued, so the token is refused as possibly
    used (fail closed), never served a second call."""
    require_postgres_and_redis()
    import redis

    prefix = _fresh_deployment()
    key = DPoPKey()
    with serve_held(policies, replay=RedisCache.from_url(REDIS_URL, prefix=prefix)) as one:
        token = one.signer.token(key, approval=APPROVAL)
        assert signed_call(http, "POST", one.url, "/pay", token, key).status_code == 200
        cache = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(cache.scan_iter(match=f"{prefix}*"))
            assert keys
            cache.delete(*keys)  # the restart: every mark and the epoch marker gone
        finally:
            cache.close()
        again = signed_call(http, "POST", one.url, "/pay", token, key)  # (after the new epoch's nonce challenge)
        assert again.status_code == 403, again.text
        assert "already been used" in str(_body(again)["error_description"])
