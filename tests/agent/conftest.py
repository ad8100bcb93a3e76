"""One STS and a small world of hosts per module for the agent-SDK tests.

``x``, ``y`` tether services (``x`` relays to ``y`` as service B, via ``Onward``);
``n``        a tether service with server nonces;
``plain``    a host that is not a tether service (no metadata) and records what it gets;
``impostor`` metadata that claims to be ``x`` (its ``resource`` is not its own origin);
``foreign``  metadata naming another authorization server.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentkit import AgentEnv, metadata_app, plain_app, protected_app, serve_app, wait_until

from helpers import QUIET_MONITOR, SVC_B, free_port, running_sts
from tether.agent import DevIdentity
from tether.resource import ResourceSettings, Verifier


def _synced(verifier: Verifier) -> bool:
    """The verifier has heard the revocation feed lately (it refuses every token until then)."""
    return verifier.feed is not None and verifier.feed.fresh(time.time())


@pytest.fixture(scope="module")
def aenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentEnv]:
    ports = {name: free_port() for name in ("x", "y", "n", "plain", "impostor", "foreign")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    resources = f'[[resources]]\nuri = "{url["x"]}"\nprincipals = ["{SVC_B}"]\n' + QUIET_MONITOR
    with running_sts(tmp_path_factory.mktemp("agent"), extra_toml=resources) as sts, contextlib.ExitStack() as stack:
        domain = sts.dev()
        logs: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
        rs = sts.identity(SVC_B)  # registered for x: it may follow the revocation feed
        verifiers = {
            "x": Verifier(ResourceSettings(issuer=sts.url, resource=url["x"]), identity=rs),
            "y": Verifier(ResourceSettings(issuer=sts.url, resource=url["y"]), identity=rs),
            "n": Verifier(ResourceSettings(issuer=sts.url, resource=url["n"], nonce=True), identity=rs),
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
            wait_until(functools.partial(_synced, verifier), timeout=10, what="feed sync")
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=10.0))
        yield AgentEnv(sts=sts, domain=domain, http=http, **served)
