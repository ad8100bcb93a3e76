"""The demo's mTLS act: an agent whose identity is an X.509-SVID, with certificate-bound tokens (RFC 8705).

A batch agent holds an X.509-SVID from the dev CA (no JWT, no DPoP key). It opens its task's
session with the standard client-credentials grant, authenticated by its certificate at the
STS's mutual-TLS listener; every token it gets carries ``cnf.x5t#S256``. It calls the reports
service over mutual TLS with ``Authorization: Bearer`` — a bearer header, but a token that works
only over a connection presenting that certificate. The attacks: the same token with another
workload's valid SVID, with no certificate, and with the agent's (public) certificate forged into
an RFC 9440 ``Client-Cert`` header from an address that is not a trusted TLS terminator; and a
call after the task completed — all refused.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.identity import IdentitySource
from tether.agent.session import Agent
from tether.agent.x509 import FileX509Identity
from tether.client import StsClient
from tether.config import Config
from tether.identity.dev_x509 import DevCA, Issued
from tether.identity.x509 import client_ca_files
from tether.provision import create_dev_ca, dev_x509_bundle_path, tls_paths
from tether.resource import ResourceSettings, TetherMiddleware, Verifier, require_scope
from tether.rules.certificate import client_cert_header
from tether.web.tls import TlsFiles

__all__ = ["MTLS_AGENT", "REPORTS_SERVICE", "MtlsPlan", "mtls_act", "reports_service"]

MTLS_AGENT = "spiffe://tether.local/agent/batch"
OTHER_WORKLOAD = "spiffe://tether.local/agent/intruder"
REPORTS_SERVICE = "spiffe://tether.local/svc/reports"
Step = Callable[..., None]


@dataclass(frozen=True)
class MtlsPlan:
    sts_mtls_url: str  # the STS's mutual-TLS listener (the same app and store as its plain one)
    reports_url: str  # a service that takes certificate-bound tokens over mutual TLS

    def toml(self) -> str:
        return f'\n[[resources]]\nuri = "{self.reports_url}"\nprincipals = ["{REPORTS_SERVICE}"]\n'


def enable_x509(config_path: Path, data_dir: Path, domain: str, master: bytes) -> tuple[DevCA, Path]:
    """What ``tether init --tls`` does for the dev trust domain, for a demo whose STS keeps its plain
    listener too: a dev CA (key sealed), a server certificate for loopback, and the domain's
    ``x509_bundle_file`` in tether.toml. Returns the CA and its bundle."""
    ca = create_dev_ca(data_dir, domain, master)
    cert_path, key_path = tls_paths(data_dir)
    server = ca.issue_server(["127.0.0.1", "localhost"])
    server.write(cert_path.parent, "server")
    assert (cert_path, key_path) == (cert_path.parent / "server.pem", cert_path.parent / "server.key")
    bundle = dev_x509_bundle_path(data_dir, domain)
    text = config_path.read_text(encoding="utf-8")
    anchor = f'bundle_file = ".tether/bundles/{domain}.json"\n'
    config_path.write_text(text.replace(anchor, anchor + f'x509_bundle_file = "{bundle}"\n', 1), encoding="utf-8")
    return ca, bundle


def tls_files(config: Config) -> TlsFiles:
    cert, key = tls_paths(config.data_dir)
    return TlsFiles(cert, key, client_ca_files(config))


def reports_service(sts_url: str, resource: str, identity: IdentitySource) -> tuple[Starlette, Verifier]:
    """A service behind the resource SDK that a certificate-bound agent calls over mutual TLS."""
    verifier = Verifier(ResourceSettings(issuer=sts_url, resource=resource), identity=identity)

    async def summary(request: Request) -> Response:
        principal = require_scope(request, "reports:read")
        return JSONResponse({"report": "q3-usage", "agent": principal.agent, "x5t": principal.x5t, "jkt": principal.jkt})

    app = Starlette(routes=[Route("/summary", summary)], middleware=[Middleware(TetherMiddleware, verifier=verifier)])
    return app, verifier


def _identity(ca: DevCA, bundle: Path, directory: Path, spiffe_id: str) -> tuple[FileX509Identity, Issued]:
    svid = ca.issue_svid(spiffe_id, ttl=600)
    cert, key = svid.write(directory, spiffe_id.rsplit("/", 1)[1])
    return FileX509Identity(cert, key, bundle), svid


def _context(bundle: Path, identity: FileX509Identity | None) -> ssl.SSLContext:
    if identity is not None:
        return identity.current().ssl_context
    return ssl.create_default_context(cafile=str(bundle))


def _call(
    bundle: Path, url: str, token: str, *, identity: FileX509Identity | None, headers: dict[str, str] | None = None
) -> httpx.Response:
    with httpx.Client(verify=_context(bundle, identity), trust_env=False, timeout=10.0) as http:
        return http.get(url, headers={"Authorization": f"Bearer {token}", **(headers or {})})


def _err(response: httpx.Response) -> str | None:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return None


def _refused(response: httpx.Response) -> bool:
    return response.status_code == 401 and _err(response) == "invalid_token"


def mtls_act(step: Step, check: Step, admin: StsClient, plan: MtlsPlan, ca: DevCA, bundle: Path, workdir: Path) -> None:
    task = admin.create_task(
        agent=MTLS_AGENT,
        audiences=[plan.reports_url],
        scopes=["reports:read"],
        purpose="nightly usage report",
        max_duration=300,
    )
    identity, svid = _identity(ca, bundle, workdir, MTLS_AGENT)
    step("identity", "batch agent holds an X.509-SVID from the dev CA (no JWT, no DPoP key)",
         spiffe_id=MTLS_AGENT, ttl_s=600, x5t=svid.thumbprint[:12] + "…")  # fmt: skip
    session = Agent(plan.sts_mtls_url, x509=identity).session(task["id"])
    url = plan.reports_url + "/summary"
    with session.client(audiences={plan.reports_url: plan.reports_url}, discover=False) as http:
        response = http.get(url)
        body: dict[str, Any] = response.json()
        hop = session.token_for(plan.reports_url)
        check(
            "mtls:certificate-bound",
            response.status_code == 200 and body.get("x5t") == svid.thumbprint and body.get("jkt") is None,
            "client_credentials over mutual TLS → session → hop; reports sees a token bound to the certificate",
            status=response.status_code,
            x5t=str(body.get("x5t"))[:12] + "…",
        )
    intruder, _ = _identity(ca, bundle, workdir, OTHER_WORKLOAD)
    stolen = _call(bundle, url, hop, identity=intruder)
    check("refused:mtls-other-certificate", _refused(stolen),
          "the hop token replayed over mutual TLS with another workload's valid SVID",
          status=[stolen.status_code, _err(stolen)])  # fmt: skip
    bare = _call(bundle, url, hop, identity=None)
    check("refused:mtls-no-certificate", _refused(bare), "the hop token as a plain bearer token (TLS, no client certificate)",
          status=[bare.status_code, _err(bare)])  # fmt: skip
    spoofed = _call(bundle, url, hop, identity=None, headers={"Client-Cert": client_cert_header(svid.der)})
    check("refused:mtls-spoofed-client-cert", _refused(spoofed),
          "the agent's own (public) certificate forged into a Client-Cert header from an untrusted address",
          status=[spoofed.status_code, _err(spoofed)])  # fmt: skip
    session.complete()
    deadline = time.monotonic() + 5  # the revocation reaches the service over its feed
    while not _refused(after := _call(bundle, url, hop, identity=identity)) and time.monotonic() < deadline:
        time.sleep(0.02)
    check("refused:mtls-after-completion", _refused(after), "the certificate-bound token after the task completed",
          status=[after.status_code, _err(after)])  # fmt: skip
