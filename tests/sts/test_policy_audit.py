"""Issue 4/6: every policy set the STS loads is stored and audited once; a refused set is audited too."""

from __future__ import annotations

import time

from helpers import RunningSts
from tether.audit.chain import AuditRecord


def _wait_for(sts: RunningSts, kind: str, count: int, timeout: float = 15.0) -> list[AuditRecord]:
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in sts.audit() if r.kind == kind]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"no {kind} audit record"
        time.sleep(0.2)


def test_loaded_and_refused_policy_sets_are_audited(sts: RunningSts) -> None:
    first = _wait_for(sts, "policy.loaded", 1)[0]
    version = sts.sts.ctx.policy.version
    assert first.detail["version"] == version
    extra = sts.config.policy_dir / "50-extra.cedar"
    extra.write_text(
        '@id("extra") forbid (principal, action == Tether::Action::"exchange", resource) when { context.depth > 4 };\n'
    )
    loaded = _wait_for(sts, "policy.loaded", 2)
    assert loaded[-1].detail["version"] == sts.sts.ctx.policy.version != version
    broken = sts.config.policy_dir / "60-broken.cedar"
    broken.write_text("permit (principal, action, resource) when { context.depth > };\n")
    refused = _wait_for(sts, "policy.refused", 1)[-1]
    assert refused.error == "invalid_policy"
    assert refused.detail["kept_version"] == loaded[-1].detail["version"]
    assert any("60-broken.cedar:1" in p for p in refused.detail["problems"])
