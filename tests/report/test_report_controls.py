"""Each control over hand-built snapshots: the healthy deployment passes, each deviation is found with its severity."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from snapshots import DAY, NOW, audit, healthy, only, policy, route, store

from tether.report.controls import CONTROLS, run_controls
from tether.report.frameworks import ASI, MAESTRO, MAPPINGS, NIST_SUBCATEGORIES
from tether.report.model import (
    AlertFacts,
    Evidence,
    FileFacts,
    KeyFacts,
    LagFacts,
    PolicyFacts,
    Result,
    TrustSource,
    VaultFacts,
)


def result(evidence: Evidence, control: str, subject: str | None = None) -> Result:
    return only(run_controls(evidence), control, subject)


def assert_finding(found: Result, status: str, severity: str, *words: str) -> None:
    assert (found.status, found.severity) == (status, severity), found
    for word in words:
        assert word in found.summary, found.summary
    assert found.remediation and found.remediation != "none needed"


# -- the whole set ------------------------------------------------------------------------
def test_healthy_deployment_passes_every_control() -> None:
    report = run_controls(healthy())
    assert report.findings() == [], [(r.id, r.summary) for r in report.findings()]
    assert {r.control for r in report.results} == {c.id for c in CONTROLS}
    assert all(r.severity is None and r.remediation == "none needed" for r in report.results)
    assert report.fails_at("info") is False
    assert report.counts() == {"critical": 0, "high": 0, "medium": 0, "low": 0, "info": 0}


def test_every_control_is_mapped_to_known_framework_items() -> None:
    assert set(MAPPINGS) == {c.id for c in CONTROLS}
    for control, refs in MAPPINGS.items():
        assert refs.asi and refs.maestro and refs.nist, control
        assert set(refs.asi) <= set(ASI) and set(refs.maestro) <= set(MAESTRO) and set(refs.nist) <= set(NIST_SUBCATEGORIES)


def test_results_carry_their_mappings() -> None:
    found = result(healthy(), "TOK-02")
    assert found.asi == ("ASI03", "ASI07") and "L6" in found.maestro and "MEASURE 2.7" in found.nist


def test_fail_on_threshold_and_counts() -> None:
    report = run_controls(healthy(routes=(route(days=5),), settings={"dpop.max_age": 600}))
    assert report.counts()["high"] == 1 and report.counts()["low"] == 1
    assert report.worst() == "high"
    assert report.fails_at("high") and report.fails_at("low") and not report.fails_at("critical")
    assert [r.severity for r in report.findings()] == ["high", "low"]


# -- tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "status", "severity"),
    [
        ({"tokens.hop_ttl": 600}, "warn", "medium"),
        ({"tokens.hop_ttl": 1200}, "fail", "high"),
        ({"tokens.session_ttl": 7200}, "fail", "high"),
        ({"tokens.admin_ttl": 900}, "warn", "medium"),
    ],
)
def test_C_03_token_lifetimes_beyond_bounds_are_findings(settings: dict[str, Any], status: str, severity: str) -> None:
    key = next(iter(settings))
    assert_finding(result(healthy(settings), "TOK-01"), status, severity, key)


def test_BCP_04_an_unbound_issued_token_fails_with_its_jti() -> None:
    evidence = healthy(store=store(audit=audit(unbound_tokens=2, unbound_examples=("jti-a", "jti-b"))))
    found = result(evidence, "TOK-02")
    assert_finding(found, "fail", "high", "2 issued token(s) are not bound")
    assert any(i.value == "jti-a, jti-b" for i in found.evidence)


def test_key_binding_fails_closed_when_the_store_cannot_be_read() -> None:
    found = result(healthy(store=store(error="database is locked", audit=None)), "TOK-02")
    assert_finding(found, "fail", "high", "could not be read", "database is locked")


def test_no_tokens_yet_passes_key_binding() -> None:
    found = result(healthy(store=store(audit=audit(tokens_issued=0))), "TOK-02")
    assert found.status == "pass" and found.summary == "no tokens issued yet"


def test_DPOP_19_nonces_off_with_long_lived_tokens_is_high() -> None:
    assert_finding(result(healthy({"dpop.nonce": False}), "DPOP-01"), "fail", "high", "nonces are off")


def test_DPOP_19_nonces_off_with_short_tokens_is_medium() -> None:
    short = {"dpop.nonce": False, "tokens.session_ttl": 300, "tokens.hop_ttl": 120, "tokens.admin_ttl": 120}
    assert_finding(result(healthy(short), "DPOP-01"), "fail", "medium", "300s")


def test_DPOP_11_old_proofs_accepted_is_low() -> None:
    assert_finding(result(healthy({"dpop.max_age": 600}), "DPOP-01"), "warn", "low", "600s")


def test_DPOP_05_symmetric_proof_algorithm_is_critical() -> None:
    assert_finding(result(healthy({"dpop.algorithms": ["ES256", "HS256"]}), "DPOP-02"), "fail", "critical", "HS256")


def test_JWT_02_oidc_issuer_allowing_none_is_critical() -> None:
    sources = (TrustSource("oidc", "https://k8s.example.org", "https://k8s.example.org/jwks", ("RS256", "none")),)
    assert_finding(result(healthy(trust_sources=sources), "DPOP-02"), "fail", "critical", "none")


@pytest.mark.parametrize(
    ("settings", "status", "severity"),
    [
        ({"tasks.max_depth": 8}, "warn", "medium"),
        ({"tasks.max_depth": 20}, "fail", "high"),
        ({"tasks.max_duration": 172_800}, "fail", "high"),
        ({"tasks.max_tokens": 50_000}, "warn", "medium"),
    ],
)
def test_task_caps_beyond_bounds_are_findings(settings: dict[str, Any], status: str, severity: str) -> None:
    assert_finding(result(healthy(settings), "TASK-01"), status, severity, next(iter(settings)))


@pytest.mark.parametrize(
    ("change", "status", "severity", "words"),
    [
        ({"settings": {"gateway.stale_after": 30}}, "warn", "low", "30s"),
        ({"settings": {"gateway.stale_after": 120}}, "warn", "medium", "120s"),
        ({"lag": LagFacts(7.5)}, "warn", "medium", "7.5s"),
        ({"lag": LagFacts(None, "the STS at https://sts.example.org does not answer")}, "warn", "low", "does not answer"),
    ],
)
def test_revocation_propagation_findings(change: dict[str, Any], status: str, severity: str, words: str) -> None:
    assert_finding(result(healthy(**change), "REV-01"), status, severity, words)


def test_measured_revocation_lag_within_target_passes_and_is_shown() -> None:
    found = result(healthy(lag=LagFacts(0.042)), "REV-01")
    assert found.status == "pass"
    assert any(i.name == "measured revocation lag" and i.value == "0.042s" for i in found.evidence)


# -- bearer exceptions and the vault --------------------------------------------------------
@pytest.mark.parametrize(
    ("days", "status", "severity", "words"),
    [
        (5, "warn", "high", "expires in 5 day(s)"),
        (7, "warn", "high", "expires in 7 day(s)"),
        (0, "warn", "high", "expires in 0 day(s)"),
        (-3, "fail", "high", "expired 3 day(s) ago"),
        (8, "warn", "medium", "expires in 8 days"),
        (30, "warn", "medium", "expires in 30 days"),
        (400, "warn", "low", "400 more days"),
    ],
)
def test_bearer_exception_expiry_findings(days: int, status: str, severity: str, words: str) -> None:
    found = result(healthy(routes=(route(days=days),)), "BEARER-01", "legacy-crm")
    assert_finding(found, status, severity, words)
    assert found.id == "BEARER-01[legacy-crm]"
    assert "team-legacy" in found.remediation


def test_current_bearer_exception_is_listed_with_owner_justification_and_days() -> None:
    found = result(healthy(routes=(route(days=90),)), "BEARER-01")
    assert found.status == "pass" and "90 days to expiry" in found.summary
    shown = {i.name: i.value for i in found.evidence}
    assert shown["owner"] == "team-legacy" and shown["days to expiry"] == "90"
    assert shown["justification"] == "the vendor API only takes a static key"
    assert shown["vault secret"] == "crm-key (present)"


def test_bearer_exception_without_its_vault_secret_fails() -> None:
    found = result(healthy(routes=(route(vault_name="gone"),)), "BEARER-01")
    assert_finding(found, "fail", "medium", "vault entry `gone`")


def test_each_route_is_its_own_result_and_no_routes_passes() -> None:
    report = run_controls(healthy(routes=(route("a", days=3), route("b", days=200))))
    assert [(r.subject, r.status) for r in report.results if r.control == "BEARER-01"] == [("a", "warn"), ("b", "pass")]
    none = result(healthy(routes=()), "BEARER-01")
    assert none.status == "pass" and "no bearer exceptions" in none.summary


@pytest.mark.parametrize(("rotated_days", "status", "severity"), [(100, "warn", "medium"), (200, "fail", "high")])
def test_vault_secret_not_rotated_is_a_finding(rotated_days: int, status: str, severity: str) -> None:
    vault = (VaultFacts("crm-key", 1, NOW - 400 * DAY, NOW - rotated_days * DAY),)
    assert_finding(result(healthy(store=store(vault=vault)), "VAULT-01"), status, severity, f"{rotated_days} days ago")


# -- policy ---------------------------------------------------------------------------------
def test_invalid_policy_set_fails_high_with_the_problem() -> None:
    bad = policy(version=None, policies=(), problems=("10-mine.cedar:3: syntax error: unexpected token",))
    assert_finding(result(healthy(policy=bad), "POL-01"), "fail", "high", "10-mine.cedar:3")


def test_empty_policy_set_warns() -> None:
    assert_finding(result(healthy(policy=policy(policies=())), "POL-01"), "warn", "medium", "empty")


def test_policy_version_not_loaded_by_the_sts_warns_low() -> None:
    stale = policy(loaded=(("ffffffffffffffff", NOW - DAY),))
    assert_finding(result(healthy(policy=stale), "POL-01"), "warn", "low", "0123456789abcdef")
    unknown = result(healthy(policy=policy(loaded=None)), "POL-01")
    assert unknown.status == "pass" and any(i.value == "unknown" for i in unknown.evidence)


@pytest.mark.parametrize(("effect", "severity"), [("forbid", "medium"), ("permit", "low")])
def test_shadow_policies_are_listed_and_warned(effect: str, severity: str) -> None:
    shadowed = (*policy().policies, PolicyFacts("office-hours", "10-examples.cedar", 28, effect, True))
    found = result(healthy(policy=policy(policies=shadowed)), "POL-02")
    assert_finding(found, "warn", severity, "office-hours", "not enforced")
    assert any(i.name == "office-hours" and effect in i.value for i in found.evidence)


def test_shadow_policy_mode_is_high() -> None:
    assert_finding(result(healthy({"policy.mode": "shadow"}), "POL-03"), "fail", "high", "nothing is denied")


# -- monitoring and audit -------------------------------------------------------------------
def test_disabled_monitor_fails_high_and_detectors_are_marked_not_running() -> None:
    report = run_controls(healthy({"monitor.enabled": False}))
    assert_finding(only(report, "MON-01"), "fail", "high", "disabled")
    replay = only(report, "MON-02", "dpop_replay")
    assert (replay.status, replay.severity) == ("warn", "info") and "not running" in replay.summary


def test_webhook_action_without_url_warns() -> None:
    found = result(healthy(detectors={"new_audience": {"actions": ["alert", "webhook"]}}), "MON-01")
    assert_finding(found, "warn", "medium", "new_audience", "webhook_url")


def test_metrics_disabled_warns_low() -> None:
    assert_finding(result(healthy({"metrics.enabled": False}), "MON-01"), "warn", "low", "/metrics")


@pytest.mark.parametrize(
    ("name", "table", "status", "severity", "words"),
    [
        ("dpop_replay", {"enabled": False}, "fail", "high", "disabled"),
        ("exchange_rate_spike", {"enabled": False}, "fail", "high", "disabled"),
        ("refusal_burst", {"actions": ["alert", "risk"]}, "warn", "medium", "does not suspend"),
        ("new_audience", {"enabled": False}, "warn", "low", "disabled"),
        ("use_after_end", {"actions": []}, "warn", "medium", "no action"),
    ],
)
def test_detector_findings(name: str, table: dict[str, Any], status: str, severity: str, words: str) -> None:
    found = result(healthy(detectors={name: table}), "MON-02", name)
    assert_finding(found, status, severity, name, words)


def test_recent_alerts_are_listed_at_their_worst_severity() -> None:
    alerts = (AlertFacts(41, NOW - 60, "dpop_replay", "high", "spiffe://prod.example.org/agent/x", "task-1"),)
    recent = audit(alerts=alerts, alerts_in_window=3, alert_severities={"medium": 2, "high": 1})
    found = result(healthy(store=store(audit=recent)), "MON-03")
    assert_finding(found, "warn", "high", "3 alert(s)")
    assert any("dpop_replay (high)" in i.value and "task-1" in i.value for i in found.evidence)
    assert any(i.name == "refused: token.refused invalid_scope" and i.value == "2" for i in found.evidence)


def test_broken_audit_chain_is_critical() -> None:
    found = result(healthy(store=store(audit=audit(first_broken=7))), "AUD-01")
    assert_finding(found, "fail", "critical", "broken at record 7")


def test_audit_chain_fails_closed_when_unreadable() -> None:
    assert_finding(result(healthy(store=store(error="no database", audit=None)), "AUD-01"), "fail", "high", "no database")


@pytest.mark.parametrize(
    ("changes", "severity", "words"),
    [
        ({"checkpoints": 0, "last_checkpoint_seq": None, "uncovered": 2000, "oldest_uncovered_ts": NOW - 30}, "medium",
         "no signed checkpoint"),
        ({"checkpoints": 0, "last_checkpoint_seq": None, "uncovered": 40, "oldest_uncovered_ts": NOW - 600}, "medium",
         "no signed checkpoint"),
        ({"uncovered": 2001, "oldest_uncovered_ts": NOW - 30}, "low", "2001 record(s)"),
        ({"uncovered": 3, "oldest_uncovered_ts": NOW - 121}, "low", "3 record(s) since"),
    ],
)  # fmt: skip
def test_checkpoints_overdue_are_findings(changes: dict[str, Any], severity: str, words: str) -> None:
    assert_finding(result(healthy(store=store(audit=audit(**changes))), "AUD-02"), "warn", severity, words)


@pytest.mark.parametrize(
    "changes",
    [
        {"checkpoints": 0, "last_checkpoint_seq": None, "uncovered": 40, "oldest_uncovered_ts": NOW - 100},  # not due yet
        {"records": 0, "last_seq": None, "checkpoints": 0, "last_checkpoint_seq": None, "uncovered": 0,
         "oldest_uncovered_ts": None},
        {"uncovered": 1999, "oldest_uncovered_ts": NOW - 119},  # one checkpoint late at most
    ],
)  # fmt: skip
def test_checkpoints_not_yet_due_pass(changes: dict[str, Any]) -> None:
    assert result(healthy(store=store(audit=audit(**changes))), "AUD-02").status == "pass"


# -- keys, identity, admins, transport --------------------------------------------------------
def test_master_key_readable_by_others_fails() -> None:
    loose = FileFacts("/srv/tether/.tether/master.key", 0o644)
    assert_finding(result(healthy(master_key=loose), "KEY-01"), "fail", "high", "0o644")


def test_missing_master_key_file_fails_and_env_key_passes() -> None:
    missing = FileFacts("/srv/tether/.tether/master.key", None)
    assert_finding(result(healthy(master_key=missing), "KEY-01"), "fail", "high", "does not exist")
    from_env = result(healthy(master_key=None), "KEY-01")
    assert from_env.status == "pass" and from_env.evidence[0].value == "from TETHER_MASTER_KEY"


def test_open_data_directory_warns() -> None:
    loose = FileFacts("/srv/tether/.tether", 0o755)
    assert_finding(result(healthy(data_dir=loose), "KEY-01"), "warn", "medium", "0o755")


@pytest.mark.parametrize(
    ("keys", "status", "severity", "words"),
    [
        ((KeyFacts("k", "ES256", int(NOW - 100 * DAY), None, None),), "warn", "medium", "100 days old"),
        ((KeyFacts("k", "ES256", int(NOW - 400 * DAY), None, None),), "fail", "high", "400 days old"),
        ((KeyFacts("k", "HS256", int(NOW - DAY), None, None),), "fail", "high", "HS256"),
        ((KeyFacts("k", "ES256", int(NOW - DAY), int(NOW - 60), int(NOW + 900)),), "fail", "critical", "no current"),
    ],
)
def test_signing_key_findings(keys: tuple[KeyFacts, ...], status: str, severity: str, words: str) -> None:
    assert_finding(result(healthy(store=store(signing_keys=keys)), "KEY-02"), status, severity, words)


def test_identity_sources_over_plain_http_warn() -> None:
    sources = (TrustSource("spiffe", "prod.example.org", "http://spire.example.org/bundle"),)
    assert_finding(result(healthy(trust_sources=sources), "ID-01"), "warn", "medium", "plain http")
    loopback = (TrustSource("spiffe", "prod.example.org", "http://127.0.0.1:8081/bundle"),)
    assert result(healthy(trust_sources=loopback), "ID-01").status == "pass"


def test_dev_trust_domain_and_long_identity_lifetimes_warn_low() -> None:
    dev = (TrustSource("spiffe", "tether.local", "/srv/tether/.tether/bundles/tether.local.json"),)
    evidence = healthy({"dev.trust_domain": "tether.local", "identity.max_lifetime": 7200}, trust_sources=dev)
    assert_finding(result(evidence, "ID-01"), "warn", "low", "dev trust domain", "7200s")


def test_no_identity_source_warns() -> None:
    assert_finding(result(healthy(trust_sources=()), "ID-01"), "warn", "medium", "no workload can authenticate")


def test_admin_from_the_dev_trust_domain_warns() -> None:
    dev = (TrustSource("spiffe", "tether.local", "/srv/b.json"),)
    evidence = healthy(
        {"dev.trust_domain": "tether.local", "admin.principals": ["spiffe://tether.local/admin"]}, trust_sources=dev
    )
    assert_finding(result(evidence, "ADM-01"), "warn", "medium", "spiffe://tether.local/admin")
    assert_finding(result(healthy({"admin.principals": []}), "ADM-01"), "warn", "low", "no admin")


@pytest.mark.parametrize(
    ("settings", "status"),
    [
        ({"issuer": "http://sts.example.org"}, "fail"),
        ({"gateway.url": "http://10.0.0.5:8710"}, "fail"),
        ({"issuer": "http://127.0.0.1:8700", "gateway.url": "http://localhost:8710"}, "pass"),
    ],
)
def test_plain_http_off_loopback_fails(settings: dict[str, Any], status: str) -> None:
    found = result(healthy(settings), "NET-01")
    assert found.status == status
    if status == "fail":
        assert found.severity == "high" and "plain http" in found.summary


def test_gateway_url_is_not_judged_without_routes() -> None:
    assert result(healthy({"gateway.url": "http://10.0.0.5:8710"}, routes=()), "NET-01").status == "pass"


def test_snapshot_is_not_mutated_by_the_controls() -> None:
    evidence = healthy(routes=(route(days=2),))
    before = dataclasses.asdict(evidence)
    run_controls(evidence)
    assert dataclasses.asdict(evidence) == before
