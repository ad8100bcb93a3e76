"""``tether task create|show|list|complete|cancel --json`` against a running STS (as the local admin)."""

from __future__ import annotations

import json
from typing import Any

from cli_support import one_line, tether

from helpers import ADMIN, AGENT, Client, RunningSts, admin_token, create_task, free_port

AUD = "http://127.0.0.1:9001"


def task_cli(sts: RunningSts, *args: str) -> Any:
    result = tether("task", *args, "--json", "--config", str(sts.config.path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_task_create_show_list_complete(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = task_cli(
        sts,
        "create",
        "--agent",
        AGENT,
        "--audience",
        AUD,
        "--audience",
        "http://127.0.0.1:9002",
        "--scope",
        "wiki:read",
        "--scope",
        "wiki:write",
        "--purpose",
        "cli test",
        "--max-duration",
        "600",
        "--max-depth",
        "2",
        "--max-tokens",
        "9",
        "--on-behalf-of",
        "user:alice",
    )
    assert task["state"] == "active"
    assert task["agent"] == AGENT
    assert task["audiences"] == [AUD, "http://127.0.0.1:9002"]
    assert task["scopes"] == ["wiki:read", "wiki:write"]
    assert task["purpose"] == "cli test"
    assert task["on_behalf_of"] == "user:alice"
    assert task["expires_at"] - task["created_at"] == 600
    assert (task["max_depth"], task["max_tokens"]) == (2, 9)
    assert task["created_by"] == ADMIN
    assert sts.last_audit("task.created").task == task["id"]

    assert task_cli(sts, "show", task["id"]) == task
    listed = task_cli(sts, "list", "--state", "active")["tasks"]
    assert task["id"] in {t["id"] for t in listed}
    assert {t["state"] for t in listed} == {"active"}

    # the task is real: its agent exchanges for it
    agent = Client(sts)
    session = agent.session(task["id"])
    assert session.status_code == 200, session.text

    done = task_cli(sts, "complete", task["id"])
    assert done["state"] == "completed"
    assert done["tokens_issued"] == 1
    completed = task_cli(sts, "list", "--state", "completed")["tasks"]
    assert task["id"] in {t["id"] for t in completed}
    hop = agent.hop(session.json()["access_token"], AUD)
    assert hop.status_code == 400
    assert hop.json()["error"] == "invalid_grant"


def test_task_complete_twice_fails_with_the_rfc_error(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    assert task_cli(sts, "complete", task["id"])["state"] == "completed"
    again = tether("task", "complete", task["id"], "--json", "--config", str(sts.config.path))
    assert again.returncode == 1
    assert "invalid_request" in one_line(again.stderr)
    assert again.stdout.strip() == ""
    # positive control
    other = create_task(sts)
    assert task_cli(sts, "cancel", other["id"])["state"] == "cancelled"
    client, token = admin_token(sts)
    assert client.api("GET", f"/tasks/{other['id']}", token).json()["state"] == "cancelled"


def test_task_create_beyond_caps_fails(shared_sts: RunningSts) -> None:
    sts = shared_sts
    cfg = str(sts.config.path)
    result = tether(
        "task", "create", "--agent", AGENT, "--audience", AUD, "--scope", "a", "--max-duration", "901", "--config", cfg
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "invalid_request" in line and "max_duration" in line
    assert task_cli(sts, "create", "--agent", AGENT, "--audience", AUD, "--scope", "a", "--max-duration", "900")


def test_task_show_unknown_fails(shared_sts: RunningSts) -> None:
    sts = shared_sts
    result = tether("task", "show", "tsk_unknown", "--config", str(sts.config.path))
    assert result.returncode == 1
    assert "not_found" in one_line(result.stderr)
    task = create_task(sts)
    assert task_cli(sts, "show", task["id"])["id"] == task["id"]


def test_task_cli_unreachable_server_fails_cleanly(shared_sts: RunningSts) -> None:
    """An STS that cannot be reached is one error line and exit 1, like every other CLI failure."""
    sts = shared_sts
    result = tether("task", "list", "--url", f"http://127.0.0.1:{free_port()}", "--config", str(sts.config.path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    one_line(result.stderr)
    ok = tether("task", "list", "--url", sts.url, "--config", str(sts.config.path))
    assert ok.returncode == 0, ok.stderr


def test_task_list_human_output(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts)
    result = tether("task", "list", "--config", str(sts.config.path))
    assert result.returncode == 0, result.stderr
    assert task["id"] in result.stdout
