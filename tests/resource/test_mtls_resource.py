"""Certificate-bound tokens at a resource server over real TLS on loopback (RFC 8705 §3, RFC 9440).

Three copies of one protected app (``TetherMiddleware``) trust a test-owned signing key:
``tls`` serves HTTPS and asks for a client certificate (``ServerThread(tls=...)``, the
protocol hook hands the verified chain to the app); ``plain`` is plain HTTP with the
defaults (no trusted proxies); ``proxy`` is plain HTTP behind a "terminator" at 127.0.0.1,
listed in ``trusted_proxies``, so the test client plays the proxy by sending ``Client-Cert``.
Each refusal asserts status, error code and the ``Bearer`` challenge (RFC 6750 §3), and is
paired with a positive control on the same server and token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from rs_mtlskit import ISSUER, MtlsKit
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.proof import DPoPKey
from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of
from tether.rules.certificate import client_cert_header, thumbprint
from tether.web.server import ServerThread, free_port

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def _cert_headers(request: Request) -> list[str]:
    return sorted(name for name in request.headers if name.startswith("client-cert"))


async def _whoami(request: Request) -> Response:
    principal = principal_of(request)
    return JSONResponse({"x5t": principal.x5t, "jkt": principal.jkt, "headers": _cert_headers(request)})


async def _public(request: Request) -> Response:
    return JSONResponse({"headers": _cert_headers(request)})


@dataclass
class Rs:
    url: str
    verifier: Verifier


@dataclass
class World:
    kit: MtlsKit
    tls: Rs
    plain: Rs
    proxy: Rs

    def client(self, who: str | None = None) -> httpx.Client:
        issued = {"agent": self.kit.agent, "other": self.kit.other, None: None}[who]
        return httpx.Client(verify=self.kit.context(issued), trust_env=False, timeout=10.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    kit = MtlsKit.create(tmp_path_factory.mktemp("mtls-rs"))
    with contextlib.ExitStack() as stack:

        def serve(scheme: str, **fields: Any) -> Rs:
            port = free_port()
            url = f"{scheme}://127.0.0.1:{port}"
            settings = ResourceSettings(issuer=ISSUER, resource=url, revocation_feed=False, **fields)
            verifier = Verifier(settings, keys=kit.keys())
            routes = [Route("/whoami", _whoami), Route("/public", _public)]
            guard = Middleware(TetherMiddleware, verifier=verifier, public_paths=["/public"])
            app = Starlette(routes=routes, middleware=[guard])
            thread = ServerThread(app, port, tls=kit.files if scheme == "https" else None).start()
            stack.callback(thread.stop)
            return Rs(url, verifier)

        yield World(kit, serve("https"), serve("http"), serve("http", trusted_proxies=("127.0.0.1/32",)))


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def assert_refused(response: httpx.Response, error: str = "invalid_token") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer error="{error}"'), challenge


def test_MTLS_01_AUX_06_certificate_bound_token_accepted_over_mtls_with_its_certificate(world: World) -> None:
    token = world.kit.bound(world.tls.url)
    with world.client("agent") as agent:
        response = agent.get(world.tls.url + "/whoami", headers=bearer(token))
        again = agent.get(world.tls.url + "/whoami", headers=bearer(token))  # the cached verification
    assert response.status_code == 200, response.text
    assert response.json() == {"x5t": thumbprint(world.kit.agent.der), "jkt": None, "headers": []}
    assert again.status_code == 200, again.text


def test_MTLS_01_refused_with_another_certificate_even_once_cached(world: World) -> None:
    token = world.kit.bound(world.tls.url)
    with world.client("agent") as agent, world.client("other") as other:
        assert agent.get(world.tls.url + "/whoami", headers=bearer(token)).status_code == 200  # now cached
        assert_refused(other.get(world.tls.url + "/whoami", headers=bearer(token)))
        assert agent.get(world.tls.url + "/whoami", headers=bearer(token)).status_code == 200  # control


def test_MTLS_01_refused_over_tls_without_a_client_certificate(world: World) -> None:
    token = world.kit.bound(world.tls.url)
    with world.client(None) as anonymous, world.client("agent") as agent:
        assert_refused(anonymous.get(world.tls.url + "/whoami", headers=bearer(token)))
        assert agent.get(world.tls.url + "/whoami", headers=bearer(token)).status_code == 200  # control


def test_MTLS_01_refused_over_plain_http(world: World) -> None:
    token = world.kit.bound(world.plain.url)
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        assert_refused(http.get(world.plain.url + "/whoami", headers=bearer(token)))


def test_MTLS_03_spoofed_client_cert_from_an_untrusted_address_is_refused_and_stripped(world: World) -> None:
    """No trusted proxies by default: the header is a client's claim, ignored and removed before the app."""
    forged = {
        "Client-Cert": client_cert_header(world.kit.agent.der),
        "Client-Cert-Chain": client_cert_header(world.kit.other.der),
    }
    over_tls = world.kit.bound(world.tls.url)
    over_plain = world.kit.bound(world.plain.url)
    with world.client(None) as anonymous, world.client("other") as other, httpx.Client(trust_env=False) as http:
        assert_refused(anonymous.get(world.tls.url + "/whoami", headers=bearer(over_tls, **forged)))
        assert_refused(other.get(world.tls.url + "/whoami", headers=bearer(over_tls, **forged)))
        assert_refused(http.get(world.plain.url + "/whoami", headers=bearer(over_plain, **forged)))
        # the application never sees a forged header, on a public path either
        assert anonymous.get(world.tls.url + "/public", headers=forged).json() == {"headers": []}
        assert http.get(world.plain.url + "/public", headers=forged).json() == {"headers": []}
    with world.client("agent") as agent:  # control: the real certificate
        assert agent.get(world.tls.url + "/whoami", headers=bearer(over_tls, **forged)).json()["headers"] == []


