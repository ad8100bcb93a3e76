"""Dispatch of workload JWTs to exactly one verifier (JWT-12: mutually exclusive validation rules).

The verifier set is built the way the STS builds it: ``parse_config`` on a document
with a trust-domain bundle file, an OIDC issuer with a ``jwks_file`` and a registered
client with inline ``jwks``, then ``build_identity_verifier``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_support import NOW, Provider, ec_key, jwks, sign_jwt

from tether.config import Config, parse_config
from tether.errors import ConfigError
from tether.identity.checks import IdentityError
from tether.identity.client_assertion import ClientAssertionVerifier
from tether.identity.jwks_cache import FileKeySource, StaticKeySource, parse_jwks
from tether.identity.oidc import OidcVerifier
from tether.identity.spiffe import SvidVerifier
from tether.identity.verifier import IdentityVerifier, build_identity_verifier
from tether.model import IdentityKind, WorkloadIdentity

STS = "https://sts.example"
TD = "td.example"
OIDC = "https://oidc.example"  # never contacted: keys come from jwks_file
AGENT = f"spiffe://{TD}/agent/research"
CLIENT = "client:agent-1"
SPIFFE_CLIENT = f"spiffe://{TD}/client-1"

SVID_KEY = ec_key("svid-1")
OIDC_KEY = ec_key("oidc-1")
CLIENT_KEY = ec_key("client-1")
SHARED = ec_key("shared")  # trusted by every source in the ambiguity fixture

AUDIENCES = (STS, STS + "/token", STS + "/introspect", STS + "/revoke")


def make_config(tmp_path: Path, *, shared: bool = False, extra: dict[str, Any] | None = None) -> Config:
    bundle = tmp_path / "td.json"
    oidc_jwks = tmp_path / "oidc.json"
    bundle.write_text(json.dumps(jwks(SVID_KEY, *([SHARED] if shared else []), use="jwt-svid")))
    oidc_jwks.write_text(json.dumps(jwks(OIDC_KEY, *([SHARED] if shared else []))))
    clients: list[dict[str, Any]] = [{"client_id": CLIENT, "jwks": jwks(CLIENT_KEY)}]
    data: dict[str, Any] = {
        "issuer": STS,
        "trust_domains": [{"name": TD, "bundle_file": "td.json"}],
        "oidc_issuers": [{"issuer": OIDC, "principal": "ci:{/repo}", "jwks_file": "oidc.json", "algorithms": ["ES256"]}],
        "clients": clients,
    }
    data.update(extra or {})
    return parse_config(data, path=tmp_path / "tether.toml", env={})


def token(key: Any, **claims: Any) -> str:
    return sign_jwt({"alg": "ES256", "kid": key.kid, "typ": "JWT"}, claims, key)


def svid(sub: str = AGENT, key: Any = SVID_KEY, **extra: Any) -> str:
    claims: dict[str, Any] = {"sub": sub, "aud": [STS], "exp": NOW + 300, "iat": NOW}
    claims.update(extra)
    return token(key, **claims)


def oidc(key: Any = OIDC_KEY, **extra: Any) -> str:
    claims = {"iss": OIDC, "sub": "repo:octo/app", "repo": "octo", "aud": STS, "exp": NOW + 300, "iat": NOW}
    claims.update(extra)
    return token(key, **claims)


def assertion(client_id: str = CLIENT, key: Any = CLIENT_KEY, **extra: Any) -> str:
    claims = {"iss": client_id, "sub": client_id, "aud": STS + "/token", "exp": NOW + 60, "jti": "a-1"}
    claims.update(extra)
    return token(key, **claims)


def with_verifier(config: Config, scenario: Callable[[IdentityVerifier], Awaitable[None]]) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(follow_redirects=False, timeout=5.0, trust_env=False) as http:
            await scenario(build_identity_verifier(config, http))

    asyncio.run(main())


def verify_all(config: Config, tokens: list[str]) -> list[WorkloadIdentity | IdentityError]:
    out: list[WorkloadIdentity | IdentityError] = []

    async def scenario(v: IdentityVerifier) -> None:
        for t in tokens:
            try:
                out.append(await v.verify(t, now=NOW))
            except IdentityError as exc:
                out.append(exc)

    with_verifier(config, scenario)
    return out


# --- each kind routed to its verifier -----------------------------------------------------------


def test_each_kind_routed_to_its_verifier(tmp_path: Path) -> None:
    spiffe, oidc_id, client = verify_all(make_config(tmp_path), [svid(), oidc(), assertion()])
    assert isinstance(spiffe, WorkloadIdentity)
    assert (spiffe.kind, spiffe.principal, spiffe.issuer) == (IdentityKind.SPIFFE, AGENT, f"spiffe://{TD}")
    assert isinstance(oidc_id, WorkloadIdentity)
    assert (oidc_id.kind, oidc_id.principal, oidc_id.issuer) == (IdentityKind.OIDC, "ci:octo", OIDC)
    assert isinstance(client, WorkloadIdentity)
    assert (client.kind, client.principal) == (IdentityKind.CLIENT, CLIENT)


@pytest.mark.parametrize("aud", AUDIENCES)
def test_svid_audiences_are_the_sts_endpoints(tmp_path: Path, aud: str) -> None:
    accepted, other = verify_all(make_config(tmp_path), [svid(aud=aud), svid(aud=STS + "/jwks")])
    assert isinstance(accepted, WorkloadIdentity)
    assert isinstance(other, IdentityError)
    assert "aud" in str(other)


def test_keys_are_not_shared_between_sources(tmp_path: Path) -> None:
    """The OIDC issuer's key cannot sign an SVID, the SVID key cannot sign a client assertion."""
    config = make_config(tmp_path)
    controls = verify_all(config, [svid(), oidc(), assertion()])
    assert all(isinstance(r, WorkloadIdentity) for r in controls)
    results = verify_all(config, [svid(key=OIDC_KEY), oidc(key=SVID_KEY), assertion(key=SVID_KEY), assertion(key=OIDC_KEY)])
    assert all(isinstance(r, IdentityError) for r in results), results


