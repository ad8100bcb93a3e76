"""``LinkedSession``: an agent's session at a federation peer's STS, for its home task's linked task.

    home = Agent(home_sts_url, identity).session(task_id)
    abroad = LinkedSession(home, "https://sts.b.example")
    with httpx.Client(auth=abroad.auth()) as http:
        http.get("https://wiki.b.example/search?q=x")   # hop token from B for wiki.b.example

The identity-chaining flow (draft-ietf-oauth-identity-chaining §2.3-§2.4): the agent asks its
home STS for a hop token whose audience is the peer's issuer (an ordinary hop: the peer is one
of the home task's audiences), then presents it at the peer's token endpoint as an RFC 7523
§2.1 ``jwt-bearer`` grant with a DPoP proof from the same key (nonce retry as everywhere). The
peer answers with a session token of the linked task, and from there the agent hops at the
peer exactly as at home. A crossing token is redeemed once at the peer, so it is never reused
from the home session's cache: each renewal of the linked session asks home for a new one.
"""

from __future__ import annotations

from collections.abc import Mapping

from tether.agent.exchange import Flow, exchange_flow
from tether.agent.session import Agent, TaskSession
from tether.agent.token_cache import margin
from tether.rules.jws import JWSError, b64url_decode, strict_json_loads
from tether.urns import JWT_BEARER_GRANT

__all__ = ["LinkedSession"]


class LinkedSession(TaskSession):
    """A ``TaskSession`` at the peer STS whose session comes from crossing with ``home``'s key.

    ``peer_issuer`` is the peer's issuer (the audience asked at home; default ``peer_sts_url``),
    ``scope`` what is asked at the border (default: what the home hop token carries), ``scopes``
    the per-audience narrowing of the hops at the peer, as for any session. ``task_id`` is the
    linked task's id once the first crossing has answered."""

    def __init__(
        self,
        home: TaskSession,
        peer_sts_url: str,
        *,
        peer_issuer: str | None = None,
        scope: str | None = None,
        scopes: Mapping[str, str] | None = None,
    ) -> None:
        if not home.dpop:
            raise ValueError("only a DPoP-bound session can cross to a peer: bearer tokens never cross")
        peer = Agent(peer_sts_url, key=home.key, clock=home.agent.clock)
        super().__init__(peer, "", scopes=scopes, approval_timeout=0)
        self.home = home
        self.peer_issuer = (peer_issuer or peer_sts_url).rstrip("/")
        self.scope = scope

    def session_flow(self) -> Flow:
        now = self.agent.clock.now()
        current = self._session
        if current is not None and current.usable(now, margin(current, now)):
            return current.value
        self.home.forget(self.peer_issuer)  # single-use at the peer: never a cached one
        foreign = yield from self.home.token_flow(self.peer_issuer)
        self.home.forget(self.peer_issuer)
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": foreign}
        if self.scope is not None:
            form["scope"] = self.scope
        issued = yield from exchange_flow(self.token_url, form, self.exchange_key, self.nonces, clock=self.agent.clock)
        self._session = issued
        self.task_id = _txn(issued.value) or self.task_id
        self.hops.clear()  # derived from the session just replaced
        self.exchanges += 1
        return issued.value


def _txn(token: str) -> str | None:
    """The linked task's id (``txn``) as the peer wrote it into the session token (for ``complete``)."""
    try:
        claims = strict_json_loads(b64url_decode(token.split(".")[1]))
    except (JWSError, IndexError):
        return None
    value = claims.get("txn") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else None
