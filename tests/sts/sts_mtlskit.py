"""An STS served over real mutual TLS on loopback, with certificates made here (RFC 8705 tests).

``mtls_sts`` is ``tests/helpers.running_sts`` with an ``https://`` issuer, ``ServerThread(tls=…)``
asking for client certificates from ``client_ca_files(config)``, and three certificate sources:

* ``tether.local`` (the deployment's own trust domain) gains an X.509 bundle: ``home``'s root;
* ``other.example``, a second trust domain with its own X.509 bundle (``other``'s root) — its
  CA is trusted at the handshake, so its certificates reach the STS, which must tell them apart;
* ``user:batch``, a ``[[clients]]`` entry registered by its self-signed certificate (§2.2).

With ``TETHER_TEST_STORE=postgres`` the deployment runs on PostgreSQL + Redis (``make_deployment``).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers import ADMIN, AGENT, QUIET_MONITOR, Client, RunningSts, admin_token, make_deployment
from tether.clock import ManualClock
from tether.config import load_config
from tether.identity.dev_x509 import DevCA, Issued, self_signed
from tether.identity.x509 import client_ca_files
from tether.sts.bootstrap import build_sts
from tether.web.server import ServerThread, free_port
from tether.web.tls import TlsFiles

__all__ = ["BATCH", "CLIENT_CREDENTIALS", "MtlsSts", "credentials", "mtls_sts"]

CLIENT_CREDENTIALS = "client_credentials"
#: the client registered by its self-signed certificate
BATCH = "user:batch"


@dataclass
class MtlsSts:
    running: RunningSts
    directory: Path
    home: DevCA
    other: DevCA
    batch: Issued
    _files: dict[bytes, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def token_url(self) -> str:
        return self.running.token_url

    def files(self, cert: Issued) -> tuple[Path, Path]:
        """``cert`` written as PEM certificate and key files (for ssl contexts and curl)."""
        key = cert.der
        if key not in self._files:
            self._files[key] = cert.write(self.directory / "clients", f"c{len(self._files)}")
        return self._files[key]

    def http(self, cert: Issued | None) -> httpx.Client:
        """An HTTPS client trusting the STS's certificate and presenting ``cert`` (none: no client certificate)."""
        context = ssl.create_default_context(cafile=str(self.directory / "x509" / "tether.local.pem"))
        if cert is not None:
            certificate, key = self.files(cert)
            context.load_cert_chain(str(certificate), str(key))
        http = httpx.Client(verify=context, timeout=10.0, trust_env=False)
        self.running.clients.append(http)
        return http

    def client(self, cert: Issued | None) -> Client:
        """A DPoP ``Client`` (nonce-aware) whose connections present ``cert``."""
        client = Client(self.running)
        client.http.close()
        client.http = self.http(cert)
        return client

    def post(self, cert: Issued | None, form: Mapping[str, str], *, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """``POST /token`` with no DPoP proof."""
        return self.http(cert).post(self.token_url, data=dict(form), headers=dict(headers or {}))

    def create_task(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": AGENT, "audiences": ["https://wiki.example"], "scopes": ["wiki:read", "wiki:write"]}
        body.update(fields)
        client, token = admin_token(self.running, self.client(None))
        response = client.api("POST", "/tasks", token, json=body)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.http(None).post(self.url + "/introspect", data=self.running.client_auth(ADMIN, token=token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def credentials(task_id: str, client_id: str = AGENT, **extra: str) -> dict[str, str]:
    return {"grant_type": CLIENT_CREDENTIALS, "client_id": client_id, "task": task_id, **extra}


@contextlib.contextmanager
def _store_env(store: str | None) -> Iterator[None]:
    saved = os.environ.get("TETHER_TEST_STORE")
    if store is not None:
        os.environ["TETHER_TEST_STORE"] = store
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TETHER_TEST_STORE", None)
        else:
            os.environ["TETHER_TEST_STORE"] = saved


@contextlib.contextmanager
def mtls_sts(directory: Path, *, postgres: bool = False, extra_toml: str = "") -> Iterator[MtlsSts]:
    """With ``postgres`` the deployment uses PostgreSQL + Redis whatever ``TETHER_TEST_STORE`` says."""
    port = free_port()
    home = DevCA.create("tether.local")
    other = DevCA.create("other.example")
    batch = self_signed(BATCH)
    x509_dir = directory / "x509"
    x509_dir.mkdir(parents=True)
    (x509_dir / "tether.local.pem").write_bytes(home.bundle_pem)
    (x509_dir / "other.example.pem").write_bytes(other.bundle_pem)
    (x509_dir / "batch.pem").write_bytes(batch.cert_pem)
    server_cert, server_key = home.issue_server(["127.0.0.1"]).write(x509_dir, "server")
    extra = (
        '[[trust_domains]]\nname = "other.example"\nbundle_url = "https://other.example/bundle"\n'
        'x509_bundle_file = "x509/other.example.pem"\n'
        f'[[clients]]\nclient_id = "{BATCH}"\ncertificate = "x509/batch.pem"\n' + QUIET_MONITOR + "\n" + extra_toml
    )
    with _store_env("postgres" if postgres else None):
        config = make_deployment(directory, extra_toml=extra, port=port)
    assert config.path is not None
    text = config.path.read_text(encoding="utf-8")
    text = text.replace(f'issuer = "http://127.0.0.1:{port}"', f'issuer = "https://127.0.0.1:{port}"', 1)
    text = text.replace('name = "tether.local"\n', 'name = "tether.local"\nx509_bundle_file = "x509/tether.local.pem"\n', 1)
    config.path.write_text(text, encoding="utf-8")
    config = load_config(config.path)
    assert config.issuer.startswith("https://")
    clock = ManualClock()
    sts = build_sts(config, clock=clock)
    thread = ServerThread(sts.app, port, tls=TlsFiles(server_cert, server_key, client_ca_files(config)))
    thread.start()
    running = RunningSts(config=config, clock=clock, sts=sts, thread=thread)
    try:
        yield MtlsSts(running, directory, home, other, batch)
    finally:
        for http in running.clients:
            http.close()
        thread.stop()
