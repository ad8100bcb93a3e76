"""Fixtures for the resource-SDK tests: one STS and four protected apps per module.

``a``  the main service (STS JWKS, a ManualClock the tests move), audience ``A``;
``b``  a second service, audience ``B`` (for wrong-audience tests);
``n``  a service with server nonces (``ResourceSettings(nonce=True)``);
``o``  a service that trusts a test-owned signing key (``StaticKeySource``), so the
       tests can sign access tokens with exactly the claims and headers they need.

Two logical audiences without servers, ``X`` (service B's identity may act for it) and
``Y`` (service C's), let the tests build ``act`` chains at the real STS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from rskit import OWN_KID, Env, Served, X, Y, serve

from helpers import QUIET_MONITOR, SVC_B, SVC_C, free_port, running_sts
from tether.clock import ManualClock
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.resource import ResourceSettings, Verifier


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ports = {name: free_port() for name in "abno"}
    resources = (
        f"""
[[resources]]
uri = "{X}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{Y}"
principals = ["{SVC_C}"]
"""
        + QUIET_MONITOR
    )
    own_key = ECKey.generate_key("P-256", parameters={"kid": OWN_KID}, private=True)
    own_public = ECKey.import_key(own_key.as_dict(private=False))
    clock = ManualClock()
    with running_sts(tmp_path_factory.mktemp("rs"), extra_toml=resources) as sts, contextlib.ExitStack() as stack:

        def url(name: str) -> str:
            return f"http://127.0.0.1:{ports[name]}"

        identity = sts.identity(SVC_B)  # registered for X: it may follow the revocation feed

        def service(name: str, **fields: Any) -> Served:
            settings = ResourceSettings(issuer=sts.url, resource=url(name), nonce=name == "n")
            return stack.enter_context(serve(Verifier(settings, identity=identity, **fields), ports[name]))

        a = service("a", clock=clock)
        b, n = service("b"), service("n")
        o = service("o", keys=StaticKeySource(KeySet([own_public])))
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=10.0))
        yield Env(sts=sts, a=a, b=b, n=n, o=o, clock=clock, own_key=own_key, http=http)
