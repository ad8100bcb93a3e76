"""Console actions are Cedar ``admin`` decisions with the human as principal (kind ``console``): an
organisation's policy can forbid humans what it allows admin workloads (WEB-05)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, console_for
from pageskit import RESOURCES, make_lineage

from helpers import AGENT, QUIET_MONITOR, make_deployment
from tether.clock import ManualClock

FORBID = """
@id("humans-never-block")
forbid (principal, action == Tether::Action::"admin", resource)
when { principal.kind == "console" && context.operation == "principals.block" };
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    config = make_deployment(tmp_path_factory.mktemp("policy"), extra_toml=QUIET_MONITOR + RESOURCES)
    (config.policy_dir / "90-console.cedar").write_text(FORBID, encoding="utf-8")
    with console_for(config, ManualClock()) as running:
        yield running


def test_web05_a_policy_forbidding_console_blocks_refuses_the_operator(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    operator = console.login("operator", "console:olga")
    refused = operator.post("/principals/block", {"csrf": operator.csrf("/agents"), "kind": "agent", "value": AGENT})
    assert refused.status_code == 403 and "denied by policy" in refused.text
    record = console.sts.last_audit("console.refused")
    assert record.principal == "console:olga" and record.error == "access_denied"
    assert "humans-never-block" in record.detail["reason"]
    assert [r for r in console.sts.audit() if r.kind == "principal.blocked"] == []
    assert lineage.agent.hop(lineage.session, "http://127.0.0.1:9001").status_code == 200  # the agent still works
    # the policy forbids blocking, not everything: ending the task is still the operator's to do
    done = operator.post(f"/tasks/{lineage.id}/complete", {"csrf": operator.csrf("/")})
    assert done.status_code == 303
    assert console.sts.last_audit("task.completed").principal == "console:olga"
