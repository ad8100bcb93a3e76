"""Certificates, TLS files and certificate-bound tokens for the mTLS resource tests (RFC 8705, RFC 9440).

Everything is real: a development CA made here (``DevCA``), a server certificate for
127.0.0.1, X.509-SVIDs for the callers, ``ssl`` client contexts presenting them, and access
tokens signed by a key the test owns (the verifier trusts it through ``StaticKeySource``, as
the ``o`` service of ``conftest``), so a token carries exactly the ``cnf`` a test needs.
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from helpers import AGENT
from tether.identity.dev_x509 import DevCA, Issued
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.rules.certificate import client_cert_header, thumbprint
from tether.rules.jws import sign_compact
from tether.web.tls import TlsFiles

__all__ = ["ISSUER", "MtlsKit", "client_cert_header"]

ISSUER = "https://sts.mtls.test"
DOMAIN = "example.org"
KID = "mtls-test-key"


@dataclass
class MtlsKit:
    root: Path
    ca: DevCA
    files: TlsFiles
    agent: Issued  # the certificate tokens are bound to
    other: Issued  # another workload's certificate from the same CA (its handshake succeeds)
    signing: ECKey

    @classmethod
    def create(cls, root: Path) -> MtlsKit:
        ca = DevCA.create(DOMAIN)
        (root / "ca.pem").write_bytes(ca.bundle_pem)
        cert, key = ca.issue_server(["127.0.0.1"]).write(root, "server")
        signing = ECKey.generate_key("P-256", parameters={"kid": KID}, private=True)
        return cls(
            root=root,
            ca=ca,
            files=TlsFiles(cert, key, (root / "ca.pem",)),
            agent=ca.issue_svid(f"spiffe://{DOMAIN}/agent"),
            other=ca.issue_svid(f"spiffe://{DOMAIN}/other"),
            signing=signing,
        )

    def keys(self) -> StaticKeySource:
        return StaticKeySource(KeySet([ECKey.import_key(self.signing.as_dict(private=False))]))

    def context(self, issued: Issued | None) -> ssl.SSLContext:
        """A client TLS context trusting the dev CA, presenting ``issued`` (or no certificate)."""
        context = ssl.create_default_context(cafile=str(self.root / "ca.pem"))
        if issued is not None:
            cert, key = issued.write(self.root, f"client-{thumbprint(issued.der)[:10]}")
            context.load_cert_chain(cert, key)
        return context

    def token(self, audience: str, *, x5t: str | None = None, jkt: str | None = None, **claims: Any) -> str:
        """An RFC 9068 access token for ``audience`` bound as asked (``cnf`` absent when neither is given)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "sub": AGENT,
            "aud": audience,
            "exp": now + 120,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": AGENT,
            "scope": "wiki:read",
            "agt": AGENT,
            "txn": "tsk_" + secrets.token_urlsafe(8),
        }
        cnf = {k: v for k, v in (("jkt", jkt), ("x5t#S256", x5t)) if v is not None}
        if cnf:
            body["cnf"] = cnf
        body.update(claims)
        return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": KID}, body, self.signing, "ES256")

    def bound(self, audience: str, **claims: Any) -> str:
        """A token bound to the agent's certificate only (RFC 8705 §3)."""
        return self.token(audience, x5t=thumbprint(self.agent.der), **claims)
