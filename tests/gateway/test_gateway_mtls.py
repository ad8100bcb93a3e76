"""Certificate-bound tokens at the gateway over real TLS on loopback (RFC 8705 §3, RFC 9440).

One deployment (STS, vault, a recording legacy upstream), two gateways on it: ``tls``
serves HTTPS and asks for a client certificate (``ServerThread(tls=...)``, no trusted
proxies: the default), ``proxied`` is plain HTTP behind a terminator at 127.0.0.1
(``[tls] trusted_proxies``), played by the test client. The hop token is the STS's own for
a real task (so the gate admits it), re-signed by the STS key with ``cnf.x5t#S256`` in
place of ``cnf.jkt``: exactly the token a certificate-bound hop exchange issues. Whatever
the agent sends, the upstream never receives a ``Client-Cert`` header (it is the agent's
credential, checked here, as its ``Authorization`` is).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_mcpkit import MODERN, STDIO, mcp_route_toml, pin_routes
from gwkit import SECRET_NAME, Upstream, put_secret_sync, route_toml, serve_upstream, wait_until

from helpers import AGENT, QUIET_MONITOR, RunningSts, create_task, running_sts
from tether.agent import Agent, DevIdentity
from tether.gateway.app import Gateway, build_gateway
from tether.identity.dev_x509 import DevCA, Issued
from tether.rules.certificate import client_cert_header, thumbprint
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.web.server import ServerThread, free_port
from tether.web.tls import TlsFiles

CERT_HEADERS = ("client-cert", "client-cert-chain")


def sf(issued: Issued) -> str:
    """RFC 9440 §2.2 structured-field byte sequence of a DER certificate."""
    return client_cert_header(issued.der)


@dataclass
class MtlsGateway:
    sts: RunningSts
    upstream: Upstream
    root: Path
    agent: Issued
    other: Issued
    tls_url: str
    proxied_url: str
    audience: str

    def context(self, issued: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
        if issued is not None:
            cert, key = issued.write(self.root, f"client-{thumbprint(issued.der)[:10]}")
            context.load_cert_chain(cert, key)
        return context

    def client(self, issued: Issued | None) -> httpx.Client:
        return httpx.Client(verify=self.context(issued), trust_env=False, timeout=10.0)

    def bound_token(self, agent: Agent | None = None, *, audience: str | None = None) -> str:
        """The STS's hop token for a fresh task, bound to the agent's certificate (and, when
        ``agent`` is given, also to that agent's DPoP key, which the STS bound it to)."""
        audience = audience or self.audience
        task = create_task(self.sts, audiences=[audience], scopes=["wiki:read"])
        keep_jkt = agent is not None
        session = (agent or Agent(self.sts.url, DevIdentity(self.sts.dev(), AGENT))).session(task["id"])
        with httpx.Client(trust_env=False, timeout=10.0) as plain:
            issued = session.token_for(audience, plain)
        claims: dict[str, Any] = strict_json_loads(b64url_decode(issued.split(".")[1]))
        jkt = claims["cnf"]["jkt"]
        claims["cnf"] = {"x5t#S256": thumbprint(self.agent.der), **({"jkt": jkt} if keep_jkt else {})}
        return self.sts.sts.ctx.keyring.sign(claims)

    def upstream_saw_no_certificate(self, before: int) -> None:
        seen = self.upstream.log[before:]
        assert seen, "the call did not reach the upstream"
        for record in seen:
            assert not set(record["headers"]) & set(CERT_HEADERS), record["headers"]
            assert "authorization" not in record["headers"], record["headers"]


def _serve(app: Gateway, port: int, tls: TlsFiles | None) -> ServerThread:
    thread = ServerThread(app.app, port, tls=tls).start()
    wait_until(lambda: app.feed.fresh(app.clock.now()), timeout=10, what="gateway revocation feed")
    return thread


@pytest.fixture(scope="module")
def mgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsGateway]:
    root = tmp_path_factory.mktemp("gw-mtls")
    ca = DevCA.create("example.org")
    (root / "ca.pem").write_bytes(ca.bundle_pem)
    cert, key = ca.issue_server(["127.0.0.1"]).write(root, "server")
    files = TlsFiles(cert, key, (root / "ca.pem",))
    port, proxied_port = free_port(), free_port()
    upstream = Upstream()
    with serve_upstream(upstream) as up, contextlib.ExitStack() as stack:
        route = route_toml("apikey", f"{up.url}/apikey", inject="header", header="X-Api-Key", template="{secret}",
                           max_requests_per_second=1000, max_requests_per_task=1000)  # fmt: skip
        gateway = f'[gateway]\nurl = "https://127.0.0.1:{port}"\nport = {port}\nsuspend_after_refusals = 1000\n'
        mcp = mcp_route_toml("files", command=STDIO, tools=["list_directory", "read_file"], scope_prefix="")
        sts = stack.enter_context(running_sts(root / "sts", extra_toml=gateway + route + mcp + QUIET_MONITOR))
        put_secret_sync(sts.config, SECRET_NAME, upstream.key)
        pin_routes(sts.config, "files", env={})
        stack.callback(_serve(build_gateway(sts.config, clock=sts.clock), port, files).stop)
        # the same deployment behind a TLS terminator at 127.0.0.1 (its RFC 9440 header is believed)
        behind = dataclasses.replace(sts.config, tls=dataclasses.replace(sts.config.tls, trusted_proxies=("127.0.0.1/32",)))
        stack.callback(_serve(build_gateway(behind, clock=sts.clock), proxied_port, None).stop)
        yield MtlsGateway(
            sts=sts,
            upstream=upstream,
            root=root,
            agent=ca.issue_svid("spiffe://example.org/agent"),
            other=ca.issue_svid("spiffe://example.org/other"),
            tls_url=f"https://127.0.0.1:{port}",
            proxied_url=f"http://127.0.0.1:{proxied_port}",
            audience=f"https://127.0.0.1:{port}/routes/apikey",
        )


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token", response.text
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"'), response.headers


