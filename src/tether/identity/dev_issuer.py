"""The dev trust domain: a local JWT-SVID issuer so a fresh machine needs no SPIRE.

``tether init`` creates it: an ES256 key sealed under the master key and a SPIFFE
trust bundle (a JWKS with ``"use": "jwt-svid"``) that the STS trusts like any other
bundle file. SVIDs it issues look like SPIRE's (``sub``, ``aud`` list, ``exp``,
``iat``) and carry a ``jti`` so the STS redeems each one at most once.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from joserfc.jwk import ECKey

from tether.keys.sealed import seal, unseal
from tether.rules.jws import sign_compact
from tether.rules.principal import spiffe_trust_domain

__all__ = ["DevTrustDomain", "dev_domain_aad"]


def dev_domain_aad(name: str) -> bytes:
    """The AES-GCM associated data sealing a dev trust domain's key: its name."""
    return b"dev-trust-domain\x00" + name.encode()


class DevTrustDomain:
    def __init__(self, name: str, key: ECKey) -> None:
        self.name = name
        self.key = key
        self.kid = key.thumbprint()

    @staticmethod
    def key_path(data_dir: Path, name: str) -> Path:
        return data_dir / "dev" / f"{name}.key.sealed"

    @staticmethod
    def bundle_path(data_dir: Path, name: str) -> Path:
        return data_dir / "bundles" / f"{name}.json"

    @classmethod
    def create(cls, data_dir: Path, name: str, master: bytes) -> DevTrustDomain:
        key = ECKey.generate_key("P-256", private=True)
        domain = cls(name, key)
        path = cls.key_path(data_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        sealed = seal(master, json.dumps(key.as_dict(private=True)).encode(), aad=dev_domain_aad(name))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(sealed)
        bundle = cls.bundle_path(data_dir, name)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_text(json.dumps(domain.bundle(), indent=2) + "\n", encoding="utf-8")
        return domain

    @classmethod
    def load(cls, data_dir: Path, name: str, master: bytes) -> DevTrustDomain:
        raw = unseal(master, cls.key_path(data_dir, name).read_bytes(), aad=dev_domain_aad(name))
        return cls(name, ECKey.import_key(json.loads(raw)))

    def bundle(self) -> dict[str, object]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update({"kid": self.kid, "use": "jwt-svid"})
        return {"keys": [jwk], "spiffe_sequence": 1, "spiffe_refresh_hint": 300}

    def issue(self, spiffe_id: str, *, audience: str, ttl: int, now: int, with_jti: bool = True) -> str:
        """A JWT-SVID for ``spiffe_id`` (which must belong to this trust domain)."""
        if spiffe_trust_domain(spiffe_id) != self.name:
            raise ValueError(f"`{spiffe_id}` is not a spiffe id in trust domain `{self.name}`")
        claims: dict[str, object] = {"sub": spiffe_id, "aud": [audience], "iat": now, "exp": now + ttl}
        if with_jti:
            claims["jti"] = secrets.token_urlsafe(16)
        return sign_compact({"alg": "ES256", "kid": self.kid, "typ": "JWT"}, claims, self.key, "ES256")
