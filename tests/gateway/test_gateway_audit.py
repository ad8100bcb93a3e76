"""Audit and metrics: every allowed call is a ``gateway.call`` record (written before it is
forwarded) and a ``gateway.result``; every refusal a ``gateway.refused``.

An allowed call's record names the route, method, path, task, agent and decision; its
result names the call record, the status, bytes in and out; a refusal's record names the
route, method, path, status, the wire error and — when the token was verified — the task
and agent it came from. No record holds the secret in any spelling. A call the store
cannot record before it is forwarded is not made (issue 12 finding 12).
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gwkit import GatewayEnv, encoded_forms, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "observe"))

from obskit import delta, scrape

from helpers import AGENT
from services import store_sql
from tether.audit.chain import AuditRecord

CALLS = "tether_gateway_calls_total"


def test_every_allowed_call_has_a_gateway_call_record_and_a_result(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    task = caller.task["id"]
    calls = [("GET", "/v1/items", b""), ("POST", "/v1/items", b'{"n": 12345}'), ("GET", "/v1/files/a/b", b"")]
    sizes = []
    for method, path, body in calls:
        response = caller.call(method, "apikey", path + "?page=2", content=body or None)
        assert response.status_code == 200
        sizes.append(len(response.content))
    wait_until(lambda: len(gw.audit("gateway.result", task)) == len(calls), what="one result per call")
    records, results = gw.audit("gateway.call", task), gw.audit("gateway.result", task)
    for record, result, (method, path, body), size in zip(records, results, calls, sizes, strict=True):
        assert record.outcome == "ok" and record.task == task and record.jti and record.principal == AGENT
        detail = record.detail
        assert detail["route"] == "apikey" and detail["method"] == method and detail["path"] == path
        assert detail["decision"] == "allowed" and detail["agent"] == AGENT
        # what is known only after the response is in the result, which names its call record
        assert result.seq > record.seq and result.detail["call"] == record.seq and result.jti == record.jti
        assert result.detail["route"] == "apikey" and result.detail["path"] == path and result.detail["status"] == 200
        assert result.detail["bytes_in"] == len(body) and result.detail["bytes_out"] == size
        assert result.detail["truncated"] is False and "cut" not in result.detail
    assert gw.audit("gateway.refused", task) == []  # positive control: nothing refused, nothing recorded as such


def _refusals(gw: GatewayEnv, caller_path: str, route: str = "apikey") -> list[AuditRecord]:
    """Refusal records name the route and the upstream path (as allowed calls do)."""
    return [r for r in gw.audit("gateway.refused") if r.detail.get("path") == caller_path and r.detail.get("route") == route]


def test_every_refusal_has_a_gateway_refused_record(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey", "nosecret", "small")
    tag = secrets.token_hex(4)
    cases = [
        ("GET", "apikey", f"/v1/admin-{tag}", 403, "access_denied"),  # outside the allowlist
        ("DELETE", "apikey", f"/v1/items/{tag}", 403, "access_denied"),  # method mismatch
        ("GET", "apikey", f"/v1/files/{tag}/", 400, "invalid_request"),  # ambiguous path
        ("GET", "nosecret", f"/v1/items/{tag}", 502, "bad_gateway"),  # vault entry missing
        ("POST", "small", f"/upload-{tag}", 403, "access_denied"),
    ]
    for method, route, path, status, _ in cases:
        assert caller.call(method, route, path).status_code == status, (method, route, path)
    for method, route, path, status, error in cases:
        wait_until(lambda path=path, route=route: bool(_refusals(gw, path, route)), what=f"the refusal of {path}")  # type: ignore[misc]  # mypy infers no lambda with defaults
        [record] = _refusals(gw, path, route)
        assert record.outcome == "refused" and record.error == error
        detail = record.detail
        assert detail["route"] == route and detail["method"] == method and detail["status"] == status
        assert detail["decision"] == "refused" and detail["reason"]
    assert caller.get("apikey", "/v1/items").status_code == 200  # positive control


def test_a_refusal_record_names_the_task_and_agent_of_a_verified_token(gw: GatewayEnv) -> None:
    """The token was verified before the allowlist refused the path: the record must say whose call it was
    (and only then can a burst of refusals be attributed to, and suspend, the task)."""
    caller = gw.caller("apikey")
    tag = secrets.token_hex(4)
    assert caller.get("apikey", f"/v1/admin-{tag}").status_code == 403
    wait_until(lambda: bool(_refusals(gw, f"/v1/admin-{tag}")), what="the refusal's record")
    [record] = _refusals(gw, f"/v1/admin-{tag}")
    assert record.task == caller.task["id"], "the refusal is not attributed to the task"
    assert record.principal == AGENT
    assert record.detail["agent"] == AGENT


def test_a_refusal_of_an_unverified_token_has_no_task(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    tag = secrets.token_hex(4)
    path = f"/v1/items/{tag}"
    response = caller.plain.get(gw.aud("apikey") + path, headers={"Authorization": "DPoP not-a-token"})
    assert response.status_code == 401
    wait_until(lambda: bool(_refusals(gw, path)), what="the refusal's record")
    [record] = _refusals(gw, path)
    assert record.task is None and record.error == "invalid_token"
    assert caller.get("apikey", path).status_code == 200


def test_calls_are_counted_in_metrics(gw: GatewayEnv) -> None:
    """``GET /metrics`` counts allowed calls (after the relay) and refusals by route and status."""
    caller = gw.caller("legacy")
    before = scrape(gw.url)
    assert caller.get("legacy", "/v1/items").status_code == 200
    assert caller.get("legacy", "/v1/admin").status_code == 403
    wait_until(lambda: delta(before, scrape(gw.url), CALLS, route="legacy", status="200") == 1, what="the allowed call's count")
    assert delta(before, scrape(gw.url), CALLS, route="legacy", status="403") == 1


def test_no_audit_record_contains_the_secret(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey", "query", "basic", "bearer")
    for route in ("apikey", "query", "basic", "bearer"):
        assert caller.get(route, "/echo/request").status_code == 200
        assert caller.get(route, "/redirect").status_code == 302
        assert caller.get(route, "/v1/admin").status_code == 403
    wait_until(lambda: len(gw.audit("gateway.result", caller.task["id"])) == 8, what="the call results")
    records = gw.sts.audit()
    assert any(r.kind == "vault.put" and r.detail["name"] == "legacy-key" for r in records)  # named, not shown
    raw = "\n".join(json.dumps(r.body(), sort_keys=True) + r.hash for r in records)
    for form in encoded_forms():
        assert form not in raw, f"an audit record holds the secret (as {form!r})"


# -- issue 12 finding 12: the record comes before the call ------------------------------------------
#: The audit sink refuses ``gateway.call`` records only (every other write still works: the
#: token checks, the counters, the STS's own records and the gateway's refusal record). On
#: PostgreSQL the trigger fails the insert as a statement timeout would (SQLSTATE 57014).
_BLOCK = {
    "sqlite": [
        "CREATE TRIGGER block_gateway_calls BEFORE INSERT ON audit WHEN NEW.kind = 'gateway.call'"
        " BEGIN SELECT RAISE(ABORT, 'audit sink blocked'); END",
    ],
    "postgres": [
        "CREATE FUNCTION block_gateway_calls() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.kind = 'gateway.call' THEN RAISE EXCEPTION 'audit sink blocked' USING ERRCODE = 'query_canceled';"
        " END IF; RETURN NEW; END $$",
        "CREATE TRIGGER block_gateway_calls BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION block_gateway_calls()",
    ],
}
_UNBLOCK = {
    "sqlite": ["DROP TRIGGER IF EXISTS block_gateway_calls"],
    "postgres": ["DROP TRIGGER IF EXISTS block_gateway_calls ON audit", "DROP FUNCTION IF EXISTS block_gateway_calls()"],
}


@pytest.fixture
def audit_sink(gw: GatewayEnv) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """``(block, unblock)`` for the deployment's audit table; always unblocked afterwards."""
    kind = str(gw.config.values[""]["store"])

    def run(statements: dict[str, list[str]]) -> Callable[[], None]:
        def execute() -> None:
            for sql in statements[kind]:
                store_sql(gw.config, sql)

        return execute

    try:
        yield run(_BLOCK), run(_UNBLOCK)
    finally:
        run(_UNBLOCK)()