def test_MTLS_03_proxy_mode_accepts_the_trusted_terminators_header(world: World) -> None:
    token = world.kit.bound(world.proxy.url)
    url = world.proxy.url + "/whoami"
    with httpx.Client(trust_env=False, timeout=10.0) as proxy:  # connects from 127.0.0.1: the listed terminator
        accepted = proxy.get(url, headers=bearer(token, **{"Client-Cert": client_cert_header(world.kit.agent.der)}))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["x5t"] == thumbprint(world.kit.agent.der)
        assert accepted.json()["headers"] == ["client-cert"]  # the terminator's header reaches the app
        assert_refused(proxy.get(url, headers=bearer(token, **{"Client-Cert": client_cert_header(world.kit.other.der)})))
        assert_refused(proxy.get(url, headers=bearer(token)))  # the terminator saw no certificate
        malformed = proxy.get(url, headers=bearer(token, **{"Client-Cert": "not-a-byte-sequence"}))
        assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"


def test_MTLS_04_a_token_bound_to_key_and_certificate_needs_both(world: World) -> None:
    key = DPoPKey()
    token = world.kit.token(world.tls.url, jkt=key.jkt, x5t=thumbprint(world.kit.agent.der))
    url = world.tls.url + "/whoami"

    def dpop(client: httpx.Client, proof_key: DPoPKey | None = key) -> httpx.Response:
        headers = {"Authorization": f"DPoP {token}"}
        if proof_key is not None:
            headers["DPoP"] = proof_key.proof("GET", url, access_token=token)
        return client.get(url, headers=headers)

    with world.client("agent") as agent, world.client("other") as other, world.client(None) as anonymous:
        both = dpop(agent)
        assert both.status_code == 200, both.text
        assert both.json()["jkt"] == key.jkt and both.json()["x5t"] == thumbprint(world.kit.agent.der)
        for refused in (dpop(other), dpop(anonymous), dpop(agent, DPoPKey())):
            assert refused.status_code == 401 and refused.json()["error"] == "invalid_token", refused.text
            assert refused.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
        assert dpop(agent, None).json()["error"] == "invalid_dpop_proof"
        assert_refused(agent.get(url, headers=bearer(token)))  # RFC 9449 §7.1: never as Bearer


def test_certificate_only_token_under_the_dpop_scheme_is_refused(world: World) -> None:
    token = world.kit.bound(world.tls.url)
    key = DPoPKey()
    url = world.tls.url + "/whoami"
    with world.client("agent") as agent:
        refused = agent.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url, access_token=token)})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
        assert refused.headers["www-authenticate"].startswith('DPoP error="invalid_token"')


def test_RFC9728_metadata_over_tls_advertises_certificate_bound_tokens(world: World) -> None:
    with world.client(None) as anonymous:
        doc = anonymous.get(world.tls.url + "/.well-known/oauth-protected-resource").json()
        missing = anonymous.get(world.tls.url + "/whoami")
    assert doc["resource"] == world.tls.url
    assert doc["tls_client_certificate_bound_access_tokens"] is True
    assert doc["dpop_bound_access_tokens_required"] is False
    assert missing.status_code == 401 and missing.headers["www-authenticate"].endswith(", Bearer")
