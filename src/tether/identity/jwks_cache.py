"""Trusted key sets (JWKS and SPIFFE bundles) from a file or a pinned URL, cached.

Keys come only from configuration (ASVS 9.1.3): a token's ``jku``/``x5u``/``jwk`` is never
followed. A URL is fetched without redirects, with a timeout and a size cap (no SSRF), and
refreshed when its TTL passes or a token names an unknown ``kid``, at most once per
``min_refresh`` seconds so unknown kids cannot hammer the issuer. A failed refresh keeps the
last good set.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from tether.identity.watched import WatchedFile
from tether.rules.jws import PublicKey, rsa_modulus_too_small
from tether.streams import read_at_most

__all__ = [
    "FileKeySource",
    "KeySet",
    "KeySource",
    "StaticKeySource",
    "UrlKeySource",
    "fetch_json",
    "import_public_jwk",
    "load_json",
    "parse_jwks",
]

log = logging.getLogger("tether.identity")

MAX_DOCUMENT_BYTES = 256 * 1024
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CLASSES: Mapping[str, type[ECKey] | type[OKPKey] | type[RSAKey]] = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}


class KeySet:
    """Public verification keys by ``kid``; keys without a ``kid`` are usable only alone."""

    def __init__(self, keys: list[PublicKey]) -> None:
        self.by_kid: dict[str, PublicKey] = {}
        self.anonymous: list[PublicKey] = []
        for key in keys:
            kid = key.kid
            if kid:
                self.by_kid[kid] = key
            else:
                self.anonymous.append(key)

    def find(self, kid: object) -> PublicKey | None:
        if isinstance(kid, str):
            return self.by_kid.get(kid)
        if kid is None and len(self.anonymous) + len(self.by_kid) == 1:
            return (self.anonymous or list(self.by_kid.values()))[0]
        return None

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.anonymous)

    def keeping(self, previous: KeySet) -> KeySet:
        """This set, with each key that is unchanged since ``previous`` (same ``kid``, same
        public JWK) replaced by the previous object: caches keyed on the key object (the
        resource server's verified tokens) survive a refresh that changed nothing for them,
        so a stranger's unknown ``kid`` cannot flush them. A changed key is a new object."""
        for kid, key in self.by_kid.items():
            old = previous.by_kid.get(kid)
            if old is not None and old is not key and old.as_dict(private=False) == key.as_dict(private=False):
                self.by_kid[kid] = old
        return self


def parse_jwks(document: Any) -> KeySet:
    """Parse a JWKS or SPIFFE bundle: public asymmetric signing keys only.

    SPIFFE bundles mark JWT-SVID keys ``"use": "jwt-svid"``; ``x509-svid`` and
    encryption keys are ignored, and so is any entry carrying private material.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a json web key set")
    keys: list[PublicKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use") not in (None, "sig", "jwt-svid"):
            continue
        if _PRIVATE & set(entry):
            log.warning("ignoring a key set entry that carries private key material")
            continue
        key_class = _CLASSES.get(str(entry.get("kty")))
        if key_class is None or (key_class is RSAKey and rsa_modulus_too_small(entry)):
            continue
        try:
            keys.append(import_public_jwk(entry))
        except ValueError:
            log.warning("ignoring an unusable key set entry kid=%s", str(entry.get("kid"))[:64])
    return KeySet(keys)


def import_public_jwk(entry: Mapping[str, Any]) -> PublicKey:
    """One public asymmetric signing key (EC, OKP or RSA of at least 2048 bits), its ``use`` dropped;
    ``ValueError`` saying why it is not one (private members, unknown ``kty``, bad parameters)."""
    if _PRIVATE & set(entry):
        raise ValueError("the key carries private key material")
    key_class = _CLASSES.get(str(entry.get("kty")))
    if key_class is None:
        raise ValueError("the key type is not EC, OKP or RSA")
    if key_class is RSAKey and rsa_modulus_too_small(entry):
        raise ValueError("the RSA modulus is too small")
    clean = {k: v for k, v in entry.items() if k != "use"}
    try:
        return key_class.import_key(clean)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError("the key parameters do not make a key") from exc


class KeySource(Protocol):
    async def keys(self, *, kid: object, now: float) -> KeySet:
        """The current key set, refreshed first if ``kid`` is unknown and a refresh is allowed."""
        ...


class StaticKeySource:
    def __init__(self, keyset: KeySet) -> None:
        self._keyset = keyset

    async def keys(self, *, kid: object, now: float) -> KeySet:
        return self._keyset


class FileKeySource:
    """A JWKS file, re-read when it changes (trust bundle rotation; ``identity.watched``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = WatchedFile(
            path, lambda data: parse_jwks(load_json(data[:MAX_DOCUMENT_BYTES])), KeySet([]), what="trust bundle", kept="key set"
        )

    async def keys(self, *, kid: object, now: float) -> KeySet:
        return self._file.current()


async def fetch_json(client: httpx.AsyncClient, url: str) -> Any:
    """GET a JSON document: no redirects, bounded size, 2xx only."""
    async with client.stream("GET", url, headers={"Accept": "application/json"}, follow_redirects=False) as response:
        if response.status_code != 200:
            raise ValueError(f"{url} answered {response.status_code}")
        too_large = ValueError(f"{url} document exceeds {MAX_DOCUMENT_BYTES} bytes")
        body = await read_at_most(response.aiter_bytes(), MAX_DOCUMENT_BYTES, lambda: too_large)
    return load_json(body)


def load_json(body: bytes) -> Any:
    """``json.loads`` with every failure (including absurd nesting) reported as ``ValueError``."""
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise ValueError("json document is nested too deeply") from exc


class UrlKeySource:
    def __init__(self, url: str, client: httpx.AsyncClient, *, ttl: int = 300, min_refresh: float = 10.0) -> None:
        self.url = url
        self._client = client
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._keyset = KeySet([])
        self._fetched_at: float | None = None
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    def _needs_refresh(self, kid: object, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > self._ttl or self._keyset.find(kid) is None

    async def keys(self, *, kid: object, now: float) -> KeySet:
        """Refresh under the lock so concurrent callers wait for one fetch instead of seeing an empty set."""
        if not self._needs_refresh(kid, now):
            return self._keyset
        async with self._lock:
            if self._needs_refresh(kid, now) and now - self._attempted_at >= self._min_refresh:
                self._attempted_at = now
                try:
                    self._keyset = parse_jwks(await fetch_json(self._client, self.url)).keeping(self._keyset)
                    self._fetched_at = now
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("key set %s could not be refreshed: %s", self.url, exc)
        return self._keyset
