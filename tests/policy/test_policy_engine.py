"""``PolicyEngine``: default deny, forbid wins, shadow, hot reload, fail closed.

Real Cedar (cedarpy) over real files in a temporary directory. Each negative case is
followed by a positive control on the same engine.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from policykit import AGENT, PAY, SVC_B, WIKI, admin, call, create, exchange, starter_dir, write

from tether.errors import PolicyUnavailable
from tether.policy.engine import Decision, PolicyEngine

PERMIT_ALL = '@id("permit-all")\npermit (principal, action, resource);\n'
PERMIT_EXCHANGE = '@id("permit-exchange")\npermit (principal, action == Tether::Action::"exchange", resource);\n'
FORBID_PAY = (
    '@id("forbid-pay")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
    'when { resource.uri == "https://pay.example" };\n'
)


def folder(engine: PolicyEngine) -> Path:
    assert engine.directory is not None
    return engine.directory


def engine_with(tmp_path: Path, files: dict[str, str], *, mode: str = "enforce") -> PolicyEngine:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        write(directory, name, text)
    return PolicyEngine(directory, mode=mode)


# -- default deny, forbid wins -----------------------------------------------------------------
def test_default_deny_with_no_permit(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {})
    assert engine.current is not None and engine.current.policies == ()
    for request in (exchange(), create(), admin(), call()):
        decision = engine.authorize(request)
        assert (decision.allowed, decision.determining, decision.errors) == (False, (), ())
    # positive control: a permit for one action allows that action only
    write(folder(engine), "p.cedar", PERMIT_EXCHANGE)
    assert engine.authorize(exchange()).allowed
    assert engine.authorize(exchange()).determining == ("permit-exchange",)
    assert not engine.authorize(call()).allowed


def test_forbid_wins_over_permit(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL, "b.cedar": FORBID_PAY})
    denied = engine.authorize(exchange(audience=PAY))
    assert not denied.allowed
    assert denied.determining == ("forbid-pay",)
    assert denied.errors == ()
    allowed = engine.authorize(exchange(audience=WIKI))
    assert allowed.allowed and allowed.determining == ("permit-all",)


def test_starter_defaults_decide_as_designed(tmp_path: Path) -> None:
    engine = PolicyEngine(starter_dir(tmp_path))
    assert engine.authorize(exchange()).determining == ("exchange-key-bound",)
    assert not engine.authorize(exchange(key_bound=False)).allowed  # bearer tokens need an exception
    assert not engine.authorize(exchange(risk=80)).allowed
    assert engine.authorize(exchange(risk=79)).allowed
    assert engine.authorize(exchange(actors=("a", "b", "c", "d", "e"))).allowed
    assert engine.authorize(exchange(actors=("a", "b", "c", "d", "e", "f"))).determining == ("max-delegation-depth",)
    assert engine.authorize(create()).determining == ("admins-create-tasks",)
    assert not engine.authorize(create(caller=AGENT)).allowed
    assert engine.authorize(admin()).allowed and not engine.authorize(admin(caller=AGENT)).allowed
    assert engine.authorize(call()).determining == ("call-key-bound",)
    wiki = {WIKI: ["wiki"]}
    write_req = exchange(scopes=("wiki:read", "wiki:write"), tags=wiki)
    assert engine.authorize(write_req).determining == ("research-agent-wiki-read-only",)
    assert engine.authorize(exchange(scopes=("wiki:read",), tags=wiki)).allowed
    assert engine.authorize(call(method="POST", tags=wiki)).determining == ("research-agent-wiki-read-only",)
    assert engine.authorize(call(method="GET", tags=wiki)).allowed
    assert engine.authorize(call(caller=SVC_B, method="POST", tags=wiki)).allowed


# -- shadow ------------------------------------------------------------------------------------
SHADOW_FORBID = (
    '@id("shadow-forbid-pay")\n@shadow\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
    'when { resource.uri == "https://pay.example" };\n'
)


def test_shadow_policy_never_changes_the_decision_but_is_reported(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL, "s.cedar": SHADOW_FORBID})
    assert engine.current is not None and engine.current.shadow_ids == ("shadow-forbid-pay",)
    decision = engine.authorize(exchange(audience=PAY))
    assert decision.allowed and decision.determining == ("permit-all",)
    assert decision.shadow_allowed is False
    assert decision.shadow_determining == ("shadow-forbid-pay",)
    assert decision.audit()["shadow"] == {"decision": "deny", "determining": ["shadow-forbid-pay"]}
    assert decision.audit()["decision"] == "allow"
    # positive control: a request the shadow policy does not match has a shadow allow
    other = engine.authorize(exchange(audience=WIKI))
    assert other.allowed and other.shadow_allowed is True and other.shadow_determining == ("permit-all",)


def test_shadow_permit_cannot_grant(tmp_path: Path) -> None:
    shadow_permit = '@id("shadow-permit")\n@shadow\npermit (principal, action, resource);\n'
    engine = engine_with(tmp_path, {"s.cedar": shadow_permit})
    decision = engine.authorize(exchange())
    assert not decision.allowed and decision.determining == ()
    assert decision.shadow_allowed is True and decision.shadow_determining == ("shadow-permit",)
    # positive control: the same policy without @shadow grants
    write(folder(engine), "s.cedar", shadow_permit.replace("@shadow\n", '@shadow("false")\n'))
    assert engine.authorize(exchange()).allowed


def test_set_in_shadow_mode_never_denies_and_reports_what_it_would_do(tmp_path: Path) -> None:
    files = {"a.cedar": PERMIT_EXCHANGE, "b.cedar": FORBID_PAY}
    shadow = engine_with(tmp_path, files, mode="shadow")
    for request in (exchange(audience=PAY), create(), call()):
        decision = shadow.authorize(request)
        assert decision.allowed and decision.mode == "shadow"
        assert decision.shadow_allowed is False
        assert decision.audit()["mode"] == "shadow" and decision.audit()["shadow"]["decision"] == "deny"
    assert shadow.authorize(exchange(audience=PAY)).shadow_determining == ("forbid-pay",)
    ok = shadow.authorize(exchange(audience=WIKI))
    assert ok.allowed and ok.shadow_allowed is True and ok.shadow_determining == ("permit-exchange",)
    # positive control: the same directory enforced denies
    enforced = PolicyEngine(shadow.directory, mode="enforce")
    assert not enforced.authorize(exchange(audience=PAY)).allowed
    assert enforced.authorize(exchange(audience=PAY)).mode == "enforce"


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="enforce"):
        PolicyEngine(tmp_path, mode="log")
    assert PolicyEngine(tmp_path, mode="shadow").mode == "shadow"


# -- hot reload --------------------------------------------------------------------------------
def test_new_file_is_used_by_the_next_decision(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL})
    before = engine.version
    assert engine.authorize(exchange(audience=PAY)).allowed
    write(folder(engine), "b.cedar", FORBID_PAY)
    decision = engine.authorize(exchange(audience=PAY))
    assert not decision.allowed and decision.determining == ("forbid-pay",)
    assert decision.version == engine.version != before
    (folder(engine) / "b.cedar").unlink()
    back = engine.authorize(exchange(audience=PAY))
    assert back.allowed and back.version == before  # same content, same version


def test_invalid_file_is_refused_and_the_previous_set_keeps_deciding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL, "b.cedar": FORBID_PAY})
    good = engine.version
    assert good is not None  # a valid set has a version
    invalid = (
        '// a typo in the action name\n\n@id("no-wiki")\nforbid (principal, action == Tether::Action::"exchnage", resource);\n'
    )
    with caplog.at_level(logging.ERROR, logger="tether.policy"):
        write(folder(engine), "c.cedar", invalid)
        assert engine.refresh() is False
    assert engine.last_error is not None
    assert {(p.file, p.line) for p in engine.last_error.problems} == {("c.cedar", 3)}
    assert "unrecognized action" in str(engine.last_error)
    assert any("c.cedar:3" in r.getMessage() and good in r.getMessage() for r in caplog.records)
    # the previous version stays in force and keeps deciding
    assert engine.version == good
    for _ in range(2):
        assert not engine.authorize(exchange(audience=PAY)).allowed
        decision = engine.authorize(exchange(audience=WIKI))
        assert decision.allowed and decision.version == good
    # fix the file: a new version loads and the error clears
    write(
        folder(engine),
        "c.cedar",
        invalid.replace('"exchnage", resource)', '"exchange", resource)\nwhen { resource.uri == "https://wiki.example" }'),
    )
    fixed = engine.authorize(exchange(audience=WIKI))
    assert not fixed.allowed and fixed.determining == ("no-wiki",)
    assert fixed.version != good and engine.last_error is None


def test_same_size_edit_within_one_timestamp_tick_is_reloaded(tmp_path: Path) -> None:
    """An operator fixes a typo (same length) right after the broken file was read.

    File timestamps are coarse (one kernel tick), so a rewrite that keeps the size can
    keep the mtime too. os.utime pins the old mtime to make that race deterministic.
    """
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL})
    path = write(folder(engine), "b.cedar", FORBID_PAY.replace('"exchange"', '"exchnage"'))
    assert engine.refresh() is False and engine.last_error is not None
    stat = path.stat()
    path.write_text(FORBID_PAY, encoding="utf-8")
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    decision = engine.authorize(exchange(audience=PAY))
    assert not decision.allowed and decision.determining == ("forbid-pay",), "the fixed file was never reloaded"


def test_first_load_invalid_is_unavailable_until_fixed(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": "permit (principal, action, resource) when { };\n"})
    assert engine.current is None and engine.version is None
    assert engine.last_error is not None and engine.last_error.problems[0].file == "a.cedar"
    with pytest.raises(PolicyUnavailable, match=r"a\.cedar:1"):
        engine.authorize(exchange())
    write(folder(engine), "a.cedar", PERMIT_ALL)
    assert engine.authorize(exchange()).allowed


def test_no_valid_set_ever_loaded_raises_policy_unavailable(tmp_path: Path) -> None:
    pushed = PolicyEngine(None)
    with pytest.raises(PolicyUnavailable):
        pushed.authorize(exchange())
    assert pushed.install_texts({"x.cedar": "not cedar"}) is False
    assert pushed.last_error is not None and pushed.last_error.problems[0].file == "x.cedar"
    with pytest.raises(PolicyUnavailable):
        pushed.authorize(exchange())
    assert pushed.install_texts({"a.cedar": PERMIT_ALL}) is True
    assert pushed.authorize(exchange()).allowed
    # a later invalid push keeps the installed set
    version = pushed.version
    assert pushed.install_texts({"a.cedar": "permit ("}) is False
    assert pushed.version == version and pushed.authorize(exchange()).allowed
    missing = PolicyEngine(tmp_path / "nowhere")
    with pytest.raises(PolicyUnavailable, match="does not exist"):
        missing.authorize(exchange())


def test_directory_removed_keeps_the_loaded_set(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_EXCHANGE})
    version = engine.version
    shutil.rmtree(folder(engine))
    decision = engine.authorize(exchange())
    assert decision.allowed and decision.version == version
    assert engine.last_error is not None and "does not exist" in str(engine.last_error)


# -- fail closed -------------------------------------------------------------------------------
OVERFLOW = (
    '@id("overflow")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
    "when { context.risk * 9223372036854775807 > 100 };\n"
)


def test_evaluation_error_denies_and_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_EXCHANGE, "b.cedar": OVERFLOW})
    request = exchange(risk=2)  # 2 * (2**63 - 1) overflows a Long
    assert engine.current is not None
    raw = cedarpy.is_authorized(request.cedar(), engine.current.enforced, request.entities)
    assert raw.decision == cedarpy.Decision.Allow  # Cedar alone would skip the erroring forbid and allow
    with caplog.at_level(logging.ERROR, logger="tether.policy"):
        decision = engine.authorize(request)
    assert not decision.allowed
    assert decision.errors and any("overflow" in e for e in decision.errors), decision.errors
    assert decision.audit()["decision"] == "deny" and decision.audit()["errors"] == list(decision.errors)
    assert any("fail closed" in r.getMessage() for r in caplog.records)
    # positive control: risk 0 does not overflow, the forbid does not match, the request is allowed
    ok = engine.authorize(exchange(risk=0))
    assert ok.allowed and ok.errors == ()


def test_missing_entity_attribute_denies(tmp_path: Path) -> None:
    reads_task = (
        '@id("no-exfiltration")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
        'when { context.task.purpose == "exfiltrate" };\n'
    )
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_EXCHANGE, "b.cedar": reads_task})
    complete = exchange()
    without_task = replace(complete, entities=[e for e in complete.entities if e["uid"]["type"] != "Tether::Task"])
    decision = engine.authorize(without_task)
    assert not decision.allowed
    assert decision.errors and any("tsk_test" in e or "does not exist" in e for e in decision.errors), decision.errors
    # positive control: the complete request is allowed
    ok = engine.authorize(complete)
    assert ok.allowed and ok.errors == ()


def test_erroring_permit_alone_denies(tmp_path: Path) -> None:
    permit = '@id("p")\npermit (principal, action == Tether::Action::"exchange", resource) when { context.risk * 9223372036854775807 >= 0 };\n'  # noqa: E501
    engine = engine_with(tmp_path, {"a.cedar": permit})
    assert not engine.authorize(exchange(risk=3)).allowed
    assert engine.authorize(exchange(risk=3)).errors
    assert engine.authorize(exchange(risk=0)).allowed


def test_shadow_mode_reports_errors_without_denying(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_EXCHANGE, "b.cedar": OVERFLOW}, mode="shadow")
    decision = engine.authorize(exchange(risk=2))
    assert decision.allowed and decision.shadow_allowed is False and decision.errors
    assert engine.authorize(exchange(risk=0)).shadow_allowed is True


def test_counters_and_audit_shape(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_EXCHANGE, "b.cedar": FORBID_PAY})
    engine.authorize(exchange(audience=PAY))
    engine.authorize(exchange(audience=WIKI))
    assert (engine.decisions, engine.denials) == (2, 1)
    record = Decision(allowed=True, version="v", determining=("p",)).audit()
    assert record == {"version": "v", "decision": "allow", "determining": ["p"], "mode": "enforce"}


def test_decision_cache_memory_stays_small_for_long_distinct_paths(tmp_path: Path) -> None:
    """Each cached decision is keyed by a digest: 2,000 calls with distinct 8 KB paths (a caller
    can pad a path with dot segments that its proof's normalised htu ignores) must not pin 16 MB."""
    import tracemalloc

    engine = PolicyEngine(starter_dir(tmp_path))
    for i in range(50):  # warm-up: imports, the loaded set, allocator pools
        engine.authorize(call(path=f"/pages/{i}"))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            engine.authorize(call(path=f"/pages/{i:04d}" + "/x/.." * 1333))
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4_000_000, f"{retained} bytes retained for 2,000 decisions"
    # the cache still answers: the same request is a hit with the same decision
    hits = engine.cache_hits
    first = engine.authorize(call(path="/pages/0001" + "/x/.." * 1333))
    assert engine.cache_hits == hits + 1 and first.allowed == engine.authorize(call(path="/pages/0001")).allowed


def test_memoised_decision_matches_and_a_new_policy_version_is_not_served_from_the_memo(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL})
    built: list[int] = []

    def build() -> Any:
        built.append(1)
        return exchange(audience=PAY)

    first = engine.authorize_memo("k", build)
    assert first == engine.authorize(exchange(audience=PAY)) and first.allowed
    assert engine.authorize_memo("k", build) == first and len(built) == 1  # a hit builds nothing
    write(folder(engine), "b.cedar", FORBID_PAY)
    denied = engine.authorize_memo("k", build)
    assert not denied.allowed and denied.determining == ("forbid-pay",) and len(built) == 2
    decisions, denials = engine.decisions, engine.denials
    assert not engine.authorize_memo("k", build).allowed
    assert (engine.decisions, engine.denials) == (decisions + 1, denials + 1)  # hits are counted too


