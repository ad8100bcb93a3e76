"""Beyond the ceiling, B refuses — never narrows — with the standard error code (SECURITY FED-01).

Each refusal is a 4xx RFC 6749 §5.2 body with ``no-store``, one ``token.refused`` audit record
carrying the code, and no token value anywhere. Tokens "from A" that A would never issue (no
``cnf``, no ``tsk``, another audience) are signed with A's real signing key in process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fedinkit import WIKI_B, Border, claims_of, mark, refused, two_domains

from helpers import ACCESS, Client

READ = "wiki:read"


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("refusals")) as pair:
        yield pair


def _forged(border: Border, foreign: str, **changes: Any) -> str:
    """``foreign``'s claims changed (``None`` drops a claim), signed with A's own current key."""
    claims = claims_of(foreign)
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return border.a.sts.ctx.keyring.sign(claims)


def _refused(border: Border, foreign: str, key: Any, *, error: str, status: int = 400, reason: str | None = None,
             client: Client | None = None, **extra: str) -> None:  # fmt: skip
    since = mark(border.b)
    response = border.cross(client or border.at_b(key), foreign, **extra)
    refused(border.b, response, since=since, status=status, error=error, reason=reason, secrets=(foreign,))


def test_fed01_scope_beyond_the_foreign_token_is_invalid_scope(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"], scope=READ)
    _refused(border, foreign, key, error="invalid_scope", scope="wiki:read wiki:write")


def test_fed01_scope_beyond_the_ceiling_is_refused_never_narrowed(border: Border) -> None:
    # A's token carries wiki:admin, which B never grants A's agents: the default scope (the
    # token's) is refused whole, not cut down to the ceiling
    foreign, key = border.hop_to_b(border.a_task(scopes=["wiki:read", "wiki:admin"])["id"])
    _refused(border, foreign, key, error="invalid_scope")
    # asking within the ceiling works with the same kind of token
    foreign, key = border.hop_to_b(border.a_task(scopes=["wiki:read", "wiki:admin"])["id"])
    assert border.cross(border.at_b(key), foreign, scope=READ).status_code == 200


def test_fed01_resource_outside_the_peer_audiences_is_invalid_target(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    _refused(border, foreign, key, error="invalid_target", resource="http://127.0.0.1:9199")
    foreign, key = border.hop_to_b(border.a_task()["id"])
    assert border.cross(border.at_b(key), foreign, resource=WIKI_B).status_code == 200


def test_fed01_a_task_with_no_delegation_left_cannot_cross(border: Border) -> None:
    # on behalf of a user with max_depth 1: A's chain already uses it (tsk.depth 0)
    task = border.a_task(on_behalf_of="user:alice", max_depth=1)
    foreign, key = border.hop_to_b(task["id"])
    assert claims_of(foreign)["tsk"]["depth"] == 0
    _refused(border, foreign, key, error="invalid_grant", reason="tsk.depth 0")


def test_fed01_an_agent_the_peer_may_not_send_is_unauthorized_client(border: Border) -> None:
    other = "spiffe://tether.local/tool/scraper"
    task = border.a_task(agent=other)
    client = Client(border.a)
    session = client.session(task["id"], svid=border.a.svid(other))
    hop = client.hop(session.json()["access_token"], border.b.url)
    foreign = hop.json()["access_token"]
    _refused(border, foreign, client.key, error="unauthorized_client", reason="not in peer agents")


def test_fed01_a_token_from_an_issuer_that_is_no_peer_is_invalid_grant(border: Border) -> None:
    # B's own session token (iss B) and A's token re-signed under a foreign issuer name
    foreign, key = border.hop_to_b(border.a_task()["id"])
    _refused(border, _forged(border, foreign, iss="http://127.0.0.1:1"), key, error="invalid_grant",
             reason="no [[federation]] peer")  # fmt: skip


def test_fed01_a_bearer_token_never_crosses(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    _refused(border, _forged(border, foreign, cnf=None), key, error="invalid_grant", reason="without cnf.jkt")


def test_fed01_no_tsk_or_txn_is_invalid_grant(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    _refused(border, _forged(border, foreign, tsk=None), key, error="invalid_grant", reason="without tsk")
    _refused(border, _forged(border, foreign, txn=None), key, error="invalid_grant", reason="without txn")
    bad = {"exp": 1, "depth": True, "tokens": 1}
    _refused(border, _forged(border, foreign, tsk=bad), key, error="invalid_grant", reason="tsk malformed")


def test_fed01_the_proof_must_come_from_the_foreign_tokens_key(border: Border) -> None:
    foreign, _ = border.hop_to_b(border.a_task()["id"])
    _refused(border, foreign, None, error="invalid_dpop_proof", reason="foreign token binding")
    # without any proof
    since = mark(border.b)
    client = border.at_b(None)  # type: ignore[arg-type]
    response = client.http.post(border.b.token_url, data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                          "assertion": foreign})  # fmt: skip
    refused(border.b, response, since=since, status=400, error="invalid_dpop_proof", secrets=(foreign,))


def test_fed01_a_replayed_foreign_token_is_invalid_grant(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    assert border.cross(border.at_b(key), foreign).status_code == 200
    _refused(border, foreign, key, error="invalid_grant", reason="already redeemed")
    # also when presented the other way (RFC 8693 subject token)
    since = mark(border.b)
    response = border.cross_by_exchange(border.at_b(key), foreign)
    refused(border.b, response, since=since, status=400, error="invalid_grant", secrets=(foreign,))


def test_fed01_expired_foreign_token_or_ended_foreign_task(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    claims = claims_of(foreign)
    border.clock.advance(claims["exp"] - border.clock.now() + 60)
    _refused(border, foreign, key, error="invalid_grant", reason=f"exp {claims['exp']}")
    foreign, key = border.hop_to_b(border.a_task()["id"])
    now = int(border.clock.now())
    ended = _forged(border, foreign, tsk={**claims_of(foreign)["tsk"], "exp": now - 1})
    _refused(border, ended, key, error="invalid_grant", reason="tsk.exp")


def test_fed01_tampered_signature_is_invalid_grant(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    head, payload, signature = foreign.split(".")
    tampered = f"{head}.{payload}.{signature[:-6]}{'A' * 6 if not signature.endswith('A' * 6) else 'B' * 6}"
    _refused(border, tampered, key, error="invalid_grant", reason="signature")
    # claims changed under A's signature
    body = claims_of(foreign)
    import base64
    import json

    widened = base64.urlsafe_b64encode(json.dumps({**body, "scope": "wiki:admin"}).encode()).rstrip(b"=").decode()
    _refused(border, f"{head}.{widened}.{signature}", key, error="invalid_grant", reason="signature")


def test_fed01_a_token_for_another_audience_is_invalid_grant(border: Border) -> None:
    task = border.a_task()
    client = Client(border.a)
    session = client.session(task["id"]).json()["access_token"]
    for_a = client.hop(session, "http://127.0.0.1:9001").json()["access_token"]
    _refused(border, for_a, client.key, error="invalid_grant", reason="aud `http://127.0.0.1:9001`")
    # A's session token (aud A) as well
    _refused(border, session, client.key, error="invalid_grant", reason=f"aud `{border.a.url}`")


def test_fed01_foreign_tokens_take_no_task_or_actor(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    _refused(border, foreign, key, error="invalid_request", task="tsk_x")
    since = mark(border.b)
    response = border.cross_by_exchange(border.at_b(key), foreign, actor_token="x", actor_token_type=ACCESS)
    refused(border.b, response, since=since, status=400, error="invalid_request", secrets=(foreign,))


def test_fed01_alg_outside_the_peer_algorithms_is_invalid_grant(tmp_path: Path) -> None:
    with two_domains(tmp_path, b_federation={"algorithms": ["EdDSA"]}) as pair:
        foreign, key = pair.hop_to_b(pair.a_task()["id"])
        assert claims_of(foreign) and foreign.count(".") == 2
        _refused(pair, foreign, key, error="invalid_grant", reason="not allowed")


def test_fed01_a_chain_as_deep_as_the_ceiling_cannot_cross(tmp_path: Path) -> None:
    with two_domains(tmp_path, b_federation={"max_depth": 1}) as pair:
        foreign, key = pair.hop_to_b(pair.a_task(on_behalf_of="user:alice", max_depth=3)["id"])
        _refused(pair, foreign, key, error="invalid_grant", reason="foreign act chain of 1")


def test_jwt_bearer_without_federation_is_unsupported(border: Border) -> None:
    since = mark(border.a)
    client = Client(border.a)
    response = client.post_token({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "x.y.z"})
    refused(border.a, response, since=since, status=400, error="unsupported_grant_type")
