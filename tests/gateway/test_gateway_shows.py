"""Issue 5, "What it must show", against a real upstream that demands a static API key.

An allowed call succeeds while the agent process never sees the key (MCP-03: the
upstream gets the gateway's own injected credential, never the agent's token or proof);
a path outside the allowlist is 403; the 101st call over a cap of 100 is 429; an
echoed key comes back as ``[REDACTED]``; a call after task completion is refused; and
``vault list``, every log record and the audit export hold no secret value (BCP-13).
"""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote_plus

import httpx
import pytest
from gwkit import KEY, SECRET_NAME, GatewayEnv, encoded_forms, tether_cli, wait_until

from tether.agent import ExchangeError

REDACTED = "[REDACTED]"


def assert_never_seen(blob: bytes) -> None:
    for form in encoded_forms():
        assert form.encode() not in blob, f"the agent received the secret (as {form!r})"


def test_upstream_demands_the_key(gw: GatewayEnv) -> None:
    """The upstream is a real bearer-only API: without the key, or with a wrong one, it refuses."""
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        assert http.get(gw.upstream.url + "/apikey/v1/items").status_code == 401
        assert http.get(gw.upstream.url + "/apikey/v1/items", headers={"X-Api-Key": "guess"}).status_code == 401
        assert http.get(gw.upstream.url + "/apikey/v1/items", headers={"X-Api-Key": KEY}).status_code == 200


def test_allowed_call_succeeds_and_the_agent_never_sees_the_key(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    before = len(gw.upstream.log)
    response = caller.call("POST", "apikey", "/v1/items?q=1", json={"name": "thing"}, headers={"X-Trace": "t-1"})
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "method": "POST", "path": "/v1/items", "query": "q=1",
                               "bytes": len(b'{"name":"thing"}')}  # fmt: skip
    token = caller.token(gw.aud("apikey"))

    [got] = gw.upstream.log[before:]
    assert got["path"] == "/apikey/v1/items" and got["query"] == "q=1"
    assert got["body"] == b'{"name":"thing"}'
    assert got["headers"]["x-api-key"] == [KEY]  # exactly the injected credential, once
    assert "authorization" not in got["headers"]  # the agent's DPoP token is not passed through (MCP-03)
    assert "dpop" not in got["headers"]
    assert got["headers"]["x-trace"] == ["t-1"]  # ordinary headers are
    for values in got["headers"].values():
        assert all(token not in value for value in values)

    # Everything the agent process received — STS exchanges and the gateway's answer — lacks the key.
    assert len(caller.transport.seen) >= 3  # session exchange, hop exchange, the call
    assert_never_seen(caller.transport.everything())