# -- RFC 8705: how the token is bound is in the exchange context ------------------------------
REQUIRE_DPOP_FOR_PAY = (
    '@id("pay-needs-dpop")\nforbid (principal, action == Tether::Action::"exchange", resource)\n'
    'when { resource.uri == "https://pay.example" && !(context.binding like "dpop*") };\n'
)


def test_MTLS_a_policy_can_require_a_binding(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL, "b.cedar": REQUIRE_DPOP_FOR_PAY})
    denied = engine.authorize(exchange(audience=PAY, binding="mtls"))
    assert (denied.allowed, denied.determining) == (False, ("pay-needs-dpop",))
    for binding in ("dpop", "dpop+mtls"):
        assert engine.authorize(exchange(audience=PAY, binding=binding)).allowed
    assert engine.authorize(exchange(audience=WIKI, binding="mtls")).allowed


def test_MTLS_the_memo_never_shares_a_decision_across_bindings(tmp_path: Path) -> None:
    from policykit import task

    from tether.policy.entities import ExchangeQuestion, exchange_request

    engine = engine_with(tmp_path, {"a.cedar": PERMIT_ALL, "b.cedar": REQUIRE_DPOP_FOR_PAY})
    base: dict[str, Any] = {
        "kind": "session", "principal": AGENT, "principal_kind": "spiffe", "audience": PAY, "task": task(),
        "scopes": ("wiki:read",), "actors": (), "subject": AGENT, "now": 1_767_268_800, "client": "127.0.0.1",
        "admins": (), "tags": {},
    }  # fmt: skip
    first = ExchangeQuestion(**base, binding="dpop")
    second = ExchangeQuestion(**base, binding="mtls")
    assert engine.authorize_memo(first.key(), lambda: exchange_request(first)).allowed
    assert not engine.authorize_memo(second.key(), lambda: exchange_request(second)).allowed
