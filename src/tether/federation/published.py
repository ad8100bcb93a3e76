"""The SPIFFE bundle this deployment publishes for its trust domain (``GET /spiffe/bundle``).

A SPIFFE bundle is per trust domain (Trust Domain and Bundle §4), and one tether deployment is
one trust domain: its dev trust domain (``[dev] trust_domain``). Its bundle therefore lists
every authority that signs for that domain:

- the dev trust domain's JWT-SVID keys (from its ``[[trust_domains]]`` ``bundle_file``), so a
  peer can authenticate this deployment's workloads (its feed follower, say) from a bundle
  endpoint instead of a copied file;
- the STS's token-signing keys (those ``/jwks`` lists, the retiring ones included), so a peer
  can verify this deployment's access tokens from the same endpoint (``[[federation]]
  bundle_endpoint``);
- the dev CA, when ``tether init --tls`` made one (``x509_bundle_file``), as ``x509-svid``.

All JWT authorities are marked ``jwt-svid``, the one JWT ``use`` SPIFFE defines. Keys are shared
across kinds, so what keeps the kinds apart at a verifier is the rest of JWT-12: a JWT-SVID has
``typ`` ``JWT``/``JOSE`` and no tether ``iss`` (``identity.spiffe`` refuses a tether issuer's
token), an access token has ``typ`` ``at+jwt`` and its issuer's exact ``iss``.

``spiffe_sequence`` grows with every change tether makes: ``current key's created_at × 1000 +
(999 − retiring keys still listed)`` goes up when a key is added (rotation makes the new key
current, created after every other) and when a retiring key leaves after its last token expired.
A dev trust domain key replaced by ``tether init --force`` comes with a new signing key, hence a
new sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.config import Config
from tether.identity.jwks_cache import load_json
from tether.identity.spiffe_bundle import JWT_SVID, bundle_document, parse_bundle
from tether.identity.watched import WatchedFile
from tether.keys.keyring import KeyRing

__all__ = ["PUBLISHED_REFRESH_HINT", "PublishedBundle", "published_sequence"]

#: seconds a peer may keep this bundle; a token with an unknown ``kid`` makes it look again sooner
PUBLISHED_REFRESH_HINT = 60
_DEFAULT_DOMAIN = "tether.local"


def _jwt_authorities(data: bytes) -> tuple[dict[str, Any], ...]:
    document = load_json(data)
    parse_bundle(document)  # strict: a malformed dev bundle is not republished
    return tuple({k: v for k, v in entry.items() if k != "use"} for entry in document["keys"] if entry["use"] == JWT_SVID)


def _certificates(data: bytes) -> tuple[bytes, ...]:
    return tuple(cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(data))


def published_sequence(ring: KeyRing, *, now: float) -> int:
    """``spiffe_sequence`` of the bundle with ``ring``'s keys (see the module docstring)."""
    retiring = len(ring.jwks(now=now)["keys"]) - 1
    return ring.current.created_at * 1000 + (999 - min(max(retiring, 0), 999))


class PublishedBundle:
    """Renders the bundle from the keyring in force and the dev trust domain's files; the
    rendering is reused until one of them changes (the endpoint is unauthenticated: cheap)."""

    def __init__(self, trust_domain: str, *, jwt_file: Path | None, x509_file: Path | None,
                 refresh_hint: int = PUBLISHED_REFRESH_HINT) -> None:  # fmt: skip
        self.trust_domain = trust_domain
        self.refresh_hint = refresh_hint
        empty_keys: tuple[dict[str, Any], ...] = ()
        empty_certs: tuple[bytes, ...] = ()
        what = f"trust bundle of {trust_domain}"
        self._jwt = WatchedFile(jwt_file, _jwt_authorities, empty_keys, what=what, kept="keys") if jwt_file else None
        self._x509 = WatchedFile(x509_file, _certificates, empty_certs, what=what, kept="CAs") if x509_file else None
        self._cached: tuple[tuple[object, ...], bytes, str] | None = None

    @classmethod
    def from_config(cls, config: Config) -> PublishedBundle:
        name = config.dev.trust_domain or _DEFAULT_DOMAIN
        entry = next((d for d in config.trust_domains if d.name == name), None)
        jwt_file = entry.bundle_file if entry is not None else None
        x509_file = entry.x509_bundle_file if entry is not None else None
        return cls(name, jwt_file=jwt_file, x509_file=x509_file)

    def render(self, ring: KeyRing, *, now: float) -> tuple[bytes, str]:
        """The bundle's JSON body and its ETag."""
        dev_keys = self._jwt.current() if self._jwt is not None else ()
        certificates = self._x509.current() if self._x509 is not None else ()
        sequence = published_sequence(ring, now=now)
        state: tuple[object, ...] = (ring, sequence, dev_keys, certificates)
        cached = self._cached
        if cached is not None and cached[0] == state:  # the keyring by identity, the rest by value
            return cached[1], cached[2]
        signing: list[Mapping[str, Any]] = [{k: v for k, v in jwk.items() if k != "use"} for jwk in ring.jwks(now=now)["keys"]]
        document = bundle_document([*dev_keys, *signing], certificates, sequence=sequence, refresh_hint=self.refresh_hint)
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self._cached = (state, body, etag)
        return body, etag