def test_JWT_12_svid_naming_tether_as_issuer_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    accepted, refused = verify_all(config, [svid(), svid(iss=STS)])
    assert isinstance(accepted, WorkloadIdentity)
    assert isinstance(refused, IdentityError)
    assert "tether" in str(refused)


# --- no verifier / more than one verifier ----------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "spiffe://other.example/agent", "aud": [STS]},
        {"iss": "https://other-oidc.example", "sub": "x", "aud": STS},
        {"iss": "client:unknown", "sub": "client:unknown", "aud": STS},
        {"iss": CLIENT, "sub": "client:agent-2", "aud": STS},  # not self-issued
        {"iss": OIDC + "/", "sub": "x", "aud": STS},
        {"aud": STS},
    ],
    ids=repr,
)
def test_token_no_verifier_handles_refused(tmp_path: Path, claims: dict[str, Any]) -> None:
    config = make_config(tmp_path)
    control, refused = verify_all(config, [svid(), token(SVID_KEY, exp=NOW + 60, **claims)])
    assert isinstance(control, WorkloadIdentity)
    assert isinstance(refused, IdentityError)
    assert "no configured" in str(refused)


@pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b", "a.b.c.d", '{"payload":"x"}', "x" * 20_000])
def test_malformed_token_refused_as_identity_error(tmp_path: Path, garbage: str) -> None:
    (result,) = verify_all(make_config(tmp_path), [garbage])
    assert isinstance(result, IdentityError)


