"""``tether bench --only features`` (``tether.bench.features``): its pure parts and its deployments.

The benchmark itself asserts nothing. These tests pin what its figures rest on: the measuring
order interleaves the deployments round by round; the overhead is the median CPU per request of
the feature's deployment over its reference's, minus one, with each round's own ratio beside it;
and each variant is configured as the rows claim — the feature in force (real Cedar, real config
loading) for the actions it is meant for, and silent for the plain hop the benchmark sends.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from tether.audit.chain import AuditEvent
from tether.bench.exchange import AGENT, AUD_B, AUD_C, RESOURCES
from tether.bench.features import (
    APPROVAL_POLICIES,
    APPROVAL_TOML,
    COMPARISONS,
    DEPLOYMENTS,
    MCP_POLICIES,
    MCP_TOML,
    PAY,
    Sample,
    _federation_toml,
    _plain,
    _refusals,
    _tls,
    interleave,
    overhead,
)
from tether.bench.run import SECTIONS
from tether.config import load_config
from tether.identity.x509 import client_ca_files
from tether.model import Task
from tether.policy.engine import Decision, PolicyEngine
from tether.policy.entities import ExchangeQuestion, PolicyRequest, call_request, exchange_request
from tether.rules.tool_call import argument_tags, canonical_json, digest
from tether.store.open import open_store


def test_rounds_interleave_every_deployment_in_order() -> None:
    assert interleave(["plain", "a", "b"], 3) == [
        (0, "plain"), (0, "a"), (0, "b"), (1, "plain"), (1, "a"), (1, "b"), (2, "plain"), (2, "a"), (2, "b"),
    ]  # fmt: skip
    assert interleave(["plain"], 0) == []


def test_overhead_is_the_ratio_of_medians_with_each_rounds_ratio() -> None:
    o = overhead([110.0, 99.0, 105.0], [100.0, 90.0, 100.0])
    assert o.pct == pytest.approx(5.0)  # medians 105 / 100
    assert o.rounds_pct == pytest.approx((10.0, 10.0, 5.0))
    assert o.spread == pytest.approx((5.0, 10.0))


def test_overhead_can_be_negative_and_is_zero_for_equal_costs() -> None:
    assert overhead([95.0], [100.0]).pct == pytest.approx(-5.0)
    assert overhead([600.0, 610.0], [600.0, 610.0]).rounds_pct == (0.0, 0.0)


@pytest.mark.parametrize(("feature", "reference"), [([1.0, 2.0], [1.0]), ([], [])])
def test_overhead_needs_one_cost_per_round_for_both(feature: list[float], reference: list[float]) -> None:
    with pytest.raises(ValueError, match="one cost per round"):
        overhead(feature, reference)


def test_sample_cost_per_request_counts_only_served_requests() -> None:
    sample = Sample(cpu_s=1.5, ok=3000, elapsed=2.0, others=(("400", 5), ("503", 2)))
    assert sample.cpu_us_per_request == pytest.approx(500.0)
    assert sample.throughput == pytest.approx(1500.0)
    assert sample.errors == 7
    assert math.isnan(Sample(cpu_s=0.1, ok=0, elapsed=1.0).cpu_us_per_request)


def test_features_is_a_bench_section() -> None:
    assert "features" in SECTIONS
    assert DEPLOYMENTS[0] == "plain" and len(set(DEPLOYMENTS)) == len(DEPLOYMENTS)
    # every comparison is between two measured deployments, never a deployment with itself
    assert all({c.feature, c.reference} <= set(DEPLOYMENTS) and c.feature != c.reference for c in COMPARISONS)


# -- the variants are configured as their rows say -------------------------------------------------


def _task(now: int) -> Task:
    return Task(id="tsk_bench", agent=AGENT, audiences=(AUD_B, AUD_C, PAY), scopes=frozenset({"read"}),
                created_at=now - 10, expires_at=now + 600, max_depth=3, max_tokens=100)  # fmt: skip


def _hop(audience: str, tags: dict[str, list[str]], now: int) -> PolicyRequest:
    """The ``exchange`` question of a DPoP hop for ``audience``, as ``sts.exchange._authorize`` asks it."""
    q = ExchangeQuestion(kind="hop", principal=AGENT, principal_kind="spiffe", audience=audience, task=_task(now),
                         scopes=("read",), actors=(), subject=AGENT, now=now, client="127.0.0.1", admins=(),
                         tags=tags, risk=0, binding="dpop")  # fmt: skip
    return exchange_request(q)


def _tool_call(tool: str, arguments: dict[str, str], now: int) -> PolicyRequest:
    return call_request(caller=AGENT, service="https://notes.bench.example/mcp", method="POST", path="/mcp",
                        scopes=("read",), actors=(), subject=AGENT, agent=AGENT, task="tsk_bench", purpose=None,
                        token_age=0, now=now, client="127.0.0.1", tags={}, tool=tool,
                        arguments=argument_tags(arguments), arguments_digest=digest(canonical_json(arguments)))  # fmt: skip


def _engine(directory: Path) -> tuple[PolicyEngine, dict[str, list[str]]]:
    config = load_config(directory / "tether.toml")
    tags = {r.uri: list(r.tags) for r in config.resources}
    return PolicyEngine(config.policy_dir, mode=config.policy.mode), tags


def _allowed(decision: Decision) -> tuple[bool, tuple[str, ...]]:
    return decision.allowed, decision.approval


def test_approvals_variant_holds_payments_but_not_the_plain_hop(tmp_path: Path) -> None:
    _plain(tmp_path / "approvals", extra=APPROVAL_TOML, policies=APPROVAL_POLICIES)
    config = load_config(tmp_path / "approvals" / "tether.toml")
    assert [g.name for g in config.approver_groups] == ["finance"]
    engine, tags = _engine(tmp_path / "approvals")
    now = int(time.time())
    assert _allowed(engine.authorize(_hop(AUD_B, tags, now))) == (True, ())
    assert _allowed(engine.authorize(_hop(PAY, tags, now))) == (True, ("finance",))
    assert _allowed(engine.authorize(_tool_call("pay", {"amount": "10"}, now))) == (True, ("finance",))


def test_mcp_variant_judges_tool_calls_and_leaves_the_plain_hop_alone(tmp_path: Path) -> None:
    _plain(tmp_path / "mcp", extra=MCP_TOML, policies=MCP_POLICIES)
    engine, tags = _engine(tmp_path / "mcp")
    now = int(time.time())
    assert _allowed(engine.authorize(_hop(AUD_B, tags, now))) == (True, ())
    assert engine.authorize(_tool_call("read_note", {"path": "/shared/plan.md"}, now)).allowed
    assert not engine.authorize(_tool_call("read_note", {"path": "/home/secrets"}, now)).allowed
    assert not engine.authorize(_tool_call("delete_note", {"path": "/shared/plan.md"}, now)).allowed


def test_federation_variant_names_one_followed_peer(tmp_path: Path) -> None:
    _plain(tmp_path / "federation", extra=_federation_toml("http://127.0.0.1:9"))
    config = load_config(tmp_path / "federation" / "tether.toml")
    [peer] = config.federation
    assert (peer.name, peer.issuer, peer.feed_principal) == ("a", "http://127.0.0.1:9", "spiffe://tether.local/feed")


def test_no_deployment_suspends_the_agent_under_load(tmp_path: Path) -> None:
    """Round after round of one agent's hops is a rate spike to the monitor: it may alert, never
    suspend the task mid-load (the hops would be refused and their CPU counted against a feature)."""
    configs = [_plain(tmp_path / "plain").config, _tls(tmp_path / "tls", client_certificates=True).deployment.config]
    for config in configs:
        actions = {d.name: d.actions for d in config.detectors}
        assert "suspend" not in actions["exchange_rate_spike"] and "suspend" not in actions["refusal_burst"]
        assert "alert" in actions["exchange_rate_spike"]


def test_aggregation_off_is_refusal_interval_zero(tmp_path: Path) -> None:
    _plain(tmp_path / "plain")
    _plain(tmp_path / "off", extra="\n[audit]\nrefusal_interval = 0\n")
    assert load_config(tmp_path / "plain" / "tether.toml").audit.refusal_interval == 60
    assert load_config(tmp_path / "off" / "tether.toml").audit.refusal_interval == 0


def test_tls_variants_differ_in_client_certificates_only(tmp_path: Path) -> None:
    tls, mtls = _tls(tmp_path / "tls", client_certificates=False), _tls(tmp_path / "mtls", client_certificates=True)
    assert (tls.name, mtls.name) == ("tls", "mtls")
    assert client_ca_files(tls.deployment.config) == ()
    assert len(client_ca_files(mtls.deployment.config)) == 1
    for variant in (tls, mtls):
        config = variant.deployment.config
        assert config.issuer.startswith("https://") and config.tls.certificate and variant.tls is not None
        assert RESOURCES.strip().splitlines()[1] in (config.path or Path()).read_text(encoding="utf-8")


def test_refusals_name_each_audited_refusal_by_kind_and_code(tmp_path: Path) -> None:
    """What a row says when hops were answered other than 200: the deployment's audit chain, by code."""
    config = _plain(tmp_path / "d").config

    async def audit() -> None:
        store = await open_store(config)
        try:
            now = time.time()
            for error in ("invalid_dpop_proof", "invalid_dpop_proof", "invalid_grant"):
                refused = AuditEvent(kind="token.refused", outcome="refused", error=error, principal=AGENT)
                await store.append_audit(refused, now=now)
            await store.append_audit(AuditEvent(kind="token.issued", outcome="ok", principal=AGENT), now=now)
        finally:
            await store.aclose()

    asyncio.run(audit())
    assert asyncio.run(_refusals(config)) == {"token.refused invalid_dpop_proof": 2, "token.refused invalid_grant": 1}
