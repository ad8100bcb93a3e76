"""The two SPIFFE bundles a deployment publishes, one purpose each (SECURITY JWT-08, JWT-12).

Both are SPIFFE bundle documents (Trust Domain and Bundle §4), so one client
(``identity.spiffe_bundle.BundleEndpointSource``) follows either; what a key may sign is set by
which document lists it, never by the key's ``use`` (every JWT authority is ``jwt-svid``, the
one JWT ``use`` SPIFFE defines):

- ``SVID_BUNDLE_PATH`` (``SvidBundle``): the trust domain's SVID authorities only, the dev trust
  domain's JWT-SVID keys (its ``[[trust_domains]]`` ``bundle_file``) and the dev CA as
  ``x509-svid`` when ``tether init --tls`` made one. For a peer's ``[[trust_domains]]
  bundle_endpoint``, to authenticate this deployment's workloads (its feed follower, say).
- ``SIGNING_BUNDLE_PATH`` (``SigningBundle``): the STS's access-token signing keys only (those
  ``/jwks`` lists, retiring ones included). For a peer's ``[[federation]] bundle_endpoint``, to
  verify this deployment's crossing tokens.

Kept apart because a key trusted for both lets whoever mints one kind forge the other: a SPIRE
server (or the dev trust domain key's holder) would mint access tokens a peer accepts as this
STS's, and this STS's key would sign SVIDs a peer accepts as the trust domain's.

Each has its own ``spiffe_sequence`` (§4.1.1: it grows whenever the contents change). The signing
bundle's is ``current key's created_at × 1000 + (999 − retiring keys still listed)``: it goes up
when a key is added (rotation makes the new key current, created after every other) and when a
retiring key leaves after its last token expired. The SVID bundle's is the newest modification
time, in milliseconds, of the files it is read from: ``tether init --force`` (or SPIRE) rewriting
one raises it, and deployments reading the same files agree on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.config import Config
from tether.identity.jwks_cache import load_json
from tether.identity.spiffe_bundle import JWT_SVID, bundle_document, parse_bundle
from tether.identity.watched import WatchedFile
from tether.keys.keyring import KeyRing

__all__ = [
    "PUBLISHED_REFRESH_HINT",
    "SIGNING_BUNDLE_PATH",
    "SVID_BUNDLE_PATH",
    "SigningBundle",
    "SvidBundle",
    "published_sequence",
]

#: seconds a peer may keep a bundle; a token with an unknown ``kid`` makes it look again sooner
PUBLISHED_REFRESH_HINT = 60
#: where the trust domain's SVID authorities are served (a peer's ``[[trust_domains]] bundle_endpoint``)
SVID_BUNDLE_PATH = "/spiffe/bundle"
#: where the STS's access-token signing keys are served (a peer's ``[[federation]] bundle_endpoint``)
SIGNING_BUNDLE_PATH = "/federation/bundle"
_DEFAULT_DOMAIN = "tether.local"


def _jwt_authorities(data: bytes) -> tuple[dict[str, Any], ...]:
    document = load_json(data)
    parse_bundle(document)  # strict: a malformed dev bundle is not republished
    return tuple({k: v for k, v in entry.items() if k != "use"} for entry in document["keys"] if entry["use"] == JWT_SVID)


def _certificates(data: bytes) -> tuple[bytes, ...]:
    return tuple(cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(data))


def _rendered(jwt_keys: Sequence[Mapping[str, Any]], certificates: Sequence[bytes], *, sequence: int,
              refresh_hint: int) -> tuple[bytes, str]:  # fmt: skip
    document = bundle_document(jwt_keys, certificates, sequence=sequence, refresh_hint=refresh_hint)
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def published_sequence(ring: KeyRing, *, now: float) -> int:
    """``spiffe_sequence`` of the signing bundle with ``ring``'s keys (see the module docstring)."""
    retiring = len(ring.jwks(now=now)["keys"]) - 1
    return ring.current.created_at * 1000 + (999 - min(max(retiring, 0), 999))


class SigningBundle:
    """The STS's access-token signing keys as a bundle, rendered once per keyring (the endpoint is
    unauthenticated: cheap)."""

    def __init__(self, refresh_hint: int = PUBLISHED_REFRESH_HINT) -> None:
        self.refresh_hint = refresh_hint
        self._cached: tuple[tuple[object, ...], bytes, str] | None = None

    def render(self, ring: KeyRing, *, now: float) -> tuple[bytes, str]:
        """The bundle's JSON body and its ETag."""
        sequence = published_sequence(ring, now=now)
        state: tuple[object, ...] = (ring, sequence)
        cached = self._cached
        if cached is not None and cached[0] == state:  # the keyring by identity, the sequence by value
            return cached[1], cached[2]
        signing = [{k: v for k, v in jwk.items() if k != "use"} for jwk in ring.jwks(now=now)["keys"]]
        body, etag = _rendered(signing, (), sequence=sequence, refresh_hint=self.refresh_hint)
        self._cached = (state, body, etag)
        return body, etag


class SvidBundle:
    """The trust domain's SVID authorities as a bundle, rendered again only when its files change.

    With no dev trust domain (no ``[[trust_domains]]`` entry for it) the bundle has no keys: still
    valid JSON, which a bundle endpoint client refuses as holding no authority.
    """

    def __init__(self, trust_domain: str, *, jwt_file: Path | None, x509_file: Path | None,
                 refresh_hint: int = PUBLISHED_REFRESH_HINT) -> None:  # fmt: skip
        self.trust_domain = trust_domain
        self.refresh_hint = refresh_hint
        empty_keys: tuple[dict[str, Any], ...] = ()
        empty_certs: tuple[bytes, ...] = ()
        what = f"trust bundle of {trust_domain}"
        self._jwt = WatchedFile(jwt_file, _jwt_authorities, empty_keys, what=what, kept="keys") if jwt_file else None
        self._x509 = WatchedFile(x509_file, _certificates, empty_certs, what=what, kept="CAs") if x509_file else None
        self._sequence = 0
        self._cached: tuple[tuple[object, ...], bytes, str] | None = None

    @classmethod
    def from_config(cls, config: Config) -> SvidBundle:
        name = config.dev.trust_domain or _DEFAULT_DOMAIN
        entry = next((d for d in config.trust_domains if d.name == name), None)
        jwt_file = entry.bundle_file if entry is not None else None
        x509_file = entry.x509_bundle_file if entry is not None else None
        return cls(name, jwt_file=jwt_file, x509_file=x509_file)

    def _current_sequence(self) -> int:
        """The newest file's mtime in ms, never lower than one already published by this process
        (a file that cannot be read keeps its last good contents, so it must not lower it)."""
        for watched in (self._jwt, self._x509):
            if watched is None:
                continue
            try:
                self._sequence = max(self._sequence, watched.path.stat().st_mtime_ns // 1_000_000)
            except OSError:
                continue  # WatchedFile logs it and keeps the last good contents
        return self._sequence

    def render(self) -> tuple[bytes, str]:
        """The bundle's JSON body and its ETag."""
        dev_keys = self._jwt.current() if self._jwt is not None else ()
        certificates = self._x509.current() if self._x509 is not None else ()
        state: tuple[object, ...] = (dev_keys, certificates)
        cached = self._cached
        if cached is not None and cached[0] == state:
            return cached[1], cached[2]
        body, etag = _rendered(dev_keys, certificates, sequence=self._current_sequence(), refresh_hint=self.refresh_hint)
        self._cached = (state, body, etag)
        return body, etag
