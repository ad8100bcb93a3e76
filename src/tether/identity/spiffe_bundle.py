"""SPIFFE bundles (SPIFFE Trust Domain and Bundle §4) and bundle endpoints, ``https_web`` profile (§5).

A bundle is a JWKS of one trust domain's authorities: ``"use": "jwt-svid"`` keys (a ``kid`` each,
§4.2.1) and ``"use": "x509-svid"`` CA certificates (one ``x5c`` each, §4.2.2), with
``spiffe_sequence`` (it grows whenever the contents change, §4.1.1) and ``spiffe_refresh_hint``
(seconds, §4.1.2). ``parse_bundle`` is strict: a malformed authority refuses the whole bundle,
never a silently shorter one; entries of a ``use`` this version does not know are ignored
(§4.2: forward compatible).

``BundleEndpointSource`` follows a bundle endpoint (§5.2.1 ``https_web``): HTTPS only, verified
with the Web PKI or with a pinned ``ca_file`` (only that CA: a private one such as ``tether init
--tls``'s dev CA), no redirects, bounded size. It refreshes per the endpoint's hint, bounded both
ways (never slower than the configured ``refresh``, never faster than ``floor``), and early for
an unknown ``kid`` (at most once per ``floor``). A failed refresh, a malformed bundle or one
whose sequence goes backwards (a replayed or stale endpoint) leaves the last good bundle in
force (§5.1: clients keep the latest bundle and compare freshness by its sequence).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, RSAKey

from tether.identity.jwks_cache import KeySet, fetch_json, import_public_jwk
from tether.rules.jws import PublicKey

__all__ = [
    "JWT_SVID",
    "X509_SVID",
    "Bundle",
    "BundleEndpointSource",
    "bundle_document",
    "parse_bundle",
    "refresh_interval",
]

log = logging.getLogger("tether.identity")

JWT_SVID = "jwt-svid"
X509_SVID = "x509-svid"
#: more authorities than any trust domain publishes: a bigger bundle is refused, not truncated
MAX_AUTHORITIES = 100
#: the fastest an endpoint is polled, whatever its hint or a stranger's unknown ``kid`` asks for
DEFAULT_FLOOR = 5.0
#: the longest one fetch of a bundle may take, connection and whole body included
FETCH_SECONDS = 10.0


@dataclass(frozen=True)
class Bundle:
    """One trust domain's authorities as a bundle states them."""

    jwt: KeySet
    #: DER CA certificates that X.509-SVIDs of the domain chain to
    x509: tuple[bytes, ...]
    sequence: int | None
    #: seconds; ``None`` when the bundle gives no hint (or gives 0)
    refresh_hint: int | None


