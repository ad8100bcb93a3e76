"""Gathering the snapshot from a real deployment: sources of values, the audit pass, no secrets, no writes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from helpers import make_deployment
from services import store_sql
from tether.audit.chain import AuditEvent
from tether.config import Config, load_config, parse_config
from tether.report import evidence as evidence_module
from tether.report.controls import run_controls
from tether.report.evidence import gather, read_audit, read_settings
from tether.report.model import AuditFacts
from tether.store.open import open_store


def audit_after(config: Config, events: list[tuple[AuditEvent, float]]) -> AuditFacts:
    async def run() -> AuditFacts:
        store = await open_store(config)
        try:
            for event, at in events:
                await store.append_audit(event, now=at)
            return await read_audit(store, now=time.time())
        finally:
            await store.aclose()

    return asyncio.run(run())


def issued(jti: str, jkt: str, x5t: str | None = None) -> AuditEvent:
    return AuditEvent(kind="token.issued", outcome="ok", principal="spiffe://tether.local/agent/a", jti=jti,
                      detail={"aud": "https://wiki.example", "jkt": jkt, "x5t": x5t})  # fmt: skip


def test_setting_sources_name_the_environment_the_file_or_the_default(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    assert config.path is not None
    env = {"TETHER_TOKENS_HOP_TTL": "120"}
    settings = read_settings(load_config(config.path, env=env), env)
    assert (settings["tokens.hop_ttl"].value, settings["tokens.hop_ttl"].source) == (120, "env TETHER_TOKENS_HOP_TTL")
    assert settings["tokens.session_ttl"].source == "tether.toml tokens.session_ttl"
    assert settings["dpop.nonce_ttl"].source == "default"
    assert settings["issuer"].source == "tether.toml issuer"


def test_BCP_13_no_credential_reaches_the_snapshot() -> None:
    data = {
        "store": "postgres",
        "postgres": {"dsn": "postgresql://tether:hunter2@db.internal/tether"},
        "redis": {"url": "redis://:hunter2@cache.internal:6379/0"},
        "monitor": {"webhook_url": "https://hooks.example/services/T0K3N-abc"},
    }
    settings = read_settings(parse_config(data, path=None, env={}), {})
    text = repr(settings)
    assert "hunter2" not in text and "T0K3N" not in text and "db.internal" not in text
    assert not any(key.startswith(("postgres.", "redis.")) for key in settings)
    assert settings["monitor.webhook"].value is True and "monitor.webhook_url" not in settings


def test_audit_pass_counts_unbound_tokens_refusals_alerts_and_checkpoints(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    now = time.time()
    facts = audit_after(config, [
        (issued("j-bound", "thumbprint-1"), now),
        (issued("j-unbound", ""), now),
        (issued("j-certificate", "", "x5t-thumbprint"), now),  # RFC 8705: bound to a certificate, not unbound
        (AuditEvent(kind="token.refused", outcome="refused", error="invalid_scope"), now),
        (AuditEvent(kind="token.refused", outcome="refused", error="invalid_scope"), now - 2 * 86_400),  # outside the window
        (AuditEvent(kind="alert.raised", outcome="ok", task="t-1", detail={"detector": "dpop_replay", "severity": "high"}),
         now),
        (AuditEvent(kind="alert.raised", outcome="ok", detail={"detector": "new_audience", "severity": "bogus"}), now),
        (AuditEvent(kind="audit.checkpoint", outcome="ok", detail={"seq": 6}), now),
        (issued("j-after", "thumbprint-2"), now + 1),
    ])  # fmt: skip
    assert (facts.records, facts.last_seq, facts.first_broken) == (9, 9, None)
    assert (facts.tokens_issued, facts.unbound_tokens, facts.unbound_examples) == (4, 1, ("j-unbound",))
    assert facts.refusals == {"token.refused invalid_scope": 1}
    assert facts.alerts_in_window == 2 and facts.alert_severities == {"high": 1, "medium": 1}
    assert [(a.detector, a.severity, a.task) for a in facts.alerts] == [
        ("dpop_replay", "high", "t-1"),
        ("new_audience", "medium", None),
    ]
    assert (facts.checkpoints, facts.last_checkpoint_seq, facts.uncovered, facts.oldest_uncovered_ts) == (
        1,
        8,
        1,
        round(now + 1, 6),
    )


def test_audit_pass_finds_an_altered_record(tmp_path: Path) -> None:
    config = make_deployment(tmp_path)
    now = time.time()
    audit_after(config, [(issued(f"j-{i}", "t"), now) for i in range(5)])
    store_sql(config, "UPDATE audit SET outcome = ? WHERE seq = ?", ("refused", 3))
    assert audit_after(config, []).first_broken == 3


def test_audit_pass_finds_a_deleted_record_at_a_page_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_deployment(tmp_path)
    now = time.time()
    audit_after(config, [(issued(f"j-{i}", "t"), now) for i in range(6)])
    store_sql(config, "DELETE FROM audit WHERE seq = ?", (3,))
    monkeypatch.setattr(evidence_module, "PAGE", 2)  # pages [1, 2] [4, 5] [6]: the gap sits between two pages
    rows = store_sql(config, "SELECT seq FROM audit ORDER BY seq")
    assert [r[0] for r in rows] == [1, 2, 4, 5, 6]
    facts = audit_after(config, [])
    assert facts.first_broken == 4
    monkeypatch.setattr(evidence_module, "PAGE", 5000)
    assert audit_after(config, []).first_broken == 4  # the same answer in one page


def test_gather_reads_a_fresh_deployment(tmp_path: Path) -> None:
    config = make_deployment(tmp_path, extra_toml='[monitor.detectors.refusal_burst]\nactions = ["alert"]\n')
    snapshot = asyncio.run(gather(config, now=time.time(), env={}))
    assert snapshot.store.error is None and len(snapshot.store.signing_keys) == 1
    assert snapshot.master_key is not None and snapshot.master_key.mode == 0o600
    assert snapshot.data_dir.mode == 0o700
    assert snapshot.policy.version is not None and snapshot.policy.problems == ()
    assert snapshot.detector_sources["refusal_burst"] == "tether.toml [monitor.detectors.refusal_burst]"
    assert snapshot.detector_sources["new_audience"] == "default"
    report = run_controls(snapshot)
    burst = next(r for r in report.results if r.id == "MON-02[refusal_burst]")
    assert burst.status == "warn" and "does not suspend" in burst.summary
    # dpop_replay only alerts by default, and rightly: a replay proves nothing about who sent it
    assert next(r for r in report.results if r.id == "MON-02[dpop_replay]").status == "pass"
    assert asyncio.run(gather(config, now=time.time(), env={"TETHER_MASTER_KEY": "x"})).master_key is None


def test_gather_on_an_uninitialised_deployment_fails_closed_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_text('issuer = "https://sts.example.org"\n', encoding="utf-8")
    config = load_config(path, env={})
    report = run_controls(asyncio.run(gather(config, now=time.time(), env={})))
    failed = {r.control: r for r in report.results if r.status == "fail"}
    assert {"TOK-02", "AUD-01", "KEY-02", "POL-01", "KEY-01"} <= set(failed)
    assert "run tether init" in failed["AUD-01"].summary
    assert report.fails_at("high")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tether.toml"]  # no database, no data directory created
