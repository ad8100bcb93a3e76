"""``tether audit verify|export``: the hash chain detects any edit, live or exported; no secrets in it."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import one_line, tether

from helpers import ADMIN, JWT, JWT_BEARER, SVC_B, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task, running_sts
from services import store_sql

AUD = "http://127.0.0.1:9001"


@pytest.fixture
def sts(tmp_path: Path) -> Iterator[RunningSts]:
    """The monitor only alerts on the replay below (no suspension racing the task's completion)."""
    with running_sts(tmp_path, extra_toml='[monitor.detectors.dpop_replay]\nactions = ["alert"]\n') as server:
        yield server


class RecordingClient(Client):
    """A harness client that remembers every proof it signs (to grep for them afterwards)."""

    def __init__(self, sts: RunningSts, secrets: list[str]) -> None:
        super().__init__(sts)
        self.secrets = secrets

    def proof(self, method: str = "POST", url: str | None = None, *, access_token: str | None = None, **kw: Any) -> str:
        value = super().proof(method, url, access_token=access_token, **kw)
        self.secrets.append(value)
        return value


def activity(sts: RunningSts) -> list[str]:
    """Issuance, refusals, revocation, task changes; returns every token, SVID and proof used."""
    secrets: list[str] = []

    def svid(spiffe_id: str = "spiffe://tether.local/agent/research") -> str:
        value = sts.svid(spiffe_id)
        secrets.append(value)
        return value

    admin = RecordingClient(sts, secrets)
    token = admin.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": svid(ADMIN), "subject_token_type": JWT})
    admin_access = token.json()["access_token"]
    secrets.append(admin_access)
    task = admin.api(
        "POST",
        "/tasks",
        admin_access,
        json={"agent": "spiffe://tether.local/agent/research", "audiences": [AUD], "scopes": ["wiki:read", "wiki:write"]},
    ).json()
    agent = RecordingClient(sts, secrets)
    session = agent.session(task["id"], svid=svid()).json()["access_token"]
    secrets.append(session)
    hop = agent.hop(session, AUD, scope="wiki:read").json()["access_token"]
    secrets.append(hop)
    # refusals whose reasons are audited: widening, replay, bearer downgrade, foreign client
    assert agent.hop(session, AUD, scope="wiki:admin").json()["error"] == "invalid_scope"
    replayed = agent.proof()
    assert (
        agent.post_token(
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": session,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "resource": AUD,
            },
            proof=replayed,
        ).status_code
        == 200
    )
    again = agent.post_token(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": session,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": AUD,
        },
        proof=replayed,
    )
    assert again.json()["error"] == "invalid_dpop_proof"
    assert agent.http.get(sts.url + "/tasks", headers={"Authorization": f"Bearer {session}"}).status_code == 401
    bad_client = agent.http.post(
        sts.url + "/revoke", data={"token": session, "client_assertion": svid(SVC_B), "client_assertion_type": JWT_BEARER}
    )
    assert bad_client.json()["error"] == "unauthorized_client"
    assert (
        agent.http.post(
            sts.url + "/introspect", data={"token": hop, "client_assertion": svid(), "client_assertion_type": JWT_BEARER}
        ).json()["active"]
        is True
    )
    assert (
        agent.http.post(
            sts.url + "/revoke", data={"token": hop, "client_assertion": svid(), "client_assertion_type": JWT_BEARER}
        ).status_code
        == 200
    )
    assert admin.api("POST", f"/tasks/{task['id']}/complete", admin_access).status_code == 200
    assert agent.hop(session, AUD).json()["error"] == "invalid_grant"
    # the monitor appends its alert asynchronously: wait for it, so the chain is quiescent
    deadline = time.monotonic() + 15
    while not any(r.kind == "alert.raised" for r in sts.audit()):
        assert time.monotonic() < deadline, "the monitor never alerted on the replay"
        time.sleep(0.05)
    return secrets


def _verify(sts: RunningSts, *args: str) -> Any:
    return tether("audit", "verify", *args, "--config", str(sts.config.path))


def test_audit_verify_intact(sts: RunningSts) -> None:
    activity(sts)
    result = _verify(sts)
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout
    assert f"{len(sts.audit())} records" in result.stdout


@pytest.mark.parametrize("column", ["detail", "outcome", "ts"])
def test_audit_verify_detects_an_edited_row(sts: RunningSts, column: str) -> None:
    activity(sts)
    records = sts.audit()
    target = next(r for r in records if r.kind == "token.refused" and r.error == "invalid_scope")
    values = {
        "detail": '{"reason": "nothing to see"}',
        "outcome": "ok",
        "principal": "spiffe://tether.local/x",
        "ts": target.ts + 1,
    }
    original = store_sql(sts.config, f"SELECT {column} FROM audit WHERE seq = ?", (target.seq,))[0][0]  # noqa: S608
    store_sql(sts.config, f"UPDATE audit SET {column} = ? WHERE seq = ?", (values[column], target.seq))  # noqa: S608
    result = _verify(sts)
    assert result.returncode == 1, result.stdout
    line = one_line(result.stderr)
    assert re.search(rf"\brecord {target.seq}\b", line), line
    # positive control: restoring the row restores the chain
    store_sql(sts.config, f"UPDATE audit SET {column} = ? WHERE seq = ?", (original, target.seq))  # noqa: S608
    ok = _verify(sts)
    assert ok.returncode == 0, ok.stderr


