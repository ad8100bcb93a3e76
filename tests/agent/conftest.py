"""One STS and a small world of hosts per module for the agent-SDK tests.

``x``, ``y`` tether services (``x`` relays to ``y`` as service B, via ``Onward``);
``n``        a tether service with server nonces;
``plain``    a host that is not a tether service (no metadata) and records what it gets;
``impostor`` metadata that claims to be ``x`` (its ``resource`` is not its own origin);
``foreign``  metadata naming another authorization server.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from agentkit import App, metadata_app, plain_app, protected_app, serve_app, wait_until

from helpers import AGENT, SVC_B, RunningSts, create_task, free_port, running_sts
from tether.agent import Agent, DevIdentity
from tether.identity.dev_issuer import DevTrustDomain
from tether.resource import ResourceSettings, Verifier


@dataclass
class AgentEnv:
    sts: RunningSts
    domain: DevTrustDomain
    x: App
    y: App
    n: App
    plain: App
    impostor: App
    foreign: App
    http: httpx.Client

    def task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"audiences": [self.x.url, self.y.url, self.n.url], "scopes": ["wiki:read", "wiki:write"]}
        body.update(fields)
        return create_task(self.sts, **body)

    def agent(self, spiffe_id: str = AGENT) -> Agent:
        return Agent(self.sts.url, DevIdentity(self.domain, spiffe_id))

    def hop_audits(self, task_id: str) -> list[dict[str, Any]]:
        return [
            dict(r.detail)
            for r in self.sts.audit()
            if r.kind == "token.issued" and r.task == task_id and r.detail.get("token_kind") == "hop"
        ]


@pytest.fixture(scope="module")
def aenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentEnv]:
    ports = {name: free_port() for name in ("x", "y", "n", "plain", "impostor", "foreign")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    resources = f'[[resources]]\nuri = "{url["x"]}"\nprincipals = ["{SVC_B}"]\n'
    with running_sts(tmp_path_factory.mktemp("agent"), extra_toml=resources) as sts, contextlib.ExitStack() as stack:
        domain = sts.dev()
        logs: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
        verifiers = {
            "x": Verifier(ResourceSettings(issuer=sts.url, resource=url["x"])),
            "y": Verifier(ResourceSettings(issuer=sts.url, resource=url["y"])),
            "n": Verifier(ResourceSettings(issuer=sts.url, resource=url["n"], nonce=True)),
        }
        apps = {
            "x": protected_app(verifiers["x"], logs["x"], onward=(sts.url, DevIdentity(domain, SVC_B), url["y"])),
            "y": protected_app(verifiers["y"], logs["y"]),
            "n": protected_app(verifiers["n"], logs["n"]),
            "plain": plain_app(logs["plain"]),
            "impostor": metadata_app(
                logs["impostor"], lambda origin: {"resource": url["x"], "authorization_servers": [sts.url]}
            ),
            "foreign": metadata_app(
                logs["foreign"], lambda origin: {"resource": origin, "authorization_servers": ["http://127.0.0.1:1"]}
            ),
        }
        served = {name: stack.enter_context(serve_app(app, ports[name], logs[name])) for name, app in apps.items()}
        for verifier in verifiers.values():
            wait_until(lambda v=verifier: v.feed is not None and v.feed.fresh(time.time()), timeout=10, what="feed sync")
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=10.0))
        yield AgentEnv(sts=sts, domain=domain, http=http, **served)
