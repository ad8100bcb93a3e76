"""``tether init``'s dev approvers' provider and ``tether identity approver`` (issue 17).

The ID tokens it prints are verified by the STS's ``ApproverVerifier`` exactly as a real
provider's would be: signature against the JWKS ``tether init`` wrote, issuer, audience, expiry;
groups from ``[[approver_groups]]`` by principal or by the ``groups`` claim.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from cli_support import tether
from joserfc.jwk import ECKey

from tether.config import Config, load_config
from tether.errors import InvalidToken
from tether.identity.approvers import ApproverVerifier
from tether.identity.dev_approvers import DevApprovers
from tether.rules.approval import Approver

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def _verify(config: Config, token: str) -> Approver:
    async def run() -> Approver:
        async with httpx.AsyncClient() as client:
            return await ApproverVerifier.from_config(config, client).verify(token, now=time.time())

    return asyncio.run(run())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("approvers")
    assert tether("init", cwd=directory).returncode == 0
    path = directory / "tether.toml"
    path.write_text(
        path.read_text(encoding="utf-8")
        + '\n[[approver_groups]]\nname = "finance"\nmembers = ["user:alice@example.com"]\n'
        + '\n[[approver_groups]]\nname = "legal"\nidp_groups = ["legal-approvers"]\n',
        encoding="utf-8",
    )
    return directory


def _approver_token(directory: Path, email: str, *groups: str) -> str:
    args = ["identity", "approver", email, *(a for g in groups for a in ("--group", g))]
    run = tether(*args, cwd=directory)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_apr02_dev_approver_groups_by_member_list_and_by_claim(deployment: Path) -> None:
    config = load_config(deployment / "tether.toml")
    assert config.approvals.issuer == DevApprovers.issuer_for(config.issuer)
    alice = _verify(config, _approver_token(deployment, "alice@example.com"))
    assert alice == Approver("user:alice@example.com", frozenset({"finance"}))
    carol = _verify(config, _approver_token(deployment, "carol@example.com", "legal-approvers", "other"))
    assert carol == Approver("user:carol@example.com", frozenset({"legal"}))
    bob = _verify(config, _approver_token(deployment, "bob@example.com", "finance"))  # the claim value is not the group name
    assert bob.groups == frozenset()


def test_apr02_foreign_key_wrong_audience_and_expired_tokens_are_refused(deployment: Path) -> None:
    config = load_config(deployment / "tether.toml")
    now = int(time.time())
    forged = DevApprovers(config.approvals.issuer, ECKey.generate_key("P-256", private=True))
    with pytest.raises(InvalidToken):
        _verify(config, forged.issue("alice@example.com", audience=config.approvals.audience, ttl=60, now=now))
    from tether.cli.common import dev_approvers

    real = dev_approvers(config)
    with pytest.raises(InvalidToken):
        _verify(config, real.issue("alice@example.com", audience="https://elsewhere.example", ttl=60, now=now))
    with pytest.raises(InvalidToken):
        _verify(config, real.issue("alice@example.com", audience=config.approvals.audience, ttl=60, now=now - 3600))
    # a tether workload JWT (the dev trust domain) is never an approver's token
    svid = tether("identity", "issue", "spiffe://tether.local/agent/research", "--audience", config.approvals.audience,
                  cwd=deployment).stdout.strip()  # fmt: skip
    with pytest.raises(InvalidToken):
        _verify(config, svid)


def test_identity_approver_refuses_bad_input(deployment: Path) -> None:
    run = tether("identity", "approver", "not an email", cwd=deployment)
    assert run.returncode == 2 and "is not an email address" in run.stderr
    run = tether("identity", "approver", "alice@example.com", "--ttl", "999999", cwd=deployment)
    assert run.returncode == 2 and "--ttl" in run.stderr