def test_svid_that_is_also_an_oidc_token_refused_as_ambiguous(tmp_path: Path) -> None:
    config = make_config(tmp_path, shared=True)
    both = token(SHARED, iss=OIDC, sub=AGENT, repo="octo", aud=STS, exp=NOW + 300, iat=NOW)

    async def each_alone(http: httpx.AsyncClient) -> None:
        domain = config.trust_domains[0]
        assert domain.bundle_file is not None
        svids = SvidVerifier({TD: FileKeySource(domain.bundle_file)}, audiences=AUDIENCES, max_lifetime=3600, skew=10)
        issuer = OidcVerifier(config.oidc_issuers[0], http, max_lifetime=3600, skew=10)
        # positive controls: each verifier on its own accepts the token
        assert (await svids.verify(both, now=NOW)).principal == AGENT
        assert (await issuer.verify(both, now=NOW)).principal == "ci:octo"
        with pytest.raises(IdentityError, match="more than one"):
            await IdentityVerifier([svids, issuer]).verify(both, now=NOW)

    async def main() -> None:
        async with httpx.AsyncClient(follow_redirects=False, timeout=5.0, trust_env=False) as http:
            await each_alone(http)

    asyncio.run(main())
    (result,) = verify_all(config, [both])
    assert isinstance(result, IdentityError)
    assert "more than one" in str(result)


def test_client_assertion_that_is_also_an_svid_refused_as_ambiguous(tmp_path: Path) -> None:
    config = make_config(tmp_path, shared=True)
    both = assertion(SPIFFE_CLIENT, SHARED, aud=[STS])
    # configuration already refuses a registered client whose id is a SPIFFE ID of a trust domain...
    with pytest.raises(ConfigError) as refused:
        (tmp_path / "refused").mkdir()
        make_config(tmp_path / "refused", extra={"clients": [{"client_id": SPIFFE_CLIENT, "jwks": jwks(SHARED)}]})
    assert refused.value.key == "clients[0].client_id"

    async def each_alone() -> None:
        # ...and were such a pair of verifiers built anyway, the dispatcher refuses the token as ambiguous
        domain = config.trust_domains[0]
        assert domain.bundle_file is not None
        svids = SvidVerifier({TD: FileKeySource(domain.bundle_file)}, audiences=AUDIENCES, max_lifetime=3600, skew=10)
        registered = {SPIFFE_CLIENT: StaticKeySource(parse_jwks(jwks(SHARED)))}
        clients = ClientAssertionVerifier(registered, audiences=AUDIENCES, max_lifetime=3600, skew=10)
        assert (await svids.verify(both, now=NOW)).kind is IdentityKind.SPIFFE
        assert (await clients.verify(both, now=NOW)).kind is IdentityKind.CLIENT
        with pytest.raises(IdentityError, match="more than one"):
            await IdentityVerifier([svids, clients]).verify(both, now=NOW)

    asyncio.run(each_alone())


def test_empty_verifier_set_refuses_everything() -> None:
    with pytest.raises(IdentityError, match="no configured"):
        asyncio.run(IdentityVerifier([]).verify(svid(), now=NOW))


# --- bundle_url trust domains are fetched from the pinned URL --------------------------------------


def test_trust_domain_bundle_url(tmp_path: Path, provider: Provider) -> None:
    path = provider.prefix() + "/bundle"
    provider.set_json(path, jwks(SVID_KEY, use="jwt-svid"))
    remote = "remote.example"
    config = parse_config(
        {"issuer": STS, "trust_domains": [{"name": remote, "bundle_url": provider.url(path)}], "identity": {"refresh": 60}},
        path=tmp_path / "tether.toml",
        env={},
    )
    sub = f"spiffe://{remote}/agent"

    async def scenario(v: IdentityVerifier) -> None:
        assert (await v.verify(svid(sub), now=NOW)).principal == sub
        assert (await v.verify(svid(sub, exp=NOW + 360, iat=NOW + 60), now=NOW + 60)).principal == sub
        assert provider.count(path) == 1
        # identity.refresh = 60 is the bundle ttl
        assert (await v.verify(svid(sub, exp=NOW + 361, iat=NOW + 61), now=NOW + 61)).principal == sub
        assert provider.count(path) == 2

    with_verifier(config, scenario)
