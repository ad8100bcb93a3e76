"""Issue 4, "What it must show", at a running STS over real HTTP.

"A deny policy added while the STS runs takes effect on the next exchange without a
restart; an invalid policy file is refused with the line and reason and the old set
keeps working." The STS is never restarted: files are written into its policy
directory (``sts.config.policy_dir``) while it serves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stspolicykit import add_policy, denied, engine_version, issued, policy_of, records_after, remove_policy, seq

from helpers import AGENT, Client, RunningSts, create_task

AUD = "http://127.0.0.1:9001"
TETHER = str(Path(sys.prefix) / "bin" / "tether")

BLOCK_AGENT = f"""// added by the on-call engineer while the STS runs
@id("block-research-agent")
forbid (principal == Tether::Workload::"{AGENT}", action == Tether::Action::"exchange", resource);
"""

INVALID = """// a typo: there is no `scope` attribute in the exchange context

@id("no-wiki-write")
forbid (principal, action == Tether::Action::"exchange", resource)
when { context.scope.contains("wiki:write") };
"""


def validate(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.prefix) / "bin"), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [TETHER, "policy", "validate", str(directory)], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_deny_policy_added_while_running_takes_effect_on_the_next_exchange(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    before = engine_version(sts)
    server = sts.sts
    mark = seq(sts)

    add_policy(sts, "50-block.cedar", BLOCK_AGENT)
    response = agent.hop(session, AUD)  # the very next exchange
    denied(response)
    assert sts.sts is server  # same process, same app: no restart
    [record] = records_after(sts, mark, "token.refused")
    assert record.outcome == "refused" and record.error == "access_denied" and record.principal == AGENT
    policy = policy_of(record)
    assert policy["decision"] == "deny"
    assert "block-research-agent" in policy["determining"]
    assert policy["version"] == engine_version(sts) != before
    assert "block-research-agent" in record.detail["reason"]
    assert records_after(sts, mark, "token.issued") == []
    # a new session is refused too
    denied(agent.session(task["id"]))

    # positive control: removing the file restores service, with the original version
    remove_policy(sts, "50-block.cedar")
    mark = seq(sts)
    issued(agent.hop(session, AUD))
    [ok] = records_after(sts, mark, "token.issued")
    assert policy_of(ok)["version"] == before and policy_of(ok)["decision"] == "allow"


def test_invalid_policy_file_is_refused_and_the_old_set_keeps_working(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    good = engine_version(sts)

    add_policy(sts, "60-typo.cedar", INVALID)
    for _ in range(2):  # exchanges keep working, decided by the old version
        mark = seq(sts)
        issued(agent.hop(session, AUD, scope="wiki:read"))
        [record] = records_after(sts, mark, "token.issued")
        assert policy_of(record)["version"] == good and policy_of(record)["decision"] == "allow"
    error = sts.sts.ctx.policy.last_error
    assert error is not None
    assert [(p.file, p.line) for p in error.problems][:1] == [("60-typo.cedar", 3)]
    assert "attribute `scope`" in str(error)

    result = validate(sts.config.policy_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "60-typo.cedar:3:" in output
    assert "does not match the schema" in output and "attribute `scope`" in output
    assert "Traceback" not in output

    # positive control: fixing the file loads a new version, which then decides
    add_policy(sts, "60-typo.cedar", INVALID.replace("context.scope", "context.scopes"))
    mark = seq(sts)
    denied(agent.hop(session, AUD, scope="wiki:write"))
    [refusal] = records_after(sts, mark, "token.refused")
    assert policy_of(refusal)["determining"] == ["no-wiki-write"]
    mark = seq(sts)
    issued(agent.hop(session, AUD, scope="wiki:read"))
    [record] = records_after(sts, mark, "token.issued")
    assert policy_of(record)["version"] == engine_version(sts) != good
    assert sts.sts.ctx.policy.last_error is None
    assert validate(sts.config.policy_dir).returncode == 0


def test_a_set_with_one_invalid_file_is_refused_whole(sts: RunningSts) -> None:
    """Atomic: a valid forbid written together with a broken file is not enforced either."""
    task = create_task(sts, audiences=[AUD])
    agent = Client(sts)
    session = issued(agent.session(task["id"]))
    good = engine_version(sts)
    add_policy(sts, "50-block.cedar", BLOCK_AGENT)
    add_policy(sts, "60-typo.cedar", INVALID)
    mark = seq(sts)
    issued(agent.hop(session, AUD))
    [record] = records_after(sts, mark, "token.issued")
    assert policy_of(record)["version"] == good
    # positive control: once the broken file is gone the forbid is in force
    remove_policy(sts, "60-typo.cedar")
    denied(agent.hop(session, AUD))
    remove_policy(sts, "50-block.cedar")
    issued(agent.hop(session, AUD))