def test_audit_verify_detects_an_edit_with_a_recomputed_hash(sts: RunningSts) -> None:
    """Recomputing the edited row's own hash does not help: the next link breaks."""
    from tether.audit.chain import AuditEvent, link

    activity(sts)
    target = sts.audit()[3]
    forged = link(
        AuditEvent(
            kind=target.kind, outcome="ok", principal=target.principal, task=target.task, jti=target.jti, error=None, detail={}
        ),
        seq=target.seq,
        ts=target.ts,
        prev=target.prev,
    )
    store_sql(
        sts.config,
        "UPDATE audit SET outcome = ?, error = NULL, detail = '{}', hash = ? WHERE seq = ?",
        (forged.outcome, forged.hash, target.seq),
    )
    result = _verify(sts)
    assert result.returncode == 1
    assert re.search(rf"\brecord {target.seq + 1}\b", one_line(result.stderr))


def test_audit_verify_detects_a_deleted_row(sts: RunningSts) -> None:
    activity(sts)
    target = sts.audit()[4]
    store_sql(sts.config, "DELETE FROM audit WHERE seq = ?", (target.seq,))
    result = _verify(sts)
    assert result.returncode == 1
    assert re.search(rf"\brecord {target.seq + 1}\b", one_line(result.stderr))


def test_audit_export_then_verify_file(sts: RunningSts, tmp_path: Path) -> None:
    activity(sts)
    out = tmp_path / "audit.jsonl"
    exported = tether("audit", "export", "--out", str(out), "--config", str(sts.config.path))
    assert exported.returncode == 0, exported.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == len(sts.audit())
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, len(lines) + 1))

    ok = tether("audit", "verify", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout

    # edit one line of the export: the record that says the proof replay was refused
    index = next(i for i, line in enumerate(lines) if json.loads(line).get("error") == "invalid_dpop_proof")
    record = json.loads(lines[index])
    record["outcome"] = "ok"
    record["error"] = None
    edited = [*lines[:index], json.dumps(record, sort_keys=True), *lines[index + 1 :]]
    bad = tmp_path / "edited.jsonl"
    bad.write_text("\n".join(edited) + "\n")
    result = tether("audit", "verify", str(bad))
    assert result.returncode == 1
    assert re.search(rf"\brecord {record['seq']}\b", one_line(result.stderr))

    # a truncated head (first record removed) does not verify either
    headless = tmp_path / "headless.jsonl"
    headless.write_text("\n".join(lines[1:]) + "\n")
    assert tether("audit", "verify", str(headless)).returncode == 1
    # not JSON lines at all: one line, exit 1
    junk = tmp_path / "junk.jsonl"
    junk.write_text("this is not json\n")
    garbage = tether("audit", "verify", str(junk))
    assert garbage.returncode == 1
    one_line(garbage.stderr)
    # positive control: the untouched export still verifies
    assert tether("audit", "verify", str(out)).returncode == 0


def test_BCP_13_no_token_or_proof_in_audit_or_logs(sts: RunningSts, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = activity(sts)
    out = tmp_path / "audit.jsonl"
    assert tether("audit", "export", "--out", str(out), "--config", str(sts.config.path)).returncode == 0
    export = out.read_text()
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(secrets) > 10
    for secret in secrets:
        signature = secret.rsplit(".", 1)[1]
        for where, text in (("audit export", export), ("server log", logs)):
            assert secret not in text, f"a token or proof appears in the {where}"
            assert signature not in text, f"a JWT signature appears in the {where}"
    # positive control: the export is not empty and does record the refusals
    errors = {json.loads(line).get("error") for line in export.splitlines()}
    assert {"invalid_scope", "invalid_dpop_proof", "invalid_token", "unauthorized_client", "invalid_grant"} <= errors


def test_audit_records_every_task_change_and_issuance(sts: RunningSts) -> None:
    task = create_task(sts)
    client, token = admin_token(sts)
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    assert agent.hop(session, AUD).status_code == 200
    assert client.api("POST", f"/tasks/{task['id']}/cancel", token).status_code == 200
    kinds = [(r.kind, r.detail.get("token_kind")) for r in sts.audit() if r.task == task["id"]]
    assert kinds == [("task.created", None), ("token.issued", "session"), ("token.issued", "hop"), ("task.cancelled", None)]
