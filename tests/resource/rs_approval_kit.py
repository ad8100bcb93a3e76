"""Held calls at a resource server (issue 17, APR-01): a protected app whose Cedar policy holds some routes.

The verifier trusts a signing key of the test's own (``StaticKeySource``), so each test signs
access tokens with exactly the ``tctx``/``apr`` claims it needs, as the STS would issue them;
the app runs under ``ServerThread`` on loopback, the DPoP proofs and signatures are real.
The STS-issued tokens of the whole flow are covered by ``tests/agent/test_agent_approval.py``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.proof import DPoPKey
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.proofs import ReplayCache
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of
from tether.rules.approval import tool_call_context
from tether.rules.jws import sign_compact
from tether.web.server import ServerThread, free_port

__all__ = [
    "AGENT",
    "APPROVER",
    "HELD_POLICY",
    "ISSUER",
    "Signer",
    "approval_policies",
    "serve_held",
    "signed_call",
]

ISSUER = "http://sts.approval.test"
AGENT = "spiffe://tether.local/agent/research"
APPROVER = "user:alice@example.com"
KID = "approval-test-key"

#: ``/pay`` is held for the finance group; ``/refund`` for finance and the task's end user
HELD_POLICY = """
@id("pay-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.path == "/pay" };

@id("refund-needs-finance")
@approval("finance")
permit (principal, action == Tether::Action::"call", resource)
when { context.path == "/refund" };

@id("refund-needs-subject")
@approval("subject")
permit (principal, action == Tether::Action::"call", resource)
when { context.path == "/refund" };
"""


def approval_policies(directory: Path, text: str = HELD_POLICY) -> Path:
    """The starter policies plus ``text``, in ``directory``."""
    install_starter_policies(directory)
    (directory / "60-approvals.cedar").write_text(text, encoding="utf-8")
    return directory


@dataclass
class Signer:
    """Signs access tokens as the STS would (RFC 9068), for one audience."""

    key: ECKey
    audience: str

    @classmethod
    def new(cls, audience: str) -> Signer:
        return cls(ECKey.generate_key("P-256", parameters={"kid": KID}, private=True), audience)

    def keys(self) -> StaticKeySource:
        return StaticKeySource(KeySet([ECKey.import_key(self.key.as_dict(private=False))]))

    def token(
        self,
        holder: DPoPKey,
        *,
        tool: str | None = None,
        arguments: dict[str, Any] | None = None,
        tctx: str | None = None,
        approval: str | None = None,
        scope: str = "wiki:read wiki:write",
        **claims: Any,
    ) -> str:
        """A token bound to ``holder``; ``tool``/``arguments`` set ``tctx``, ``approval`` an ``apr`` claim."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "sub": AGENT,
            "aud": self.audience,
            "exp": now + 120,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": AGENT,
            "scope": scope,
            "cnf": {"jkt": holder.jkt},
            "agt": AGENT,
            "txn": "tsk_" + secrets.token_urlsafe(8),
        }
        if tool is not None:
            body["tctx"] = tool_call_context(tool, arguments or {})
        if tctx is not None:
            body["tctx"] = tctx
        if approval is not None:
            body["apr"] = {"id": approval, "by": APPROVER, "at": now - 5}
        body.update(claims)
        return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": KID}, body, self.key, "ES256")


async def _whoami(request: Request) -> Response:
    principal = principal_of(request)
    apr = principal.apr.as_json() if principal.apr is not None else None
    return JSONResponse({"path": request.url.path, "jti": principal.jti, "apr": apr, "tctx": principal.tctx})


def held_app(verifier: Verifier, replay: ReplayCache | None = None) -> Starlette:
    """The protected app; a ``replay`` cache with ``aclose`` (Redis) is closed on the server's loop at shutdown."""
    routes = [Route(path, _whoami, methods=["GET", "POST"]) for path in ("/pay", "/refund", "/read")]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        close = getattr(replay, "aclose", None)
        if close is not None:
            await close()

    return Starlette(routes=routes, middleware=[Middleware(TetherMiddleware, verifier=verifier)], lifespan=lifespan)


@dataclass
class HeldService:
    url: str
    verifier: Verifier
    signer: Signer


@contextlib.contextmanager
def serve_held(
    policies: Path, *, replay: ReplayCache | None = None, port: int | None = None, resource: str | None = None
) -> Iterator[HeldService]:
    """The app with ``policies`` on loopback; ``resource`` (default: its own URL) is the tokens' audience,
    so two replicas can serve one resource (``port`` differs, ``resource`` is shared)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    audience = resource or url
    signer = Signer.new(audience)
    settings = ResourceSettings(issuer=ISSUER, resource=audience, revocation_feed=False, policy_dir=str(policies))
    verifier = Verifier(settings, keys=signer.keys(), replay=replay)
    thread = ServerThread(held_app(verifier, replay), port).start()
    try:
        yield HeldService(url, verifier, signer)
    finally:
        thread.stop()


def signed_call(
    http: httpx.Client, method: str, base: str, path: str, token: str, key: DPoPKey, *, audience: str | None = None
) -> httpx.Response:
    """``method base+path`` with the token and a fresh proof whose ``htu`` is the resource's URL."""
    htu = (audience or base) + path
    nonce: str | None = None
    for _ in range(2):  # RFC 9449 §9: once more with the server's nonce (a new Redis replay epoch asks for one)
        headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof(method, htu, access_token=token, nonce=nonce)}
        response = http.request(method, base + path, headers=headers)
        if response.status_code != 401 or "use_dpop_nonce" not in response.headers.get("www-authenticate", ""):
            break
        nonce = response.headers.get("dpop-nonce")
    return response
