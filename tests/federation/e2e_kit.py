"""Two ``tether serve`` processes in two trust domains, over HTTPS on loopback, for the end-to-end tests.

Each deployment is made by the real CLI (``tether init --dir D --trust-domain NAME --issuer URL
--tls``: its own master key, signing key, dev trust domain and dev CA), edited as an operator
would (``[[federation]]``, ``[[trust_domains]]`` with a bundle endpoint, ``[revocations]
subscribers``), and served by ``tether serve`` as a subprocess. Test clients trust both dev
CAs; SVIDs are minted from a deployment's own files, as ``tether identity issue`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers import JWT, JWT_BEARER, TOKEN_EXCHANGE, free_port
from tether.agent.proof import DPoPKey
from tether.config import load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.keyring import KeyRing, load_keyring
from tether.keys.sealed import load_master_key
from tether.store.open import open_store

__all__ = ["TETHER", "DPoPClient", "ServedDomain", "claims_of", "header_of", "init_domains", "trust_both"]

TETHER = str(Path(sys.prefix) / "bin" / "tether")


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")} | {"NO_COLOR": "1", "COLUMNS": "200"}


@dataclass
class ServedDomain:
    """One trust domain's deployment and its ``tether serve`` process (``start``/``stop`` any number of times)."""

    name: str
    directory: Path
    port: int
    verify: ssl.SSLContext | None = None
    process: subprocess.Popen[bytes] | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "tether.toml"

    @property
    def ca_file(self) -> Path:
        return self.directory / ".tether" / "bundles" / f"{self.name}.x509.pem"

    def principal(self, path: str) -> str:
        return f"spiffe://{self.name}/{path}"

    def append(self, toml: str) -> None:
        with self.config_path.open("a", encoding="utf-8") as handle:
            handle.write("\n" + toml + "\n")

    def launch(self) -> None:
        """``tether serve`` in the background; ``wait_healthy`` waits for it."""
        with (self.directory / "serve.log").open("ab") as log:
            self.process = subprocess.Popen([TETHER, "serve", "--config", str(self.config_path)], stdout=log, stderr=log,
                                            env=_env())  # fmt: skip

    def wait_healthy(self, *, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False, verify=self.verify or True) as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"tether serve exited {self.process.returncode}: {self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(self.url + "/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"tether serve did not become healthy: {self.log()}")
                time.sleep(0.05)

    def start(self) -> None:
        self.launch()
        self.wait_healthy()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # a second SIGINT ends what the first waits for: open revocation streams (a peer's follower)
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
            process.send_signal(sig)
            try:
                process.wait(timeout=1.5)
                return
            except subprocess.TimeoutExpired:
                continue
        process.wait(timeout=10)

    def log(self) -> str:
        path = self.directory / "serve.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    # -- identities minted from the deployment's own dev trust domain --------------------------
    def dev(self) -> DevTrustDomain:
        master = load_master_key(self.directory / ".tether" / "master.key")
        return DevTrustDomain.load(self.directory / ".tether", self.name, master)

    def signing_ring(self) -> KeyRing:
        """The STS's access-token signing keys, read from its store as ``tether serve`` reads them."""

        async def load() -> KeyRing:
            config = load_config(self.config_path)
            store = await open_store(config)
            try:
                return await load_keyring(store, load_master_key(config.master_key_file), now=time.time())
            finally:
                await store.aclose()

        return asyncio.run(load())

    def svid(self, path: str, *, audience: str | None = None) -> str:
        return self.dev().issue(self.principal(path), audience=audience or self.url, ttl=120, now=int(time.time()))

    def client_auth(self, path: str, **form: str) -> dict[str, str]:
        return {"client_assertion": self.svid(path), "client_assertion_type": JWT_BEARER, **form}

    def http(self) -> httpx.Client:
        client = httpx.Client(timeout=10.0, trust_env=False, verify=self.verify or True)
        self.clients.append(client)
        return client

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.http().post(self.url + "/introspect", data=self.client_auth("admin", token=token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http().get(self.url + "/healthz").json()
        return body

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        client = DPoPClient(self)
        token = client.token(self.svid("admin"))
        return client.api(method, path, token, **kwargs)


class DPoPClient:
    """A DPoP client of one STS that keeps its server nonce (RFC 9449 §8), as a standard client does."""

    def __init__(self, sts: ServedDomain, key: DPoPKey | None = None) -> None:
        self.sts = sts
        self.key = key or DPoPKey()
        self.http = sts.http()
        self.nonce: str | None = None

    def post_token(self, form: dict[str, str]) -> httpx.Response:
        url = self.sts.url + "/token"
        for _ in range(2):
            proof = self.key.proof("POST", url, nonce=self.nonce, now=time.time())
            response = self.http.post(url, data=form, headers={"DPoP": proof})
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 400 and response.json().get("error") == "use_dpop_nonce":
                continue
            return response
        return response

    def token(self, svid: str, **extra: str) -> str:
        response = self.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT, **extra})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        url = self.sts.url + path
        for _ in range(2):
            proof = self.key.proof(method, url, nonce=self.nonce, access_token=token, now=time.time())
            response = self.http.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, **kwargs)
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response


def init_domains(root: Path, *names: str) -> list[ServedDomain]:
    """``tether init --dir ROOT/NAME --trust-domain NAME --issuer http://127.0.0.1:PORT --tls`` for each
    name (at once; the issuer becomes https)."""
    domains = [ServedDomain(name, root / name, free_port()) for name in names]
    runs = [subprocess.Popen([TETHER, "init", "--dir", str(d.directory), "--trust-domain", d.name, "--issuer",
                              f"http://127.0.0.1:{d.port}", "--tls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=_env()) for d in domains]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err.decode()
    for domain in domains:
        domain.append("[audit]\nrefusal_interval = 0")
    return domains


def trust_both(*domains: ServedDomain) -> ssl.SSLContext:
    """A client TLS context trusting every domain's dev CA (and nothing else)."""
    context = ssl.create_default_context(cafile=str(domains[0].ca_file))
    for domain in domains[1:]:
        context.load_verify_locations(cafile=str(domain.ca_file))
    for domain in domains:
        domain.verify = context
    return context


def _segment(token: str, index: int) -> dict[str, Any]:
    import base64

    part = token.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def claims_of(token: str) -> dict[str, Any]:
    return _segment(token, 1)


def header_of(token: str) -> dict[str, Any]:
    return _segment(token, 0)
