"""Kit for the approvers' API tests: a real STS, a real OIDC provider for approvers, approvals in the store.

The approvers' provider is ``identity_support.Provider`` (a Starlette app under uvicorn on
loopback) with one ``Tenant`` publishing discovery and a JWKS; ID tokens are signed with the
tenant's key by the tests' own signer (``sign_jwt``), carrying ``email`` and ``groups``.

Held requests are written into the store as the token endpoint writes them (``hold_approval``
with a ``request_mac`` under ``derive_key(master, "approvals")``), so these tests do not depend
on the hold path; tasks are written there too when a test needs a human as the task's creator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "identity"))

from identity_support import Provider, Tenant, ec_key, sign_jwt

from helpers import ADMIN, AGENT, QUIET_MONITOR, RunningSts, ServerThread, free_port, make_deployment, serving
from tether.audit.chain import AuditEvent
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.keys.sealed import derive_key, load_master_key
from tether.model import Approval, Task
from tether.rules.approval import ApprovalBinding, approval_view, tool_call_context
from tether.rules.approval_seal import Link, request_mac, sign_link
from tether.rules.task import TaskRequest, build_task
from tether.rules.tool_call import parse_tool_call
from tether.store.open import open_store
from tether.store.protocol import Store

__all__ = [
    "ALICE",
    "APPROVALS_AUDIENCE",
    "AUD",
    "BOT",
    "CAROL",
    "DAVE",
    "EVE",
    "FRANK",
    "LENA",
    "OLIVIA",
    "ApprovalsEnv",
    "Receiver",
    "approvals_env",
    "refused",
]

T = TypeVar("T")

APPROVALS_AUDIENCE = "tether-approvals"
AUD = "http://127.0.0.1:9001"
#: finance members by list
ALICE = "user:alice@example.com"
CAROL = "user:carol@example.com"
DAVE = "user:dave@example.com"  # a human who creates tasks (and is in finance)
#: finance by the provider's group claim only (``fin-team``): never sent a link
FRANK = "user:frank@example.com"
#: legal member by list
LENA = "user:lena@example.com"
#: in no group
EVE = "user:eve@example.com"
#: the end user some tasks act for
OLIVIA = "user:olivia@example.com"
#: an agent with an identity at the approvers' provider too (APR-02: it must not approve itself)
BOT = "user:bot@example.com"


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """A JSON refusal: its status, RFC 6749 §5.2 ``error``, a description, and never cached; no secret in it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str)
    assert response.headers["cache-control"] == "no-store"
    assert "hunter2" not in response.text and "eyJ" not in response.text
    return body


def approvals_settings(issuer: str, *, webhook_url: str = "", public_url: str = "") -> dict[str, str | int]:
    """``[approvals]`` of these tests: the loopback provider as the approvers' issuer."""
    values: dict[str, str | int] = {"issuer": issuer, "audience": APPROVALS_AUDIENCE, "max_uses": 5, "max_window": 1800}
    if webhook_url:
        values.update(webhook_url=webhook_url, webhook_timeout=2)
    if public_url:
        values["public_url"] = public_url
    return values


GROUPS_TOML = f"""
[[approver_groups]]
name = "finance"
members = ["{ALICE}", "{CAROL}", "{DAVE}"]
idp_groups = ["fin-team"]

[[approver_groups]]
name = "legal"
members = ["{LENA}"]
"""