def test_MTLS_01_certificate_bound_token_accepted_over_mtls_and_no_client_cert_goes_upstream(mgw: MtlsGateway) -> None:
    token = mgw.bound_token()
    before = len(mgw.upstream.log)
    # the agent also sends Client-Cert headers of its own: they are neither believed nor forwarded
    forged = {"Client-Cert": sf(mgw.other), "Client-Cert-Chain": sf(mgw.other)}
    with mgw.client(mgw.agent) as agent:
        response = agent.get(mgw.tls_url + "/routes/apikey/v1/items", headers=bearer(token, **forged))
        again = agent.get(mgw.tls_url + "/routes/apikey/v1/items", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert again.status_code == 200, again.text
    mgw.upstream_saw_no_certificate(before)


def test_MTLS_01_MTLS_03_refused_with_another_certificate_without_one_and_with_a_spoofed_header(mgw: MtlsGateway) -> None:
    token = mgw.bound_token()
    url = mgw.tls_url + "/routes/apikey/v1/items"
    spoofed = {"Client-Cert": sf(mgw.agent)}  # the right certificate, claimed by an untrusted peer
    before = len(mgw.upstream.log)
    with mgw.client(mgw.other) as other, mgw.client(None) as anonymous:
        assert_refused(other.get(url, headers=bearer(token)))
        assert_refused(anonymous.get(url, headers=bearer(token)))
        assert_refused(anonymous.get(url, headers=bearer(token, **spoofed)))
        assert_refused(other.get(url, headers=bearer(token, **spoofed)))
    assert len(mgw.upstream.log) == before, "a refused call reached the upstream"
    with mgw.client(mgw.agent) as agent:  # control: the same token with its certificate
        assert agent.get(url, headers=bearer(token)).status_code == 200


def test_MTLS_03_proxy_mode_accepts_the_terminators_header_and_still_forwards_none(mgw: MtlsGateway) -> None:
    token = mgw.bound_token()
    url = mgw.proxied_url + "/routes/apikey/v1/items"
    before = len(mgw.upstream.log)
    with httpx.Client(trust_env=False, timeout=10.0) as proxy:  # from 127.0.0.1, the listed terminator
        assert_refused(proxy.get(url, headers=bearer(token)))  # plain HTTP, no certificate forwarded
        assert_refused(proxy.get(url, headers=bearer(token, **{"Client-Cert": sf(mgw.other)})))
        assert len(mgw.upstream.log) == before
        accepted = proxy.get(url, headers=bearer(token, **{"Client-Cert": sf(mgw.agent), "Client-Cert-Chain": sf(mgw.other)}))
        assert accepted.status_code == 200, accepted.text
        malformed = proxy.get(url, headers=bearer(token, **{"Client-Cert": "garbage"}))
        assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"
    mgw.upstream_saw_no_certificate(before)


def test_MTLS_04_a_token_bound_to_key_and_certificate_needs_both_at_the_gateway(mgw: MtlsGateway) -> None:
    agent = Agent(mgw.sts.url, DevIdentity(mgw.sts.dev(), AGENT))
    token = mgw.bound_token(agent)
    url = mgw.tls_url + "/routes/apikey/v1/items"

    def dpop(client: httpx.Client) -> httpx.Response:
        proof = agent.key.proof("GET", url, access_token=token)
        return client.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    with mgw.client(mgw.agent) as right, mgw.client(mgw.other) as wrong:
        refused = dpop(wrong)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
        assert refused.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
        assert_refused(right.get(url, headers=bearer(token)))  # the certificate alone is not enough
        assert dpop(right).status_code == 200


def test_MTLS_01_an_mcp_route_verifies_certificate_bound_tokens_the_same_way(mgw: MtlsGateway) -> None:
    url = mgw.tls_url + "/mcp/files"
    token = mgw.bound_token(audience=url)
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}  # fmt: skip
    metadata = mgw.tls_url + "/.well-known/oauth-protected-resource/mcp/files"
    with mgw.client(None) as anonymous, mgw.client(mgw.other) as other, mgw.client(mgw.agent) as agent:
        for refused in (anonymous.post(url, json=body, headers=bearer(token, **headers)),
                        other.post(url, json=body, headers=bearer(token, **headers))):  # fmt: skip
            assert_refused(refused)
            assert f'resource_metadata="{metadata}"' in refused.headers["www-authenticate"]
        listed = agent.post(url, json=body, headers=bearer(token, **headers))
        assert listed.status_code == 200, listed.text
        assert sorted(t["name"] for t in listed.json()["result"]["tools"]) == ["list_directory", "read_file"]
        document = agent.get(metadata).json()
    assert document["resource"] == url and document["tls_client_certificate_bound_access_tokens"] is True
