"""Review of issue 17: approvals across ``tether master-key rotate``, with the real executable.

``tether init`` seals the dev approvers' provider key under the master key, as it seals the dev
trust domain's; a rotation must re-wrap both, or ``tether identity approver`` stops working (and
the JWKS the STS trusts for approvers names a key nobody can use any more).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from cli_support import tether

from tether.config import load_config
from tether.identity.approvers import ApproverVerifier
from tether.rules.approval import Approver

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def _approver(directory: Path) -> str:
    run = tether("identity", "approver", "alice@example.com", cwd=directory)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_review_apr_master_key_rotate_keeps_the_dev_approvers_provider(tmp_path: Path) -> None:
    assert tether("init", cwd=tmp_path).returncode == 0
    path = tmp_path / "tether.toml"
    path.write_text(
        path.read_text(encoding="utf-8") + '\n[[approver_groups]]\nname = "finance"\nmembers = ["user:alice@example.com"]\n',
        encoding="utf-8",
    )
    _approver(tmp_path)  # control: works before the rotation
    rotated = tether("master-key", "rotate", "--config", str(path), cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    token = _approver(tmp_path)
    config = load_config(path)

    async def verify() -> Approver:
        async with httpx.AsyncClient() as client:
            return await ApproverVerifier.from_config(config, client).verify(token, now=time.time())

    assert asyncio.run(verify()) == Approver("user:alice@example.com", frozenset({"finance"}))