def set_approvals(path: Path, values: Mapping[str, str | int]) -> None:
    """Rewrite the ``[approvals]`` table ``tether init`` wrote (the dev provider) with ``values``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == "[approvals]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    kept = [line for line in lines[start + 1 : end] if line.split("=")[0].strip() not in {*values, "jwks_file"}]
    mine = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join([*lines[:start], "[approvals]", *mine, *kept, *lines[end:]]) + "\n", encoding="utf-8")


def run(fn: Callable[[Store], Awaitable[T]], config: Config) -> T:
    """``fn(store)`` on a store of ``config`` opened for this call (the server keeps its own)."""

    async def main() -> T:
        store = await open_store(config)
        try:
            return await fn(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


@dataclass
class ApprovalsEnv:
    sts: RunningSts
    provider: Provider
    tenant: Tenant
    key: Any
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0, trust_env=False))

    # -- keys ---------------------------------------------------------------------------
    @property
    def master(self) -> bytes:
        return load_master_key(self.sts.config.master_key_file)

    @property
    def approval_key(self) -> bytes:
        return derive_key(self.master, "approvals")

    @property
    def link_key(self) -> bytes:
        return derive_key(self.master, "approval-links")

    def now(self) -> int:
        return int(self.sts.clock.now())

    # -- approvers' ID tokens -------------------------------------------------------------
    def id_token(self, principal: str, *, groups: Sequence[str] = (), key: Any = None, **overrides: Any) -> str:
        """An OIDC ID token for ``principal`` (``user:<email>``) from the approvers' provider."""
        now = self.now()
        claims: dict[str, Any] = {
            "iss": self.tenant.issuer,
            "sub": "sub-" + principal.removeprefix("user:"),
            "aud": APPROVALS_AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "email": principal.removeprefix("user:"),
            "groups": list(groups),
        }
        claims.update(overrides)
        signer = key or self.key
        return sign_jwt({"alg": "ES256", "kid": signer.kid, "typ": "JWT"}, claims, signer)

    # -- HTTP ------------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        return self.http.request(method, self.sts.url + path, headers=headers, **kwargs)

    def as_(self, principal: str, method: str, path: str, *, groups: Sequence[str] = (), **kwargs: Any) -> httpx.Response:
        return self.api(method, path, self.id_token(principal, groups=groups), **kwargs)

    def approve(self, principal: str, approval_id: str, *, groups: Sequence[str] = (), **body: Any) -> httpx.Response:
        return self.as_(principal, "POST", f"/approvals/{approval_id}/approve", groups=groups, json=body)

    def deny(self, principal: str, approval_id: str, *, groups: Sequence[str] = (), **body: Any) -> httpx.Response:
        return self.as_(principal, "POST", f"/approvals/{approval_id}/deny", groups=groups, json=body)

    def status(self, approval_id: str) -> str:
        stored = self.stored(approval_id)
        assert stored is not None
        return stored.effective_status(self.now()).value

    # -- the store ---------------------------------------------------------------------------
    def stored(self, approval_id: str) -> Approval | None:
        return run(lambda store: store.get_approval(approval_id), self.sts.config)

    def task(
        self, *, agent: str = AGENT, on_behalf_of: str | None = None, created_by: str = ADMIN, purpose: str = "pay invoices"
    ) -> Task:
        """A task written straight into the store (its creator may be a human)."""
        request = TaskRequest(agent=agent, audiences=[AUD], scopes=["pay:write", "pay:read"], purpose=purpose,
                              on_behalf_of=on_behalf_of)  # fmt: skip
        task = build_task(request, task_id="tsk_" + secrets.token_urlsafe(16), issuer=self.sts.url,
                          limits=self.sts.sts.settings.task_limits, now=self.now(), created_by=created_by)  # fmt: skip
        event = AuditEvent(kind="task.created", outcome="ok", principal=created_by, task=task.id)
        run(lambda store: store.create_task(task, event), self.sts.config)
        return task

    def build(
        self,
        task: Task,
        *,
        groups: Sequence[str] = ("finance",),
        client: str | None = None,
        sub: str | None = None,
        actors: Sequence[str] = (),
        tool: str | None = "transfer",
        arguments: Mapping[str, Any] | None = None,
        created_at: int | None = None,
        ttl: int = 300,
        creator_may_approve: bool = False,
    ) -> Approval:
        """An approval as the token endpoint builds it (binding, redacted view, request MAC)."""
        args = dict(arguments if arguments is not None else {"amount": 120, "to": "ACME", "password": "hunter2"})
        call = parse_tool_call({"name": tool, "arguments": args}) if tool is not None else None
        binding = ApprovalBinding(
            task=task.id,
            agent=task.agent,
            client=client or task.agent,
            sub=sub or task.on_behalf_of or task.agent,
            aud=AUD,
            scope=frozenset({"pay:write"}),
            actors=tuple(actors),
            kind="hop",
            jkt="jkt-" + secrets.token_urlsafe(8),
            x5t=None,
            tctx=tool_call_context(tool, args) if tool is not None else None,
        )
        view = approval_view(binding, task=task, call=call, fields=self.sts.sts.settings.approvals.redact)
        start = created_at if created_at is not None else self.now()
        approval = Approval(
            id="apr_" + secrets.token_urlsafe(16),
            task=task.id,
            digest=binding.digest(),
            request=binding.canonical(),
            view=view,
            groups=tuple(sorted(groups)),
            policies=("hold-payments",),
            created_at=start,
            expires_at=start + ttl,
            request_mac="",
            creator_may_approve=creator_may_approve,
        )
        return replace(approval, request_mac=request_mac(self.approval_key, approval))

    def hold(self, task: Task, approval: Approval | None = None, **build: Any) -> Approval:
        """Write a held request into the store (``approval.requested``), as the token endpoint does."""
        approval = approval or self.build(task, **build)
        event = AuditEvent(kind="approval.requested", outcome="ok", principal=task.agent, task=task.id,
                           detail={"approval": approval.id, "groups": list(approval.groups)})  # fmt: skip
        now = self.now()
        return run(lambda store: store.hold_approval(approval, now=now, max_pending=16, audit=event), self.sts.config)

    # -- links -----------------------------------------------------------------------------------
    def link(self, approval_id: str, approver: str, decision: str, *, exp: int | None = None, key: bytes | None = None) -> str:
        """A one-time link path as the webhook mints it (``/approvals/link/<token>``)."""
        link = Link(approval_id, approver, decision, exp if exp is not None else self.now() + 600, secrets.token_urlsafe(16))
        return "/approvals/link/" + sign_link(key or self.link_key, link)

    def close(self) -> None:
        self.http.close()


