"""One STS and two protected MCP servers per module for the ``tether.mcp.protect`` tests.

``sse``   the MCP SDK's default transport (sessions, GET stream, SSE answers), the ``tool:<name>``
          scope convention on, Cedar policies from ``mcpkit.POLICY``;
``json``  stateless with JSON answers, the scope convention off (Cedar alone), same policies.

Each server's URL is its ``/mcp`` endpoint and the audience of its tokens (MCP-02).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcpkit import POLICY, McpEnv, serve

from helpers import FEED_SUBSCRIBER, QUIET_MONITOR, SVC_RS, free_port, running_sts
from tether.provision import install_starter_policies
from tether.resource import ResourceSettings, Verifier


def _synced(verifier: Verifier, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (verifier.feed is not None and verifier.feed.fresh(time.time())):
        if time.monotonic() > deadline:
            raise AssertionError("revocation feed did not sync")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def menv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpEnv]:
    ports = {"sse": free_port(), "json": free_port()}
    base = tmp_path_factory.mktemp("mcp")
    policies = Path(base / "policies")
    install_starter_policies(policies)
    (policies / "50-mcp.cedar").write_text(POLICY, encoding="utf-8")
    with running_sts(base / "sts", extra_toml=FEED_SUBSCRIBER + QUIET_MONITOR) as sts, contextlib.ExitStack() as stack:
        identity = sts.identity(SVC_RS)

        def verifier(name: str) -> Verifier:
            url = f"http://127.0.0.1:{ports[name]}/mcp"
            return Verifier(ResourceSettings(issuer=sts.url, resource=url, policy_dir=str(policies)), identity=identity)

        sse = stack.enter_context(serve(verifier("sse"), ports["sse"]))
        json_ = stack.enter_context(
            serve(verifier("json"), ports["json"], scope_prefix=None, stateless_http=True, json_response=True)
        )
        for served in (sse, json_):
            _synced(served.verifier)
        yield McpEnv(sts=sts, sse=sse, json=json_)
