"""The tasks list, the task page's lineage tree and the task actions, over real HTTP (WEB-02, WEB-03, WEB-05).

Tasks and tokens are made through the real STS (admin API, token exchange with DPoP, an actor
exchange by service B); the console runs with its own runtime on the same store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, running_console
from pageskit import RESOURCES, SERVICE_B, SERVICE_C, Tree, audit_of, make_lineage

from helpers import AGENT, SVC_B, create_task


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("pages-tasks"), extra_toml=RESOURCES) as running:
        yield running


def test_task_page_draws_session_hop_and_actor_hop_as_a_tree(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts, purpose="summarise the wiki")
    jtis = lineage.jtis
    viewer = console.login("viewer", "console:vera")
    page = viewer.get(f"/tasks/{lineage.id}")
    assert page.status_code == 200
    tree = Tree(page.text)
    assert tree.task == lineage.id
    assert tree.parent == {jtis["session"]: None, jtis["hop"]: jtis["session"], jtis["actor"]: jtis["hop"]}
    assert all(state == "live" for state in tree.state.values())
    hop, actor = tree.text[jtis["hop"]], tree.text[jtis["actor"]]
    assert SERVICE_B in hop and "wiki:read" in hop and "dpop" in hop and lineage.agent.key.jkt in hop
    assert SERVICE_C in actor and SVC_B in actor and "acting" in actor and AGENT in actor
    item = tree.attrs[jtis["session"]]
    assert item["role"] == "treeitem" and item["aria-level"] == "1" and item.get("aria-expanded") == "true"
    assert 'role="tree"' in page.text and 'aria-live="polite"' in page.text
    assert lineage.session not in page.text and lineage.hop not in page.text  # ids only, never a token value
    assert "summarise the wiki" in page.text and f"/audit?task={lineage.id}" in page.text
    assert "token.issued" in page.text  # the audit trail under the tree
    # a viewer sees no action
    assert "/complete/confirm" not in page.text and "/suspend/confirm" not in page.text


def test_completing_from_the_console_revokes_every_token_and_cuts_the_tree(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    operator = console.login("operator", "console:olga")
    page = operator.get(f"/tasks/{lineage.id}")
    assert f"/tasks/{lineage.id}/complete/confirm" in page.text
    confirm = operator.get(f"/tasks/{lineage.id}/complete/confirm")
    assert confirm.status_code == 200 and "every token derived from this task is revoked at once" in confirm.text.lower()
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 200  # the GET changed nothing (WEB-02)
    done = operator.post(f"/tasks/{lineage.id}/complete", {"csrf": operator.csrf(f"/tasks/{lineage.id}")})
    assert done.status_code == 303 and done.headers["location"] == f"/tasks/{lineage.id}"
    refused = lineage.agent.hop(lineage.session, SERVICE_B)  # the STS itself now refuses the session token
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    ended = audit_of(console, "task.completed")[-1]
    assert ended.principal == "console:olga" and ended.task == lineage.id and ended.detail["via"] == "console"
    tree = Tree(operator.get(f"/tasks/{lineage.id}").text)
    assert set(tree.state) >= set(lineage.jtis.values())
    for jti in lineage.jtis.values():
        assert tree.state[jti] == "revoked" and "cut" in tree.classes[jti] and "revoked" in tree.text[jti]
    again = operator.get(f"/tasks/{lineage.id}")
    assert "completed" in again.text and "/complete/confirm" not in again.text


def test_web05_a_viewers_forged_posts_are_refused_audited_and_change_nothing(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    viewer = console.login("viewer", "console:vic")
    csrf = viewer.csrf()
    before = len(audit_of(console, "console.refused"))
    targets: list[tuple[str, dict[str, str]]] = [
        (f"/tasks/{lineage.id}/{a}", {}) for a in ("complete", "cancel", "suspend")
    ] + [
        ("/principals/block", {"kind": "agent", "value": AGENT}),
        ("/principals/unblock", {"kind": "agent", "value": AGENT}),
    ]
    for path, fields in targets:
        response = viewer.post(path, {"csrf": csrf, **fields})
        assert response.status_code == 403, path
    refusals = audit_of(console, "console.refused")[before:]
    assert len(refusals) == len(targets)
    assert {r.principal for r in refusals} == {"console:vic"}
    assert {r.detail["path"] for r in refusals} == {path for path, _ in targets}
    for action in ("complete", "suspend"):  # the confirmation pages are not a viewer's either
        assert viewer.get(f"/tasks/{lineage.id}/{action}/confirm").status_code == 403
    assert viewer.get(f"/principals/block/confirm?kind=agent&value={AGENT}").status_code == 403
    # nothing changed: the task is active and its tokens still exchange
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 200
    assert "active" in viewer.get(f"/tasks/{lineage.id}").text


def test_web02_operator_post_without_csrf_is_refused_and_changes_nothing(console: RunningConsole) -> None:
    lineage = make_lineage(console.sts)
    operator = console.login("operator", "console:otto")
    assert operator.post(f"/tasks/{lineage.id}/cancel", {"confirm": "yes"}).status_code == 403
    assert lineage.agent.hop(lineage.session, SERVICE_B).status_code == 200


def test_web03_attacker_chosen_agent_and_purpose_are_escaped(console: RunningConsole) -> None:
    evil = 'k8s:<script>alert("x")</script>\'&'
    purpose = "<img src=x onerror=alert(1)> \"quoted\" 'single'"
    task = create_task(console.sts, agent=evil, purpose=purpose)
    viewer = console.login("viewer")
    for path in ("/tasks", f"/tasks/{task['id']}", "/agents"):
        page = viewer.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&amp;" in page.text, path
    assert "&lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34; &#39;single&#39;" in viewer.get(f"/tasks/{task['id']}").text
    csp = viewer.get("/tasks").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_tasks_list_filters_by_state_agent_and_audience(console: RunningConsole) -> None:
    other = "spiffe://tether.local/agent/filtered"
    kept = create_task(console.sts, agent=other, audiences=[SERVICE_C])
    create_task(console.sts, agent=other, audiences=[SERVICE_B])
    viewer = console.login("viewer")
    page = viewer.get("/tasks", params={"agent": other, "audience": SERVICE_C, "state": "active"})
    assert page.status_code == 200
    assert page.text.count('href="/tasks/') - page.text.count('href="/tasks/?') == 1 and kept["id"] in page.text
    none = viewer.get("/tasks", params={"agent": other, "state": "completed"})
    assert none.status_code == 200 and "No task matches" in none.text


def test_missing_task_and_unknown_action_are_404_pages(console: RunningConsole) -> None:
    viewer, operator = console.login("viewer"), console.login("operator")
    missing = viewer.get("/tasks/no-such-task")
    assert missing.status_code == 404 and "task not found" in missing.text and "Traceback" not in missing.text
    assert viewer.get("/tasks/no-such-task/events").status_code == 404
    task = create_task(console.sts)
    assert operator.get(f"/tasks/{task['id']}/explode/confirm").status_code == 404
    assert operator.post(f"/tasks/{task['id']}/explode", {"csrf": operator.csrf()}).status_code == 404


@pytest.mark.parametrize(
    "params",
    [{"state": "bogus"}, {"agent": "a\x00b"}, {"agent": "x" * 600}, {"after": "y" * 300}, {"audience": "\x07"}],
)
def test_bad_filters_are_a_400_page_never_a_500(console: RunningConsole, params: dict[str, str]) -> None:
    viewer = console.login("viewer")
    response = viewer.get("/tasks", params=params)
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]
    assert "Traceback" not in response.text


def test_bad_principal_to_block_is_a_400_page(console: RunningConsole) -> None:
    operator = console.login("operator")
    assert operator.get("/principals/block/confirm", params={"kind": "robot", "value": "x"}).status_code == 400
    assert operator.get("/principals/block/confirm", params={"kind": "agent", "value": ""}).status_code == 400
    assert operator.post("/principals/block", {"csrf": operator.csrf(), "kind": "agent", "value": "a\nb"}).status_code == 400