def test_a_call_the_store_cannot_record_is_refused_503_and_never_forwarded(
    gw: GatewayEnv, audit_sink: tuple[Callable[[], None], Callable[[], None]]
) -> None:
    block, unblock = audit_sink
    caller = gw.caller("apikey")
    task = caller.task["id"]
    assert caller.get("apikey", "/v1/items").status_code == 200  # the agent holds its hop token
    before = len(gw.upstream.log)
    block()
    tag = secrets.token_hex(4)
    response = caller.get("apikey", f"/v1/items/{tag}")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable" and response.headers["retry-after"] == "1"
    assert len(gw.upstream.log) == before, "the upstream was called although the call could not be recorded"
    assert not [r for r in gw.audit("gateway.call", task) if r.detail["path"] == f"/v1/items/{tag}"]
    # the refusal itself is recorded (only call records are blocked) and says why
    wait_until(lambda: bool(_refusals(gw, f"/v1/items/{tag}")), what="the refusal's record")
    [refusal] = _refusals(gw, f"/v1/items/{tag}")
    assert refusal.task == task and refusal.error == "temporarily_unavailable"
    # positive control: the same agent, route and path once the sink takes records again
    unblock()
    assert caller.get("apikey", f"/v1/items/{tag}").status_code == 200
    assert gw.upstream.log[before:] and gw.upstream.last()["path"] == f"/apikey/v1/items/{tag}"
    [record] = [r for r in gw.audit("gateway.call", task) if r.detail["path"] == f"/v1/items/{tag}"]
    wait_until(lambda: any(r.detail["call"] == record.seq for r in gw.audit("gateway.result", task)), what="its result")
