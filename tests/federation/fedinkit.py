"""Kit for the border tests: two tether deployments (trust domains A and B) in one process.

Each is a real ``tether init`` data directory with its own keys and SQLite store, served by
uvicorn on loopback; they share one ``ManualClock`` so A's ``iat`` is B's now. B trusts A as
``[[federation]]`` peer ``a`` and fetches A's JWKS over HTTP. ``FreshFeeds``/``StaleFeeds`` are the
``PeerFeeds`` seam (what the follower of A's revocation feed answers), set on B's context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from helpers import ACCESS, AGENT, TOKEN_EXCHANGE, Client, RunningSts, create_task, free_port, make_deployment, serving
from tether.agent.proof import DPoPKey
from tether.audit.chain import AuditRecord
from tether.clock import ManualClock

__all__ = [
    "AGENT",
    "JWT_BEARER_GRANT",
    "PEER_AGENTS",
    "WIKI_B",
    "Border",
    "FreshFeeds",
    "StaleFeeds",
    "claims_of",
    "federation_toml",
    "mark",
    "refused",
    "two_domains",
]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: a protected resource of trust domain B that A's agents may reach
WIKI_B = "http://127.0.0.1:9101"
#: a resource of A (where A's agent also goes, not across the border)
WIKI_A = "http://127.0.0.1:9001"
PEER_AGENTS = ("spiffe://tether.local/agent/*",)


class FreshFeeds:
    """A follower that has heard every peer just now."""

    def fresh(self, peer: str, now: float) -> bool:
        return True

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        return False


class StaleFeeds:
    """A follower that lost every peer's feed (FED-03)."""

    def fresh(self, peer: str, now: float) -> bool:
        return False

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        return True


def federation_toml(a_issuer: str, **overrides: Any) -> str:
    """B's ``[[federation]]`` row for A (values override the defaults)."""
    row: dict[str, Any] = {
        "name": "a",
        "issuer": a_issuer,
        "jwks_uri": a_issuer + "/jwks",
        "agents": list(PEER_AGENTS),
        "audiences": [WIKI_B],
        "scopes": ["wiki:read", "wiki:write"],
        "max_depth": 2,
        "max_ttl": 600,
        "max_tokens": 20,
        "feed_principal": "spiffe://tether.local/svc/feed-follower",
    }
    row.update(overrides)
    lines = ["[[federation]]"]
    for key, value in row.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_toml(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


@dataclass
class Border:
    """Trust domains A and B on loopback, one clock."""

    a: RunningSts
    b: RunningSts
    clock: ManualClock

    def a_task(self, **fields: Any) -> dict[str, Any]:
        """A task at A whose audiences include B's issuer (so its agent may hop to B)."""
        body: dict[str, Any] = {"audiences": [self.b.url, WIKI_A], "scopes": ["wiki:read", "wiki:write"]}
        body.update(fields)
        return create_task(self.a, **body)

    def hop_to_b(self, task_id: str, *, key: DPoPKey | None = None, scope: str | None = None) -> tuple[str, DPoPKey]:
        """The agent's hop token at A for audience B's issuer (and the key it is bound to)."""
        client = Client(self.a, key)
        session = client.session(task_id)
        assert session.status_code == 200, session.text
        extra = {"scope": scope} if scope is not None else {}
        hop = client.hop(session.json()["access_token"], self.b.url, **extra)
        assert hop.status_code == 200, hop.text
        return str(hop.json()["access_token"]), client.key

    def at_b(self, key: DPoPKey) -> Client:
        return Client(self.b, key)

    def cross(self, client: Client, foreign: str, **extra: str) -> httpx.Response:
        """Present ``foreign`` at B as an RFC 7523 jwt-bearer grant with a proof from ``client``'s key."""
        return client.post_token({"grant_type": JWT_BEARER_GRANT, "assertion": foreign, **extra})

    def cross_by_exchange(self, client: Client, foreign: str, **extra: str) -> httpx.Response:
        """Present ``foreign`` at B as an RFC 8693 subject token."""
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": foreign, "subject_token_type": ACCESS, **extra}
        return client.post_token(form)

    def feeds(self, feeds: Any) -> None:
        self.b.sts.ctx.federation = feeds


@contextlib.contextmanager
def two_domains(root: Path, *, b_federation: Mapping[str, Any] | None = None, b_extra: str = "",
                b_policies: Mapping[str, str] | None = None) -> Iterator[Border]:  # fmt: skip
    """A, then B trusting A (``b_federation`` overrides the peer row, ``b_policies`` are Cedar files
    added to B's policy directory); B starts with ``FreshFeeds``."""
    clock = ManualClock()
    a_config = make_deployment(root / "a")
    with serving(a_config, clock) as a:
        b_config = make_deployment(root / "b", extra_toml=federation_toml(a.url, **(b_federation or {})) + b_extra,
                                   port=free_port())  # fmt: skip
        for name, text in (b_policies or {}).items():
            (b_config.policy_dir / name).write_text(text, encoding="utf-8")
        with serving(b_config, clock) as b:
            border = Border(a, b, clock)
            border.feeds(FreshFeeds())
            yield border


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def refused(sts: RunningSts, response: httpx.Response, *, since: int, status: int, error: str,
            reason: str | None = None, secrets: tuple[str, ...] = ()) -> AuditRecord:  # fmt: skip
    """The wire refusal (status, RFC 6749 §5.2 body, ``no-store``) and exactly one audit record with
    its code; no token value in the body or the audit log."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert set(body) <= {"error", "error_description", "error_uri"}, body
    assert response.headers.get("cache-control") == "no-store"
    records = sts.audit()
    new = [r for r in records if r.seq > since and r.kind == "token.refused"]
    assert len(new) == 1, [(r.error, r.detail) for r in new]
    assert new[0].error == error and new[0].outcome == "refused"
    if reason is not None:
        assert reason in new[0].detail["reason"], new[0].detail
    dump = str([r.as_json() for r in records]) + response.text
    for secret in secrets:
        for part in [secret, *secret.split(".")[1:]]:
            assert part not in dump, "a token value leaked"
    return new[0]


def mark(sts: RunningSts) -> int:
    records = sts.audit()
    return records[-1].seq if records else 0
