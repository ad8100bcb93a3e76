"""Helpers for the STS policy tests: policy files in the live directory, exchanges, audit lookups.

The STS under test is a real uvicorn server (``helpers.running_sts``); its policy
directory is the one ``tether init`` filled with the starter set
(``sts.config.policy_dir``). Tests edit that directory while the server runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from helpers import ACCESS, JWT, TOKEN_EXCHANGE, Client, RunningSts
from tether.audit.chain import AuditRecord

__all__ = [
    "act",
    "add_policy",
    "denied",
    "engine_version",
    "issued",
    "policy_of",
    "records_after",
    "remove_policy",
    "seq",
]


def add_policy(sts: RunningSts, name: str, text: str) -> Path:
    """Write a ``.cedar`` file into the running STS's policy directory."""
    path = sts.config.policy_dir / name
    path.write_text(text, encoding="utf-8")
    return path


def remove_policy(sts: RunningSts, name: str) -> None:
    (sts.config.policy_dir / name).unlink()


def engine_version(sts: RunningSts) -> str:
    version = sts.sts.ctx.policy.version
    assert version is not None
    return version


def seq(sts: RunningSts) -> int:
    records = sts.audit()
    return records[-1].seq if records else 0


def records_after(sts: RunningSts, mark: int, kind: str | None = None) -> list[AuditRecord]:
    return [r for r in sts.audit() if r.seq > mark and (kind is None or r.kind == kind)]


def policy_of(record: AuditRecord) -> dict[str, Any]:
    policy = record.detail.get("policy")
    assert isinstance(policy, dict), record.detail
    return policy


def issued(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def denied(response: httpx.Response, *, status: int = 403, error: str = "access_denied") -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def act(sts: RunningSts, subject: str, actor: str, resource: str) -> httpx.Response:
    """Service ``actor`` exchanges ``subject`` for ``resource`` with its own SVID (RFC 8693 actor_token)."""
    client = Client(sts)
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS,
        "actor_token": sts.svid(actor),
        "actor_token_type": JWT,
        "resource": resource,
    }
    return client.post_token(form)
