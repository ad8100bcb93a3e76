"""The dev approvers' provider: a local OIDC-style issuer of approvers' ID tokens, so a laptop needs no IdP.

``tether init`` creates it next to the dev trust domain: an ES256 key sealed under the master
key and its JWKS (``[approvals] jwks_file``). ``tether identity approver EMAIL --group G`` prints
an ID token (OIDC Core §2: ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, plus ``email`` and
``groups``) that the STS verifies like any provider's (``identity.approvers``). Replace
``[approvals] issuer`` with the organisation's provider in production: whoever holds the master
key can mint approvers here, exactly as they can mint dev workload identities.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from joserfc.jwk import ECKey

from tether.keys.sealed import rewrap, seal, unseal
from tether.rules.jws import sign_compact

__all__ = ["DevApprovers"]

_AAD = b"dev-approvers"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}")


class DevApprovers:
    def __init__(self, issuer: str, key: ECKey) -> None:
        self.issuer = issuer
        self.key = key
        self.kid = key.thumbprint()

    @staticmethod
    def key_path(data_dir: Path) -> Path:
        return data_dir / "dev" / "approvers.key.sealed"

    @staticmethod
    def jwks_path(data_dir: Path) -> Path:
        return data_dir / "bundles" / "approvers.json"

    @staticmethod
    def issuer_for(sts_issuer: str) -> str:
        return sts_issuer.rstrip("/") + "/dev/approvers"

    @classmethod
    def create(cls, data_dir: Path, issuer: str, master: bytes) -> DevApprovers:
        key = ECKey.generate_key("P-256", private=True)
        approvers = cls(issuer, key)
        path = cls.key_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(seal(master, json.dumps(key.as_dict(private=True)).encode(), aad=_AAD))
        jwks = cls.jwks_path(data_dir)
        jwks.parent.mkdir(parents=True, exist_ok=True)
        public = dict(key.as_dict(private=False))
        public.update({"kid": approvers.kid, "use": "sig", "alg": "ES256"})
        jwks.write_text(json.dumps({"keys": [public]}, indent=2) + "\n", encoding="utf-8")
        return approvers

    @classmethod
    def load(cls, data_dir: Path, issuer: str, master: bytes) -> DevApprovers:
        raw = unseal(master, cls.key_path(data_dir).read_bytes(), aad=_AAD)
        return cls(issuer, ECKey.import_key(json.loads(raw)))

    @classmethod
    def rekey(cls, data_dir: Path, old_master: bytes, new_master: bytes) -> bool:
        """Re-wrap the sealed key under a new master key (``tether master-key rotate``); False if there is none."""
        path = cls.key_path(data_dir)
        if not path.exists():
            return False
        path.write_bytes(rewrap(old_master, new_master, path.read_bytes(), aad=_AAD))
        return True

    def issue(self, email: str, *, audience: str, groups: Sequence[str] = (), ttl: int, now: int) -> str:
        """An approver's ID token for ``email`` (its ``sub``), in ``groups`` (the ``groups`` claim)."""
        if not _EMAIL.fullmatch(email):
            raise ValueError(f"`{email:.100}` is not an email address")
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": email,
            "email": email,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
        }
        if groups:
            claims["groups"] = list(groups)
        return sign_compact({"alg": "ES256", "kid": self.kid, "typ": "JWT"}, claims, self.key, "ES256")