def _optional_count(document: Mapping[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer")
    return value


def _jwt_authority(entry: Mapping[str, Any]) -> PublicKey:
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 200:
        raise ValueError("a jwt-svid key must have a kid")
    try:
        return import_public_jwk(entry)
    except ValueError as exc:
        raise ValueError(f"jwt-svid key `{kid[:64]}`: {exc}") from exc


def _x509_authority(entry: Mapping[str, Any]) -> bytes:
    chain = entry.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        raise ValueError("an x509-svid key must carry exactly one certificate in x5c")
    try:
        der = base64.b64decode(chain[0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("an x509-svid certificate does not parse") from exc
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError("an x509-svid authority must be a CA certificate")
    return der


def parse_bundle(document: Any) -> Bundle:
    """The authorities of a SPIFFE bundle document; ``ValueError`` if any part of it is malformed.

    Refuses a bundle without ``keys`` or without any authority, a duplicate ``kid``, a key that
    carries private material or does not import, and more than ``MAX_AUTHORITIES`` entries.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a spiffe bundle (a json web key set)")
    entries = document["keys"]
    if len(entries) > MAX_AUTHORITIES:
        raise ValueError(f"more than {MAX_AUTHORITIES} keys")
    sequence = _optional_count(document, "spiffe_sequence")
    hint = _optional_count(document, "spiffe_refresh_hint")
    jwt: list[PublicKey] = []
    kids: set[str] = set()
    certificates: list[bytes] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("use"), str):
            raise ValueError("every bundle key must be an object with a `use`")
        if entry["use"] == JWT_SVID:
            key = _jwt_authority(entry)
            if key.kid in kids:
                raise ValueError(f"kid `{str(key.kid)[:64]}` appears twice")
            kids.add(str(key.kid))
            jwt.append(key)
        elif entry["use"] == X509_SVID:
            certificates.append(_x509_authority(entry))
    if not jwt and not certificates:
        raise ValueError("the bundle has no authorities")
    return Bundle(KeySet(jwt), tuple(certificates), sequence, hint or None)


def bundle_document(
    jwt_keys: Sequence[Mapping[str, Any]], certificates: Sequence[bytes], *, sequence: int, refresh_hint: int
) -> dict[str, Any]:
    """A SPIFFE bundle document: each public JWK marked ``jwt-svid``, each DER CA as an ``x509-svid`` ``x5c``."""
    keys: list[dict[str, Any]] = [{**jwk, "use": JWT_SVID} for jwk in jwt_keys]
    for der in certificates:
        public = x509.load_der_x509_certificate(der).public_key()
        jwk = (ECKey if isinstance(public, ec.EllipticCurvePublicKey) else RSAKey).import_key(public)  # type: ignore[arg-type]
        keys.append({**jwk.as_dict(private=False), "use": X509_SVID, "x5c": [base64.b64encode(der).decode("ascii")]})
    return {"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint}


def refresh_interval(hint: int | None, *, refresh: float, floor: float) -> float:
    """How long a fetched bundle stands: its hint, but never longer than ``refresh`` nor shorter than ``floor``."""
    wanted = refresh if hint is None else float(hint)
    return max(floor, min(refresh, wanted))


class BundleEndpointSource:
    """A trust domain's bundle from its endpoint (``KeySource``: the JWT authorities)."""

    def __init__(self, url: str, *, ca_file: Path | None = None, refresh: float = 300.0,
                 floor: float = DEFAULT_FLOOR) -> None:  # fmt: skip
        if not url.startswith("https://"):
            raise ValueError("a bundle endpoint must be https (the spiffe https_web profile)")
        self.url = url
        self._refresh = refresh
        self._floor = min(floor, refresh)
        # only the pinned CA when one is given; the system's Web PKI otherwise (never no verification)
        self._verify: ssl.SSLContext = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.bundle: Bundle | None = None
        self._keyset = KeySet([])
        self.fetched_at: float | None = None
        self._attempted_at = float("-inf")
        #: consecutive failed refreshes (a health signal; reset by a good one)
        self.failures = 0
        self._lock = asyncio.Lock()

    @property
    def interval(self) -> float:
        return refresh_interval(self.bundle.refresh_hint if self.bundle else None, refresh=self._refresh, floor=self._floor)

    def _due(self, kid: object, now: float) -> bool:
        if self.fetched_at is None or now - self.fetched_at >= self.interval:
            return True
        return kid is not None and self._keyset.find(kid) is None

    async def keys(self, *, kid: object, now: float) -> KeySet:
        if self._due(kid, now):
            async with self._lock:
                if self._due(kid, now) and now - self._attempted_at >= self._floor:
                    self._attempted_at = now
                    await self.refresh(now)
        return self._keyset

    async def refresh(self, now: float) -> bool:
        """Fetch the bundle once; ``True`` if a new one is in force (else the last good one stays)."""
        try:
            # one deadline for the whole fetch: a peer trickling its bundle must not hold the lock
            # (and every crossing or SVID check waiting on it) for a 5 s read timeout per chunk
            bundle = await asyncio.wait_for(self._fetch(), FETCH_SECONDS)
            self._accept(bundle)
        except (httpx.HTTPError, ValueError, TimeoutError) as exc:
            self.failures += 1
            log.warning("spiffe bundle %s could not be refreshed (keeping the last good one): %s", self.url, exc)
            return False
        self.failures = 0
        self._keyset = bundle.jwt.keeping(self._keyset)
        self.bundle = bundle
        self.fetched_at = now
        return True

    async def _fetch(self) -> Bundle:
        async with httpx.AsyncClient(verify=self._verify, follow_redirects=False, timeout=5.0, trust_env=False) as http:
            return parse_bundle(await fetch_json(http, self.url))

    def _accept(self, bundle: Bundle) -> None:
        """Refuse a bundle older than the one in force (``spiffe_sequence`` lower, or dropped)."""
        last = self.bundle.sequence if self.bundle is not None else None
        if last is None:
            return
        if bundle.sequence is None or bundle.sequence < last:
            raise ValueError(f"bundle sequence went backwards ({bundle.sequence} after {last})")
