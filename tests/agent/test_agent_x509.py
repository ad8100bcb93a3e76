"""The agent SDK's X.509 identity (RFC 8705): SVID files that rotate in place, transports that
present the current certificate over real TLS, and a task session over mutual TLS.

Everything is real: certificates from ``DevCA`` made here, TLS on loopback (``ServerThread``
with ``TlsFiles``), the STS served over HTTPS with client certificates, a tether-protected
resource over HTTPS. The task-session tests need the STS's ``client_credentials`` grant and the
resource SDK's certificate binding (RFC 8705 §2.1, §3)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentkit import claims_of, wait_until
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.types import TextContent
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from workload_api import WorkloadApi

from helpers import ADMIN, AGENT, free_port
from tether.agent import Agent, DevIdentity, ExchangeError, FileIdentity, FileX509Identity, X509Transport
from tether.agent.x509 import AsyncX509Transport, WorkloadApiX509Identity
from tether.client import StsClient
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.dev_x509 import DevCA, Issued
from tether.keys.sealed import load_master_key
from tether.provision import initialize, load_dev_ca, tls_paths
from tether.resource import ResourceSettings, TetherMiddleware, Verifier, principal_of
from tether.rules.certificate import thumbprint
from tether.sts.bootstrap import build_sts
from tether.web.server import ServerThread
from tether.web.tls import TlsFiles

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

OTHER = "spiffe://tether.local/agent/other"


def _write_svid(directory: Path, issued: Issued, ca: DevCA, *, key: bool = True, cert: bool = True) -> None:
    """The spiffe-helper layout (svid.pem, svid.key, bundle.pem), rewritten in place."""
    directory.mkdir(parents=True, exist_ok=True)
    if cert:
        (directory / "svid.pem").write_bytes(issued.cert_pem)
    if key:
        (directory / "svid.key").write_bytes(issued.key_pem)
    (directory / "bundle.pem").write_bytes(ca.bundle_pem)


def _identity(directory: Path) -> FileX509Identity:
    return FileX509Identity(directory / "svid.pem", directory / "svid.key", directory / "bundle.pem")


# -- FileX509Identity: files rotated in place ---------------------------------------------------


def test_file_identity_gives_the_spiffe_id_thumbprint_and_a_context_and_follows_rotation(tmp_path: Path) -> None:
    ca = DevCA.create("tether.local")
    first = ca.issue_svid(AGENT)
    _write_svid(tmp_path, first, ca)
    identity = _identity(tmp_path)
    credential = identity.current()
    assert credential.spiffe_id == AGENT
    assert credential.thumbprint == thumbprint(first.der)
    assert isinstance(credential.ssl_context, ssl.SSLContext)
    assert identity.current() is credential  # unchanged files are not re-read

    second = ca.issue_svid(AGENT)
    _write_svid(tmp_path, second, ca)
    assert identity.current().thumbprint == thumbprint(second.der)

    # caught mid-rotation (new certificate, old key): the previous credential stays until the key follows
    third = ca.issue_svid(AGENT)
    _write_svid(tmp_path, third, ca, key=False)
    assert identity.current().thumbprint == thumbprint(second.der)
    _write_svid(tmp_path, third, ca, cert=False)
    assert identity.current().thumbprint == thumbprint(third.der)


def test_file_identity_with_a_key_that_is_not_the_certificates_or_no_spiffe_id_refuses(tmp_path: Path) -> None:
    ca = DevCA.create("tether.local")
    _write_svid(tmp_path / "a", ca.issue_svid(AGENT), ca)
    _write_svid(tmp_path / "a", ca.issue_svid(AGENT), ca, cert=False)  # the key of another SVID
    with pytest.raises(ValueError, match=r"no usable X\.509-SVID"):
        _identity(tmp_path / "a").current()
    server = ca.issue_server(["127.0.0.1"])  # a certificate without a spiffe:// URI SAN
    _write_svid(tmp_path / "b", server, ca)
    with pytest.raises(ValueError):
        _identity(tmp_path / "b").current()
    with pytest.raises(OSError):
        _identity(tmp_path / "missing").current()


# -- X509Transport: the certificate presented on the wire ---------------------------------------


async def _echo(request: Request) -> Response:
    """The thumbprint of the client certificate the TLS handshake verified (ASGI TLS extension)."""
    chain = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return JSONResponse({"x5t": thumbprint(ssl.PEM_cert_to_DER_cert(chain[0])) if chain else None})


@dataclass
class TlsWorld:
    ca: DevCA
    directory: Path
    url: str


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsWorld]:
    directory = tmp_path_factory.mktemp("echo")
    ca = DevCA.create("tether.local")
    cert, key = ca.issue_server(["127.0.0.1"]).write(directory, "server")
    bundle = directory / "ca.pem"
    bundle.write_bytes(ca.bundle_pem)
    port = free_port()
    app = Starlette(routes=[Route("/echo", _echo)])
    thread = ServerThread(app, port, tls=TlsFiles(cert, key, (bundle,))).start()
    try:
        yield TlsWorld(ca, directory, f"https://127.0.0.1:{port}")
    finally:
        thread.stop()


def test_x509_transport_presents_the_current_certificate_and_a_new_one_after_rotation(echo: TlsWorld, tmp_path: Path) -> None:
    first, second = echo.ca.issue_svid(AGENT), echo.ca.issue_svid(AGENT)
    _write_svid(tmp_path, first, echo.ca)
    with httpx.Client(transport=X509Transport(_identity(tmp_path)), trust_env=False) as http:
        assert http.get(echo.url + "/echo").json()["x5t"] == thumbprint(first.der)
        assert http.get(echo.url + "/echo").json()["x5t"] == thumbprint(first.der)  # kept-alive connection
        _write_svid(tmp_path, second, echo.ca)
        # a kept-alive connection would still carry the first certificate: a new pool carries the new one
        assert http.get(echo.url + "/echo").json()["x5t"] == thumbprint(second.der)


def test_async_x509_transport_follows_rotation_too(echo: TlsWorld, tmp_path: Path) -> None:
    first, second = echo.ca.issue_svid(AGENT), echo.ca.issue_svid(AGENT)
    _write_svid(tmp_path, first, echo.ca)

    async def run() -> list[str]:
        seen = []
        async with httpx.AsyncClient(transport=AsyncX509Transport(_identity(tmp_path)), trust_env=False) as http:
            seen.append((await http.get(echo.url + "/echo")).json()["x5t"])
            _write_svid(tmp_path, second, echo.ca)
            seen.append((await http.get(echo.url + "/echo")).json()["x5t"])
        return seen

    assert asyncio.run(run()) == [thumbprint(first.der), thumbprint(second.der)]


def test_x509_transport_refuses_a_server_outside_the_bundle(echo: TlsWorld, tmp_path: Path) -> None:
    """The context trusts the SVID's bundle only: a server certificate from another CA fails the handshake."""
    stranger = DevCA.create("tether.local")
    _write_svid(tmp_path, stranger.issue_svid(AGENT), stranger)
    with (
        httpx.Client(transport=X509Transport(_identity(tmp_path)), trust_env=False) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get(echo.url + "/echo")


# -- a task session over mutual TLS (needs the STS's client_credentials grant) -----------------


@dataclass
class MtlsWorld:
    config: Config
    ca: DevCA
    sts_url: str
    resource: str
    trust: ssl.SSLContext
    svids: Path
    mcp_url: str

    def admin(self) -> StsClient:
        domain = DevTrustDomain.load(self.config.data_dir, "tether.local", load_master_key(self.config.master_key_file))
        return StsClient(self.sts_url, DevIdentity(domain, ADMIN), http=httpx.Client(verify=self.trust, trust_env=False))

    def task(self, agent: str = AGENT) -> str:
        with self.admin() as admin:
            task = admin.create_task(agent=agent, audiences=[self.resource, self.mcp_url], scopes=["wiki:read"])
        return str(task["id"])

    def svid(self, name: str, spiffe_id: str = AGENT) -> Path:
        directory = self.svids / name
        _write_svid(directory, self.ca.issue_svid(spiffe_id), self.ca)
        return directory


def _tools() -> MCPServer:
    server = MCPServer("tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return server


async def _whoami(request: Request) -> Response:
    principal = principal_of(request)
    return JSONResponse({"agent": principal.agent, "x5t": principal.x5t, "jkt": principal.jkt, "task": principal.task})


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsWorld]:
    """``tether init --tls``'s deployment, its STS over HTTPS asking for client certificates, and a
    tether-protected resource over HTTPS with the same dev CA."""
    directory = tmp_path_factory.mktemp("mtls")
    port, rport, mport = free_port(), free_port(), free_port()
    result = initialize(directory, issuer=f"https://127.0.0.1:{port}", tls=True)
    with result.config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n[audit]\nrefusal_interval = 0\n")
    config = load_config(result.config_path)
    ca = load_dev_ca(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    cert, key = tls_paths(config.data_dir)
    bundle = config.data_dir / "bundles" / "tether.local.x509.pem"
    files = TlsFiles(cert, key, (bundle,))
    trust = ssl.create_default_context(cafile=str(bundle))
    sts = build_sts(config, clock=ManualClock())
    resource = f"https://127.0.0.1:{rport}"
    verifier = Verifier(
        ResourceSettings(issuer=config.issuer, resource=resource, revocation_feed=False),
        verify=trust,
    )
    app = Starlette(routes=[Route("/whoami", _whoami)], middleware=[Middleware(TetherMiddleware, verifier=verifier)])
    mcp_url = f"https://127.0.0.1:{mport}/mcp"
    mcp_verifier = Verifier(
        ResourceSettings(issuer=config.issuer, resource=mcp_url, revocation_feed=False),
        verify=trust,
    )
    mcp_app = TetherMiddleware(_tools().streamable_http_app(streamable_http_path="/mcp"), mcp_verifier)
    with contextlib.ExitStack() as stack:
        sts_thread = ServerThread(sts.app, port, tls=files).start()
        stack.callback(sts_thread.stop)
        rs_thread = ServerThread(app, rport, tls=files).start()
        stack.callback(rs_thread.stop)
        mcp_thread = ServerThread(mcp_app, mport, tls=files).start()
        stack.callback(mcp_thread.stop)
        yield MtlsWorld(config, ca, config.issuer, resource, trust, directory / "svids", mcp_url)


def _session(world: MtlsWorld, svid: Path, task: str) -> Any:
    return Agent(world.sts_url, x509=_identity(svid)).session(task)


def test_mtls_session_by_client_credentials_then_hop_and_bearer_call_aux_06(mtls: MtlsWorld) -> None:
    svid = mtls.svid("one")
    x5t = _identity(svid).current().thumbprint
    session = _session(mtls, svid, mtls.task())
    with session.client(audiences={mtls.resource: mtls.resource}) as http:
        response = http.get(mtls.resource + "/whoami")
        assert response.status_code == 200, response.text
        assert response.json() == {"agent": AGENT, "x5t": x5t, "jkt": None, "task": session.task_id}
        hop = session.token_for(mtls.resource)
    claims = claims_of(hop)
    assert claims["cnf"] == {"x5t#S256": x5t}  # certificate-bound only: no DPoP key was offered
    assert session.exchanges == 2  # one client_credentials session exchange, one hop exchange
    # the hop token without the certificate: refused, never honoured as a plain bearer token (MTLS-01)
    with httpx.Client(verify=mtls.trust, trust_env=False) as bare:
        refused = bare.get(mtls.resource + "/whoami", headers={"Authorization": f"Bearer {hop}"})
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers.get("www-authenticate", "")


def test_mtls_session_exchanges_again_after_the_svid_rotates(mtls: MtlsWorld) -> None:
    svid = mtls.svid("rotating")
    identity = _identity(svid)
    session = Agent(mtls.sts_url, x509=identity).session(mtls.task())
    with session.client(audiences={mtls.resource: mtls.resource}) as http:
        assert http.get(mtls.resource + "/whoami").status_code == 200
        old_hop = session.token_for(mtls.resource)
        old = identity.current().thumbprint
        _write_svid(svid, mtls.ca.issue_svid(AGENT), mtls.ca)  # spiffe-helper rewrites the files
        new = identity.current().thumbprint
        assert new != old
        response = http.get(mtls.resource + "/whoami")
        assert response.status_code == 200, response.text
        assert response.json()["x5t"] == new
        assert session.exchanges == 4  # a new session by client_credentials and a new hop, both bound to the new cert
        assert claims_of(session.token_for(mtls.resource))["cnf"] == {"x5t#S256": new}
        # the token bound to the old certificate does not work with the new one
        refused = http.get(mtls.resource + "/whoami", headers={"Authorization": f"Bearer {old_hop}"}, auth=None)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers.get("www-authenticate", "")


def test_client_credentials_without_a_certificate_or_for_another_id_is_invalid_client_mtls_02(mtls: MtlsWorld) -> None:
    task = mtls.task()
    form = {"grant_type": "client_credentials", "client_id": AGENT, "task": task}
    with httpx.Client(verify=mtls.trust, trust_env=False) as bare:
        response = bare.post(mtls.sts_url + "/token", data=form)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    # a certificate for another workload does not authenticate AGENT
    other = _identity(mtls.svid("other", OTHER)).current()
    with httpx.Client(verify=other.ssl_context, trust_env=False) as http:
        response = http.post(mtls.sts_url + "/token", data=form)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    # through the SDK: the session exchange fails with the STS's code
    stranger_ca = DevCA.create("tether.local")
    foreign = mtls.svids / "foreign"
    _write_svid(foreign, stranger_ca.issue_svid(AGENT), stranger_ca)
    (foreign / "bundle.pem").write_bytes(mtls.ca.bundle_pem)  # trusts the STS, but its SVID chains elsewhere
    with pytest.raises((httpx.TransportError, ExchangeError)):
        _session(mtls, foreign, task).token_for(mtls.resource)


def test_mtls_session_completes_its_task_with_its_certificate_bound_session_token(mtls: MtlsWorld) -> None:
    svid = mtls.svid("complete")
    session = _session(mtls, svid, mtls.task())
    assert session.token_for(mtls.resource)
    result = session.complete()
    assert result["id"] == session.task_id and result["state"] == "completed"
    # the ended task gives no new session, even to a fresh session of the same workload
    with pytest.raises(ExchangeError) as refused:
        _session(mtls, svid, session.task_id).token_for(mtls.resource)
    assert refused.value.error == "invalid_grant"


def test_mtls_session_with_dpop_too_binds_every_token_to_both_mtls_04(mtls: MtlsWorld) -> None:
    """``dpop=True`` beside an SVID: the client_credentials exchange carries a DPoP proof, so the
    session and hop tokens carry ``jkt`` and ``x5t#S256`` (the resource then checks both)."""
    svid = mtls.svid("both")
    x5t = _identity(svid).current().thumbprint
    agent = Agent(mtls.sts_url, x509=_identity(svid), dpop=True)
    session = agent.session(mtls.task())
    with session.client(audiences={mtls.resource: mtls.resource}) as http:
        hop = session.token_for(mtls.resource)
        assert claims_of(hop)["cnf"] == {"x5t#S256": x5t, "jkt": agent.key.jkt}
        response = http.get(mtls.resource + "/whoami")
        assert response.status_code == 200, response.text
        assert response.json()["jkt"] == agent.key.jkt and response.json()["x5t"] == x5t
        result = session.complete()
    assert result["state"] == "completed"


def test_mcp_client_sdk_over_mtls_presents_the_svid_and_a_certificate_bound_token(mtls: MtlsWorld) -> None:
    """The official MCP client SDK (httpx2) through an mTLS session: ``mcp_auth()`` for the token
    (Bearer, certificate-bound) and ``mcp_transport()`` for the certificate."""
    import httpx2

    session = _session(mtls, mtls.svid("mcp"), mtls.task())

    async def run() -> list[str]:
        async with (
            httpx2.AsyncClient(
                auth=session.mcp_auth(audiences={mtls.mcp_url: mtls.mcp_url}),
                transport=session.mcp_transport(),
                trust_env=False,
                timeout=10.0,
            ) as http,
            Client(streamable_http_client(mtls.mcp_url, http_client=http)) as client,
        ):
            result = await client.call_tool("add", {"a": 2, "b": 3})
            return [block.text for block in result.content if isinstance(block, TextContent)]

    assert asyncio.run(run()) == ["5"]
    x5t = session.x509.current().thumbprint if session.x509 else ""
    assert claims_of(session.token_for(mtls.mcp_url))["cnf"] == {"x5t#S256": x5t}
    assert session.exchanges == 2


# -- WorkloadApiX509Identity: SVIDs streamed by the SPIFFE Workload API -------------------------


def test_workload_api_identity_presents_the_streamed_svid_and_the_rotated_one(echo: TlsWorld, tmp_path: Path) -> None:
    with WorkloadApi(tmp_path, echo.ca, AGENT) as api:
        identity = WorkloadApiX509Identity(api.socket)
        try:
            credential = identity.current()
            assert credential.spiffe_id == AGENT
            assert credential.thumbprint == thumbprint(api.svid.der)
            with httpx.Client(transport=X509Transport(identity), trust_env=False) as http:
                assert http.get(echo.url + "/echo").json()["x5t"] == thumbprint(api.svid.der)
                rotated = api.rotate()
                wait_until(lambda: identity.current().thumbprint == thumbprint(rotated.der), what="the streamed rotation")
                assert http.get(echo.url + "/echo").json()["x5t"] == thumbprint(rotated.der)
        finally:
            identity.close()


def test_workload_api_identity_without_an_agent_is_a_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="Workload API"):
        WorkloadApiX509Identity(f"unix://{tmp_path}/no-agent.sock", timeout=0.5)


def test_mcp_transport_presents_the_svid_to_httpx2_and_follows_rotation(echo: TlsWorld, tmp_path: Path) -> None:
    """The MCP client SDK's ``httpx2`` client over mTLS: ``session.mcp_transport()``."""
    import httpx2

    first, second = echo.ca.issue_svid(AGENT), echo.ca.issue_svid(AGENT)
    _write_svid(tmp_path, first, echo.ca)
    session = Agent("https://sts.example", x509=_identity(tmp_path)).session("tsk_unit")

    async def run() -> list[str]:
        seen = []
        async with httpx2.AsyncClient(transport=session.mcp_transport(), trust_env=False) as http:
            seen.append((await http.get(echo.url + "/echo")).json()["x5t"])
            _write_svid(tmp_path, second, echo.ca)
            seen.append((await http.get(echo.url + "/echo")).json()["x5t"])
        return seen

    assert asyncio.run(run()) == [thumbprint(first.der), thumbprint(second.der)]
    with pytest.raises(ValueError, match="mTLS session"):
        Agent("https://sts.example", FileIdentity(tmp_path / "jwt")).session("t").mcp_transport()
