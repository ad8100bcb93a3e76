"""Two trust domains on loopback: deployments made by ``tether init --trust-domain``, an STS per domain.

Everything is real: each deployment has its own master key, signing key, dev trust domain and
SQLite store; an STS is uvicorn on loopback (a thread here, a ``tether serve`` process in the
end-to-end tests); B's follower reads A's feed over HTTP as B's ``feed_principal``, with a
JWT-SVID minted by B's dev trust domain that A verifies against B's bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from helpers import ACCESS, JWT, TOKEN_EXCHANGE, Client, RunningSts, ServerThread, free_port
from tether.audit.chain import AuditEvent
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.model import Task
from tether.provision import initialize
from tether.store.protocol import Store
from tether.store.records import FederationLink
from tether.sts.bootstrap import build_sts

__all__ = [
    "ACCESS",
    "JWT",
    "TOKEN_EXCHANGE",
    "Domain",
    "DomainSts",
    "admin_api",
    "eventually",
    "federation_toml",
    "link_task",
    "make_domain",
    "serve_domain",
]


@dataclass(frozen=True)
class Domain:
    """A deployment directory made by ``tether init --trust-domain NAME`` (not yet configured further)."""

    name: str
    directory: Path
    port: int

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "tether.toml"

    @property
    def bundle_file(self) -> Path:
        return DevTrustDomain.bundle_path(self.directory / ".tether", self.name)

    def principal(self, path: str) -> str:
        return f"spiffe://{self.name}/{path}"

    def append(self, toml: str) -> None:
        with self.config_path.open("a", encoding="utf-8") as handle:
            handle.write("\n" + toml + "\n")

    def config(self) -> Config:
        return load_config(self.config_path)


def make_domain(directory: Path, name: str, *, port: int | None = None) -> Domain:
    """``tether init --dir DIRECTORY --trust-domain NAME --issuer http://127.0.0.1:PORT``, every refusal audited."""
    domain = Domain(name, directory, port or free_port())
    initialize(directory, issuer=domain.issuer, trust_domain=name)
    domain.append("[audit]\nrefusal_interval = 0")
    return domain


def federation_toml(
    peer: Domain,
    *,
    local: Domain,
    stale_after: int = 2,
    agents: str = "agent/*",
    audiences: tuple[str, ...] = (),
    scopes: tuple[str, ...] = ("wiki:read",),
    extra: str = "",
) -> str:
    """``local`` trusts ``peer`` (``[[federation]]`` named by the peer's first label), following its
    feed as ``spiffe://<local>/feed``."""
    return (
        f'[[federation]]\nname = "{peer.name.split(".")[0]}"\nissuer = "{peer.issuer}"\njwks_uri = "{peer.issuer}/jwks"\n'
        f'agents = ["{peer.principal(agents)}"]\naudiences = {list(audiences or (local.issuer,))!r}\n'
        f"scopes = {list(scopes)!r}\n"
        f'feed_principal = "{local.principal("feed")}"\nstale_after = {stale_after}\n{extra}'
    ).replace("'", '"')


class DomainSts(RunningSts):
    """A running STS of a trust domain other than ``tether.local``."""

    def dev(self) -> DevTrustDomain:
        return DevTrustDomain.load(self.config.data_dir, self.config.dev.trust_domain,
                                   load_master_key(self.config.master_key_file))  # fmt: skip

    def admin(self) -> str:
        return f"spiffe://{self.config.dev.trust_domain}/admin"


@contextlib.contextmanager
def serve_domain(domain: Domain) -> Iterator[DomainSts]:
    """Its STS in a thread (a second ``serve_domain`` of the same domain is a restart)."""
    config = domain.config()
    clock = ManualClock()
    sts = build_sts(config, clock=clock)
    thread = ServerThread(sts.app, domain.port).start()
    running = DomainSts(config=config, clock=clock, sts=sts, thread=thread)
    try:
        yield running
    finally:
        for http in running.clients:
            http.close()
        thread.stop()


def admin_api(sts: DomainSts, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Call the STS API as the domain's admin (a fresh admin token each time)."""
    client = Client(sts)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(sts.admin()), "subject_token_type": JWT}
    response = client.post_token(form)
    assert response.status_code == 200, response.text
    return client.api(method, path, response.json()["access_token"], **kwargs)


async def link_task(store: Store, *, peer: str, foreign_task: str, foreign_jti: str, agent: str) -> str:
    """A linked task as the exchange opens one (``Store.link_task``), for the follower tests."""
    now = int(time.time())
    task = Task(id="tsk_" + secrets.token_hex(8), agent=agent, audiences=("https://tools.example",),
                scopes=frozenset({"wiki:read"}), created_at=now, expires_at=now + 600, max_depth=2, max_tokens=10,
                created_by=f"federation:{peer}")  # fmt: skip
    link = FederationLink(peer=peer, foreign_task=foreign_task, foreign_jti=foreign_jti, task_id=task.id, created_at=now)
    linked = await store.link_task(task, link, now=now, audit=AuditEvent(kind="federation.linked", outcome="ok"))
    return linked.id


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
