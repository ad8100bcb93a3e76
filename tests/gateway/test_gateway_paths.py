"""Allowlist and path safety at the running gateway, byte for byte on the wire, and the Cedar ``call`` policy.

Bypass attempts are sent as raw request-targets (httpx would normalise ``..`` and
encode non-ASCII), each with a valid token and proof so the only thing wrong is the
path. Every one is refused (400 ``invalid_request`` or 403 ``access_denied``) without
reaching the upstream, and each class has a positive control on the same agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gwkit import Caller, GatewayEnv, raw_call, wait_until

from tether.audit.chain import AuditRecord

BYPASSES = {
    "dot-dot": [b"/v1/files/../../admin", b"/v1/files/a/../../../admin", b"/v1/files/.."],
    "dot": [b"/v1/files/./a"],
    "encoded dots": [b"/v1/files/%2e%2e/%2e%2e/admin", b"/v1/files/%2E%2E/admin", b"/v1/files/.%2e/admin"],
    "encoded slash": [b"/v1/items/a%2F..%2F..%2Fadmin", b"/v1/items/a%2fb"],
    "encoded backslash": [b"/v1/files/..%5C..%5Cadmin", b"/v1/files/a%5cb"],
    "backslash": [b"/v1/files/..\\..\\admin"],
    "double slash": [b"/v1/files//admin", b"//v1/items", b"/v1/items/"],
    "path parameters": [b"/v1/files/..;/admin", b"/v1/items;jsessionid=x", b"/v1/items/..;/..;/admin"],
    "unreserved escapes": [b"/v1/not%65s", b"/v1/item%73", b"/v1/items/%41"],
    "non-ascii": [b"/v1/items/caf\xc3\xa9", b"/v1/files/\xef\xbc\x8e\xef\xbc\x8e/admin"],
    "nul": [b"/v1/items/%00"],
    # issue 12 finding 9: what `GET /v1/items/*` admitted before
    "encoded whitespace": [b"/v1/items/%20", b"/v1/items/a%09", b"/v1/items/%0D%0A", b"/v1/items/%0c"],
    "encoded controls": [b"/v1/items/%01", b"/v1/items/%1F", b"/v1/items/%7F"],
    "double encoding": [b"/v1/items/%252e%252e", b"/v1/items/%252F", b"/v1/items/100%25"],
    "non-ascii escapes": [b"/v1/items/%EF%BC%8E%EF%BC%8E", b"/v1/items/caf%C3%A9", b"/v1/items/%C0%AE"],
    "encoded semicolon": [b"/v1/items/..%3B", b"/v1/items/a%3bb"],
}
CONTROLS = {
    "dot-dot": b"/v1/files/a/b",
    "dot": b"/v1/files/a.b",
    "encoded dots": b"/v1/files/%21x",
    "encoded slash": b"/v1/items/a%3Fb",
    "encoded backslash": b"/v1/files/a%5Bb",
    "backslash": b"/v1/files/a-b",
    "double slash": b"/v1/files/admin",
    "path parameters": b"/v1/items/a,b",
    "unreserved escapes": b"/v1/items",
    "non-ascii": b"/v1/items/cafe",
    "nul": b"/v1/items/0",
    "encoded whitespace": b"/v1/items/a-b",
    "encoded controls": b"/v1/items/a%5Bb",
    "double encoding": b"/v1/items/100%3F",
    "non-ascii escapes": b"/v1/items/cafe",
    "encoded semicolon": b"/v1/items/a%3Ab",
}


@pytest.fixture(scope="module")
def agent(gw: GatewayEnv) -> Caller:
    return gw.caller("apikey")


@pytest.mark.parametrize("kind", sorted(BYPASSES))
def test_every_bypass_is_refused_and_its_plain_form_is_served(gw: GatewayEnv, agent: Caller, kind: str) -> None:
    before = len(gw.upstream.log)
    for rest in BYPASSES[kind]:
        response = raw_call(agent, "apikey", rest)
        assert response.status in (400, 403), (rest, response.status, response.body)
        if response.headers.get("content-type", "").startswith("application/json"):
            assert response.json()["error"] in ("invalid_request", "access_denied"), rest
        else:  # the HTTP parser itself refused the request line (raw non-ASCII bytes)
            assert response.status == 400, rest
    assert len(gw.upstream.log) == before, f"{kind}: a refused path reached the upstream"
    control = raw_call(agent, "apikey", CONTROLS[kind])
    assert control.status == 200, (CONTROLS[kind], control.body)
    [got] = gw.upstream.log[before:]
    assert got["path"] == "/apikey" + CONTROLS[kind].decode()  # forwarded exactly as allowed


def test_malformed_percent_escapes_are_refused_at_the_gateway(gw: GatewayEnv, agent: Caller) -> None:
    """``%u002e`` is a dot to IIS-style decoders (Jetty CVE-2021-34429); a bare ``%`` is not a URI."""
    before = len(gw.upstream.log)
    for rest in (b"/v1/files/%u002e%u002e/admin", b"/v1/items/100%"):
        response = raw_call(agent, "apikey", rest)
        assert response.status in (400, 403), (rest, response.status, response.body)
    assert len(gw.upstream.log) == before, "a malformed escape reached the upstream"
    assert raw_call(agent, "apikey", b"/v1/items/100%3F").status == 200


def test_star_is_one_segment_and_double_star_the_tail(gw: GatewayEnv, agent: Caller) -> None:
    assert agent.get("apikey", "/v1/items/42").status_code == 200
    assert agent.get("apikey", "/v1/items/42/extra").status_code == 403
    assert agent.get("apikey", "/v1/files/a").status_code == 200
    assert agent.get("apikey", "/v1/files/a/b/c.txt").status_code == 200
    assert agent.get("apikey", "/v1/files").status_code == 403


def test_method_mismatch_is_refused(gw: GatewayEnv, agent: Caller) -> None:
    before = len(gw.upstream.log)
    for method in ("DELETE", "PUT", "PATCH", "HEAD"):
        response = agent.call(method, "apikey", "/v1/items/42")
        assert response.status_code == 403, method
    assert agent.call("POST", "apikey", "/v1/items/42").status_code == 403
    assert len(gw.upstream.log) == before
    assert agent.call("POST", "apikey", "/v1/items", content=b"{}").status_code == 200  # positive control


def test_an_unknown_route_is_404(gw: GatewayEnv, agent: Caller) -> None:
    response = agent.plain.get(gw.url + "/routes/nonexistent/v1/items")
    assert response.status_code == 404
    assert agent.get("apikey", "/v1/items").status_code == 200


@pytest.fixture
def forbid_private(gw: GatewayEnv) -> Iterator[Path]:
    path = gw.config.policy_dir / "90-gateway-test-forbid.cedar"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_the_cedar_call_policy_applies_to_the_upstream_path(gw: GatewayEnv, forbid_private: Path) -> None:
    agent = gw.caller("apikey")
    before = len(gw.upstream.log)
    assert agent.get("apikey", "/v1/private").status_code == 200  # allowlisted and, so far, permitted
    aud = gw.aud("apikey")
    forbid_private.write_text(
        '@id("gateway-test-no-private")\n'
        'forbid (principal, action == Tether::Action::"call", resource)\n'
        f'when {{ resource in Tether::Service::"{aud}" && context.path == "/v1/private" }};\n',
        encoding="utf-8",
    )

    def denied() -> bool:
        return agent.get("apikey", "/v1/private").status_code == 403

    wait_until(denied, timeout=5, what="the gateway to load the forbid policy")
    response = agent.get("apikey", "/v1/private")
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    assert agent.get("apikey", "/v1/items").status_code == 200  # another allowed path still works
    assert [r["path"] for r in gw.upstream.log[before:]].count("/apikey/v1/private") == 1

    def refusals() -> list[AuditRecord]:
        return [r for r in gw.audit("gateway.refused") if r.detail["path"] == "/v1/private"]

    wait_until(lambda: bool(refusals()), what="the refusal's audit record")
    refusal = refusals()[-1]
    assert refusal.error == "access_denied" and "gateway-test-no-private" in refusal.detail["reason"]
    forbid_private.unlink()
    wait_until(lambda: agent.get("apikey", "/v1/private").status_code == 200, timeout=5, what="the policy removal")
