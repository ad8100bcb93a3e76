"""The peer tether is measured beside: node ``oidc-provider``, installed from npm into a cache.

``tether bench --peer`` runs it pinned to the STS's core, with the same load generator,
concurrency and fresh-DPoP-proof-per-request discipline, in rounds interleaved with tether's
own (so a slow minute of the machine hits both sides). ``peer/package.json`` pins the version
and ``peer/package-lock.json`` the whole tree; ``npm ci`` installs it once per lock digest
into ``~/.cache/tether/bench-peer/<digest>`` (``$TETHER_BENCH_CACHE`` moves it). Nothing is
installed into the project.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from tether.agent.proof import DPoPKey
from tether.bench.harness import Server, serve_process
from tether.bench.loadgen import form_request
from tether.rules.jws import sign_compact
from tether.web.server import free_port

__all__ = ["PeerUnavailable", "install_peer", "oidc_provider", "peer_version"]

_FILES = ("package.json", "package-lock.json", "peer_op.mjs")
RESOURCE = "https://b.bench.example"
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class PeerUnavailable(RuntimeError):
    """node or npm is missing, or ``npm ci`` failed: the peer rows cannot be measured."""


def _sources() -> dict[str, bytes]:
    folder = resources.files("tether.bench") / "peer"
    return {name: (folder / name).read_bytes() for name in _FILES}


def peer_version() -> str:
    """The pinned ``oidc-provider`` version (from the packaged ``package.json``)."""
    return str(json.loads(_sources()["package.json"])["dependencies"]["oidc-provider"])


def _cache_root() -> Path:
    configured = os.environ.get("TETHER_BENCH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "tether" / "bench-peer"


def install_peer() -> Path:
    """The directory holding ``peer_op.mjs`` with its ``node_modules``, installed by ``npm ci`` once."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise PeerUnavailable(f"`{tool}` is not installed (the peer is node oidc-provider)")
    sources = _sources()
    digest = hashlib.sha256(b"".join(n.encode() + sources[n] for n in _FILES)).hexdigest()[:16]
    target = _cache_root() / digest
    target.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two bench runs at once: one `npm ci`
        if not (target / "node_modules" / ".installed").exists():
            for name, data in sources.items():
                (target / name).write_bytes(data)
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],  # noqa: S607 - npm from PATH
                cwd=target, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise PeerUnavailable(f"npm ci failed: {done.stderr.strip()[-400:]}")
            (target / "node_modules" / ".installed").touch()
    return target


class OidcProvider:
    """A running peer and the requests tether's load generator replays against it."""

    def __init__(self, server: Server, secret: str, client_key: ECKey) -> None:
        self.server = server
        self.url = server.url
        self.token_url = server.url + "/token"
        self._secret = secret
        self._client_key = client_key
        self._dpop = DPoPKey()

    @property
    def dpop_thumbprint(self) -> str:
        """The RFC 7638 thumbprint of the key every prebuilt proof is signed with (``cnf.jkt``)."""
        return self._dpop.jkt

    def plain_requests(self, n: int) -> list[bytes]:
        """Client credentials with ``client_secret_basic``, a fresh DPoP proof each."""
        basic = base64.b64encode(f"plain:{self._secret}".encode()).decode()
        form = {"grant_type": "client_credentials", "scope": "read"}
        return [
            form_request(
                self.token_url, form, {"Authorization": f"Basic {basic}", "DPoP": self._dpop.proof("POST", self.token_url)}
            )
            for _ in range(n)
        ]

    def private_key_jwt_requests(self, n: int) -> list[bytes]:
        """Client credentials with ``private_key_jwt`` (a fresh assertion and a fresh DPoP proof each)."""
        return [
            form_request(
                self.token_url,
                {
                    "grant_type": "client_credentials",
                    "scope": "read",
                    "client_assertion_type": _ASSERTION_TYPE,
                    "client_assertion": self._assertion(),
                },
                {"DPoP": self._dpop.proof("POST", self.token_url)},
            )
            for _ in range(n)
        ]

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": "pkjwt", "sub": "pkjwt", "aud": self.url, "jti": secrets.token_urlsafe(16), "iat": now,
                  "exp": now + 300}  # fmt: skip
        header = {"alg": "ES256", "typ": "JWT", "kid": self._client_key.thumbprint()}
        return sign_compact(header, claims, self._client_key, "ES256")


@contextmanager
def oidc_provider(directory: Path, *, core: str = "0") -> Iterator[OidcProvider]:
    """Start the peer pinned to ``core`` (like the STS under test) and wait until it answers."""
    port = free_port()
    secret = secrets.token_urlsafe(32)
    client_key = ECKey.generate_key("P-256", private=True)
    public = {**client_key.as_dict(private=False), "kid": client_key.thumbprint(), "alg": "ES256", "use": "sig"}
    signing = ECKey.generate_key("P-256", private=True)
    signing_jwk = {**signing.as_dict(private=True), "kid": signing.thumbprint(), "alg": "ES256", "use": "sig"}
    spec: dict[str, Any] = {"port": port, "resource": RESOURCE, "secret": secret, "jwks": {"keys": [public]},
                            "signing_key": signing_jwk}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    env = {"NODE_ENV": "production", "PATH": os.environ.get("PATH", "")}
    args = ["node", str(directory / "peer_op.mjs"), json.dumps(spec)]
    with serve_process(args, url, core=core, health="/.well-known/openid-configuration", env=env, cwd=directory) as server:
        yield OidcProvider(server, secret, client_key)
