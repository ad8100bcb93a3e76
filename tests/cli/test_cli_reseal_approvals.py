"""Approvals in flight survive ``tether master-key rotate`` (issue 17), with the real executable.

An approval's MACs are under a key derived from the master key (``rules.approval_seal``); the
rotation re-seals them (``Store.reseal_approvals``). A real deployment (SQLite, or PostgreSQL +
Redis under ``TETHER_TEST_STORE=postgres``) holds four requests, approves one and tampers with
two, the STS stops, ``tether master-key rotate`` runs, the STS starts again on the new key: the
pending request still polls ``authorization_pending`` (not ``invalid_grant``) and can be approved
and redeemed, the approved one redeems, the tampered ones stay refused (SECURITY APR-05), and no
false "tampered" error is logged for the genuine ones. Approvers decide through the real API with
ID tokens from ``tether identity approver`` (the dev approvers' provider ``tether init`` sets up).
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from cli_support import tether

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sts" / "approvals"))

from hold_kit import PAYMENTS, POLICIES, RESOURCES, assert_held, claims_of, hop, new_task, refused, session_token

from helpers import QUIET_MONITOR, Client, RunningSts, make_deployment, serving
from services import store_sql
from tether.clock import ManualClock
from tether.keys.sealed import derive_key, load_master_key
from tether.rules.approval_seal import Link, sign_link

ALICE = "alice@example.com"
TOML = (
    RESOURCES
    + QUIET_MONITOR
    + f'\n[approvals]\nttl = 600\ninterval = 2\n\n[[approver_groups]]\nname = "finance"\nmembers = ["user:{ALICE}"]\n'
)


def approver_token(directory: Path) -> str:
    """An ID token for alice (finance) from the dev approvers' provider, minted by the real CLI."""
    run = tether("identity", "approver", ALICE, cwd=directory)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def as_alice(sts: RunningSts, directory: Path, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {approver_token(directory)}"}
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        return http.request(method, sts.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]


def approve(sts: RunningSts, directory: Path, approval_id: str) -> None:
    response = as_alice(sts, directory, "POST", f"/approvals/{approval_id}/approve", json={"uses": 1})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"


def poll(sts: RunningSts, client: Client, session: str, approval_id: str) -> httpx.Response:
    sts.clock.advance(sts.config.approvals.interval)  # one polling interval (the STS's clock; nothing sleeps)
    return hop(client, session, PAYMENTS, approval_id=approval_id)


def test_apr05_approvals_in_flight_survive_a_master_key_rotation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_deployment(tmp_path, extra_toml=TOML)
    (config.policy_dir / "50-approvals.cedar").write_text(POLICIES, encoding="utf-8")
    clock = ManualClock()
    held: dict[str, tuple[Client, str, str]] = {}  # name -> (client, session, approval id)

    with serving(config, clock) as sts:
        for name in ("pending", "approved", "forged_view", "forged_uses"):
            client = Client(sts)
            session = session_token(sts, client, new_task(sts))
            held[name] = (client, session, assert_held(hop(client, session, PAYMENTS)))
        approve(sts, tmp_path, held["approved"][2])
        approve(sts, tmp_path, held["forged_uses"][2])
        # a database writer, before the rotation: what a pending request shows its approver, and
        # the uses an approval grants (neither can be MAC'd without the master key)
        store_sql(config, "UPDATE approvals SET view = ? WHERE id = ?", ('{"audience":"elsewhere"}', held["forged_view"][2]))
        store_sql(config, "UPDATE approvals SET uses = 5 WHERE id = ?", (held["forged_uses"][2],))
        # controls: before the rotation the genuine ones answer, the forged ones are refused
        client, session, approval_id = held["pending"]
        assert assert_held(poll(sts, client, session, approval_id)) == approval_id
        for name in ("forged_view", "forged_uses"):
            client, session, approval_id = held[name]
            refused(poll(sts, client, session, approval_id), status=400, error="invalid_grant")
        old_master = load_master_key(config.master_key_file)

    rotated = tether("master-key", "rotate", "--config", str(tmp_path / "tether.toml"), cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "2 approval(s) re-sealed" in rotated.stdout, rotated.stdout
    assert load_master_key(config.master_key_file) != old_master
    caplog.clear()

    with serving(config, clock) as sts:
        # the DPoP keys the sessions are bound to, on clients of the restarted STS
        again = {
            name: (Client(sts, key=client.key), session, approval_id) for name, (client, session, approval_id) in held.items()
        }

        # the pending request still waits (not invalid_grant), approvers see it, and it can be approved
        client, session, pending_id = again["pending"]
        assert assert_held(poll(sts, client, session, pending_id)) == pending_id
        shown = as_alice(sts, tmp_path, "GET", f"/approvals/{pending_id}")
        assert shown.status_code == 200 and shown.json()["status"] == "pending", shown.text
        listed = as_alice(sts, tmp_path, "GET", "/approvals", params={"status": "pending"})
        assert listed.status_code == 200, listed.text
        assert [a["id"] for a in listed.json()["approvals"]] == [pending_id], "the forged pending one is never shown"
        # a one-time link sent before the rotation no longer verifies (its key changed too; documented:
        # approvers use the API), and it decided nothing
        link = Link(pending_id, f"user:{ALICE}", "approve", int(clock.now()) + 600, secrets.token_urlsafe(16))
        old_link = sign_link(derive_key(old_master, "approval-links"), link)
        with httpx.Client(timeout=10.0, trust_env=False, headers={"Accept": "application/json"}) as http:
            refused(http.post(f"{sts.url}/approvals/link/{old_link}"), status=403, error="access_denied")
        assert as_alice(sts, tmp_path, "GET", f"/approvals/{pending_id}").json()["status"] == "pending"
        approve(sts, tmp_path, pending_id)
        response = poll(sts, client, session, pending_id)
        assert response.status_code == 200, response.text
        assert claims_of(response.json()["access_token"])["apr"]["id"] == pending_id

        # the approval decided before the rotation redeems its one use
        client, session, approved_id = again["approved"]
        response = poll(sts, client, session, approved_id)
        assert response.status_code == 200, response.text
        claims = claims_of(response.json()["access_token"])
        assert claims["apr"]["id"] == approved_id and claims["apr"]["by"] == f"user:{ALICE}"

        # rows tampered with before the rotation were not re-sealed: still refused, never shown
        for name in ("forged_view", "forged_uses"):
            client, session, approval_id = again[name]
            refused(poll(sts, client, session, approval_id), status=400, error="invalid_grant")
            assert as_alice(sts, tmp_path, "GET", f"/approvals/{approval_id}").status_code == 404

        audit = [r for r in sts.audit() if r.kind == "approvals.resealed"]
        assert [(r.principal, r.detail["resealed"], r.detail["left"]) for r in audit] == [("operator:cli", 2, 2)]

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [m for m in errors if pending_id in m or approved_id in m], errors
    assert any(again["forged_uses"][2] in m for m in errors), "the forged approval is still logged as tampered"