@contextlib.contextmanager
def approvals_env(
    directory: Path,
    *,
    webhook_url: str = "",
    extra_toml: str = "",
    policies: str = "",
    settings: Mapping[str, str | int] | None = None,
) -> Iterator[ApprovalsEnv]:
    """A provider with one tenant (the approvers' issuer) and an STS trusting it for approvers;
    ``policies`` is written into the policy directory before the STS starts, ``settings`` into ``[approvals]``."""
    provider = Provider().start()
    try:
        tenant = Tenant(provider)
        key = ec_key("approvers-1")
        tenant.publish(key)
        config = make_deployment(directory, extra_toml=GROUPS_TOML + "\n" + QUIET_MONITOR + "\n" + extra_toml)
        assert config.path is not None
        set_approvals(config.path, {**approvals_settings(tenant.issuer, webhook_url=webhook_url), **(settings or {})})
        if policies:
            (config.policy_dir / "50-approvals.cedar").write_text(policies, encoding="utf-8")
        with serving(load_config(config.path), ManualClock()) as sts:
            env = ApprovalsEnv(sts=sts, provider=provider, tenant=tenant, key=key)
            try:
                yield env
            finally:
                env.close()
    finally:
        provider.stop()


class Receiver:
    """A loopback webhook receiver: records every JSON body POSTed to it."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        self._arrived = threading.Condition()
        self.thread = ServerThread(Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]), self.port)

    async def _hook(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._arrived:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return Response(status_code=503)
            self.bodies.append(body)
            self._arrived.notify_all()
        return Response(status_code=204)

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.bodies) >= count, timeout), f"{self.attempts} attempts"
            return list(self.bodies)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()
