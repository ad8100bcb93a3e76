"""Workload tokens from configured OIDC issuers (OIDC Discovery 1.0 §4, RFC 8414 §3.3).

Kubernetes projected service-account tokens and CI runners' OIDC tokens are the examples. The
issuer is pinned in configuration: discovery must return exactly that ``issuer`` and its
``jwks_uri`` is the only key source. Claims map to a principal by a template whose
placeholders are JSON pointers into the claims, e.g.
``k8s:{/kubernetes.io/namespace}/{/kubernetes.io/serviceaccount/name}``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import httpx

from tether.config import OidcIssuerConfig
from tether.identity.checks import Acceptance, IdentityError, check_typ, unverified, verify_signed
from tether.identity.jwks_cache import FileKeySource, KeySource, UrlKeySource, fetch_json
from tether.model import IdentityKind, WorkloadIdentity
from tether.rules.principal import is_principal

__all__ = ["OidcVerifier", "render_principal"]

_PLACEHOLDER = re.compile(r"\{(/[^{}]*)\}")
_VALUE = re.compile(r"[A-Za-z0-9._:@-]{1,253}")
_DISCOVERY_RETRY = 10.0


def _pointer(claims: Mapping[str, Any], pointer: str) -> Any:
    node: Any = claims
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise IdentityError(f"claim `{pointer}` missing")
        node = node[part]
    return node


def render_principal(template: str, claims: Mapping[str, Any]) -> str:
    """Fill a principal template from claims; each value must be a plain name segment."""

    def fill(match: re.Match[str]) -> str:
        value = _pointer(claims, match.group(1))
        if not isinstance(value, str) or not _VALUE.fullmatch(value) or value in (".", ".."):
            raise IdentityError(f"claim `{match.group(1)}` is not a plain name")
        return value

    principal = _PLACEHOLDER.sub(fill, template)
    if "{" in principal or "}" in principal or not is_principal(principal):
        raise IdentityError("mapped principal is malformed")
    return principal


class OidcVerifier:
    def __init__(self, config: OidcIssuerConfig, client: httpx.AsyncClient, *, max_lifetime: int, skew: int) -> None:
        self.config = config
        self._client = client
        self._accept = Acceptance(IdentityKind.OIDC, config.algorithms, (config.audience,), max_lifetime, skew)
        self._source: KeySource | None = None
        self._discovery_failed_at = float("-inf")
        if config.jwks_file is not None:
            self._source = FileKeySource(config.jwks_file)
        elif config.jwks_uri is not None:
            self._source = UrlKeySource(config.jwks_uri, client)

    def handles(self, claims: Mapping[str, Any]) -> bool:
        return claims.get("iss") == self.config.issuer

    async def _keys(self, now: float) -> KeySource:
        """Discover the JWKS once; after a failure, wait ``_DISCOVERY_RETRY`` s before asking again."""
        if self._source is None:
            if now - self._discovery_failed_at < _DISCOVERY_RETRY:
                raise IdentityError(f"discovery for {self.config.issuer} failed recently; not retrying yet")
            try:
                self._source = await self._discover()
            except IdentityError:
                self._discovery_failed_at = now
                raise
        return self._source

    async def _discover(self) -> KeySource:
        url = self.config.issuer + "/.well-known/openid-configuration"
        try:
            meta = await fetch_json(self._client, url)
        except (httpx.HTTPError, ValueError) as exc:
            raise IdentityError(f"discovery for {self.config.issuer} failed: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("issuer") != self.config.issuer:
            raise IdentityError("discovery document names a different issuer")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IdentityError("discovery document has no usable jwks_uri")
        return UrlKeySource(jwks_uri, self._client)

    async def verify(self, token: str, *, now: float) -> WorkloadIdentity:
        header, claims = unverified(token)
        if claims.get("iss") != self.config.issuer:
            raise IdentityError("iss is not this issuer")
        check_typ(header)
        keys = await self._keys(now)
        principal = functools.partial(render_principal, self.config.principal)
        return await verify_signed(token, header, keys, self._accept, issuer=self.config.issuer, principal=principal, now=now)
