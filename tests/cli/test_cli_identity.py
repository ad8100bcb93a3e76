"""``tether identity issue``: a JWT-SVID from the dev trust domain that verifies against its bundle."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cli_support import one_line, tether

from helpers import AGENT, JWT, TOKEN_EXCHANGE, Client, RunningSts, create_task


def _bundle(sts: RunningSts) -> dict[str, Any]:
    path = sts.config.data_dir / "bundles" / "tether.local.json"
    bundle: dict[str, Any] = json.loads(path.read_text())
    return bundle


def _verify_svid(sts: RunningSts, token: str, audience: str) -> dict[str, Any]:
    keys = {k["kid"]: k for k in _bundle(sts)["keys"]}
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    key = jwt.PyJWK(keys[header["kid"]], algorithm="ES256")
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, options={"require": ["sub", "aud", "exp", "iat"]}
    )
    return claims


def test_identity_issue_prints_an_svid_that_verifies_against_the_bundle(shared_sts: RunningSts) -> None:
    sts = shared_sts
    result = tether("identity", "issue", AGENT, "--config", str(sts.config.path))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    claims = _verify_svid(sts, token, sts.url)
    assert claims["sub"] == AGENT
    assert claims["aud"] == [sts.url]
    assert claims["exp"] - claims["iat"] == 300  # the default --ttl
    assert isinstance(claims.get("jti"), str)
    # and the STS accepts it as the agent's workload identity
    task = create_task(sts)
    session = Client(sts).session(task["id"], svid=token)
    assert session.status_code == 200, session.text


def test_identity_issue_audience_and_ttl(shared_sts: RunningSts) -> None:
    sts = shared_sts
    result = tether(
        "identity", "issue", AGENT, "--audience", "https://svc.example", "--ttl", "60", "--config", str(sts.config.path)
    )
    assert result.returncode == 0, result.stderr
    claims = _verify_svid(sts, result.stdout.strip(), "https://svc.example")
    assert claims["exp"] - claims["iat"] == 60
    # an SVID for another audience is refused by the STS (SVID-03) ...
    refused = Client(sts).post_token(
        {"grant_type": TOKEN_EXCHANGE, "subject_token": result.stdout.strip(), "subject_token_type": JWT}
    )
    assert refused.status_code in (400, 401), refused.text
    assert refused.json()["error"] in ("invalid_grant", "invalid_client")
    # ... and two SVIDs never share a jti
    again = tether("identity", "issue", AGENT, "--config", str(sts.config.path))
    first = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    second = jwt.decode(again.stdout.strip(), options={"verify_signature": False})
    assert first["jti"] != second["jti"]


def test_identity_issue_refuses_foreign_ids_and_bad_ttl(shared_sts: RunningSts) -> None:
    sts = shared_sts
    cfg = str(sts.config.path)
    for args in (
        ("spiffe://other.example/agent", "--config", cfg),
        (AGENT, "--ttl", "0", "--config", cfg),
        (AGENT, "--ttl", "999999", "--config", cfg),
    ):
        result = tether("identity", "issue", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        one_line(result.stderr)
        assert result.stdout.strip() == ""
    ok = tether("identity", "issue", AGENT, "--ttl", "3600", "--config", cfg)
    assert ok.returncode == 0, ok.stderr