def test_path_outside_the_allowlist_is_refused_403(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    before = len(gw.upstream.log)
    for path in ("/v1/admin", "/v1/items/1/delete", "/", "/v2/items"):
        response = caller.get("apikey", path)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"] == "access_denied"
        assert KEY not in response.text
    assert caller.call("DELETE", "apikey", "/v1/items/1").status_code == 403  # method outside the allowlist
    assert len(gw.upstream.log) == before, "a refused call reached the upstream"
    # positive control: the same agent, token and route
    assert caller.get("apikey", "/v1/items").status_code == 200
    assert len(gw.upstream.log) == before + 1


def test_the_101st_call_over_a_cap_of_100_is_refused_429(gw: GatewayEnv) -> None:
    caller = gw.caller("capped")
    before = len(gw.upstream.log)
    for i in range(100):
        response = caller.get("capped", "/v1/items")
        assert response.status_code == 200, (i, response.text)
    refused = caller.get("capped", "/v1/items")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "too_many_requests"
    assert len(gw.upstream.log) == before + 100
    # positive control: the cap is per task — another task on the same route is served
    assert gw.caller("capped").get("capped", "/v1/items").status_code == 200


def test_a_key_echoed_in_headers_is_scrubbed(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    response = caller.get("apikey", "/echo/header")
    assert response.status_code == 200
    assert response.headers["x-debug-key"] == REDACTED
    assert response.headers["x-debug-encoded"] == REDACTED
    assert response.headers["x-debug-b64"] == REDACTED
    assert_never_seen(caller.transport.everything())
    # positive control: the upstream really does echo it (straight to the upstream, with the key)
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        direct = http.get(gw.upstream.url + "/apikey/echo/header", headers={"X-Api-Key": KEY})
    assert direct.headers["x-debug-key"] == KEY


def test_a_key_echoed_in_the_body_is_scrubbed(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    response = caller.get("apikey", "/echo/body")
    assert response.status_code == 200
    assert response.json() == {"you_sent": REDACTED, "url_encoded": REDACTED, "b64": REDACTED}
    assert_never_seen(caller.transport.everything())
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        direct = http.get(gw.upstream.url + "/apikey/echo/body", headers={"X-Api-Key": KEY})
    assert direct.json()["you_sent"] == KEY and direct.json()["url_encoded"] == quote_plus(KEY)


def test_a_key_split_across_streamed_chunks_is_scrubbed(gw: GatewayEnv) -> None:
    """Raw, URL-encoded and base64 spellings, each cut across 5-byte chunks written separately."""
    caller = gw.caller("apikey")
    response = caller.get("apikey", "/echo/stream")
    assert response.status_code == 200
    assert response.text == f"start {REDACTED} middle {REDACTED} then {REDACTED} end"
    assert_never_seen(caller.transport.everything())
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        direct = http.get(gw.upstream.url + "/apikey/echo/stream", headers={"X-Api-Key": KEY})
    b64 = base64.b64encode(KEY.encode()).decode()
    assert direct.text == f"start {KEY} middle {quote_plus(KEY)} then {b64} end"


def test_scrubbed_calls_are_counted_in_the_audit(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    assert caller.get("apikey", "/echo/stream").status_code == 200
    assert caller.get("apikey", "/v1/items").status_code == 200
    task = caller.task["id"]
    wait_until(lambda: len(gw.audit("gateway.result", task)) == 2, what="two gateway.result records")
    echoed, plain = gw.audit("gateway.result", task)
    assert echoed.detail["path"] == "/echo/stream" and echoed.detail["scrubbed"] == 3
    assert plain.detail["path"] == "/v1/items" and plain.detail["scrubbed"] == 0  # positive control


def test_a_call_after_task_completion_is_refused(gw: GatewayEnv) -> None:
    caller, other = gw.caller("apikey"), gw.caller("apikey")
    url = gw.aud("apikey") + "/v1/items"
    held = caller.token(gw.aud("apikey"))
    assert caller.manual("GET", url, held).status_code == 200
    assert other.get("apikey", "/v1/items").status_code == 200
    caller.complete()

    def refused() -> bool:
        return caller.manual("GET", url, held).status_code == 401

    wait_until(refused, timeout=5, what="the gateway to learn of the completion")
    response = caller.manual("GET", url, held)
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"
    # audited as the task's (the caller proved possession), marked for use_after_end
    record = gw.audit("gateway.refused", caller.task["id"])[-1]
    assert record.error == "invalid_token" and record.detail["after_end"] is True
    with pytest.raises(ExchangeError) as caught:  # and the STS gives the agent nothing new
        caller.get("apikey", "/v1/items")
    assert caught.value.error == "invalid_grant"
    # positive control: another task's agent is still served
    assert other.get("apikey", "/v1/items").status_code == 200


def _assert_logs_clean(caplog: pytest.LogCaptureFixture, tokens: list[str]) -> None:
    messages = [r.getMessage() for r in caplog.records]
    logged = caplog.text + "\n".join(messages)
    for form in encoded_forms():
        assert form not in logged, (
            f"a log record holds the secret (as {form!r}): "
            + next((m for m in messages if form in m), "in a formatted record")[:300]
        )
    for token in tokens:
        assert token not in logged, "a log record holds an access token"


def _capture(caplog: pytest.LogCaptureFixture) -> None:
    """Every library at INFO (a production level), tether's own loggers at DEBUG."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="tether")


def test_logs_hold_no_secret(gw: GatewayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """Gateway and STS log records (same process, so caplog sees both) for calls of every outcome."""
    _capture(caplog)
    caller = gw.caller("apikey", "basic", "bearer", "legacy", "down", "slow", "nosecret")
    outcomes = {
        ("apikey", "/v1/items"): 200,
        ("apikey", "/echo/stream"): 200,
        ("apikey", "/echo/header"): 200,
        ("apikey", "/redirect"): 302,
        ("apikey", "/v1/admin"): 403,
        ("basic", "/echo/request"): 200,
        ("bearer", "/echo/request"): 200,
        ("legacy", "/echo/body"): 200,
        ("down", "/v1/items"): 502,
        ("slow", "/slow"): 504,
        ("nosecret", "/v1/items"): 502,
    }
    for (route, path), status in outcomes.items():
        assert caller.get(route, path).status_code == status, (route, path)
    tokens = [caller.token(gw.aud(route)) for route in ("apikey", "basic", "bearer", "legacy")]
    wait_until(lambda: len(gw.audit(task=caller.task["id"])) >= len(outcomes), what="audit records")
    # positive control: the capture does see the gateway's records (the scrub warning, the missing entry)
    messages = [r.getMessage() for r in caplog.records]
    assert any("scrubbed" in m for m in messages)
    assert any("absent-key" in m and "missing" in m for m in messages)
    _assert_logs_clean(caplog, tokens)


def test_logs_hold_no_secret_with_query_injection(gw: GatewayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """With query injection the secret is part of the upstream URL: no log line may show that URL."""
    _capture(caplog)
    caller = gw.caller("query")
    assert caller.get("query", "/v1/items").status_code == 200
    assert caller.get("query", "/echo/request").status_code == 200
    assert caller.get("query", "/v1/admin").status_code == 403
    wait_until(lambda: len(gw.audit(task=caller.task["id"])) >= 3, what="audit records")
    # positive control: INFO records of the HTTP clients are captured (here: the agent's own request line)
    assert any("/routes/query/v1/items" in r.getMessage() for r in caplog.records)
    _assert_logs_clean(caplog, [caller.token(gw.aud("query"))])


def test_vault_list_and_audit_export_hold_no_secret(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey", "query", "basic")
    for route in ("apikey", "query", "basic"):
        assert caller.get(route, "/echo/request").status_code == 200
    assert caller.get("apikey", "/v1/admin").status_code == 403
    wait_until(lambda: len(gw.audit(task=caller.task["id"])) >= 4, what="audit records")
    listing = tether_cli("vault", "list", "--config", str(gw.config.path))
    as_json = tether_cli("vault", "list", "--json", "--config", str(gw.config.path))
    assert listing.returncode == 0 and as_json.returncode == 0, listing.stderr
    assert SECRET_NAME in listing.stdout.decode()
    assert [row["name"] for row in json.loads(as_json.stdout)] == [SECRET_NAME]
    export = tether_cli("audit", "export", "--config", str(gw.config.path))
    assert export.returncode == 0, export.stderr
    assert b'"gateway.call"' in export.stdout and b'"gateway.refused"' in export.stdout  # positive control
    for output in (listing.stdout + listing.stderr, as_json.stdout + as_json.stderr, export.stdout + export.stderr):
        for form in encoded_forms():
            assert form.encode() not in output, f"CLI output holds the secret (as {form!r})"
