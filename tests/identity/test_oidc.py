"""OIDC-issued workload tokens against a real provider on loopback (OIDC Discovery §4, RFC 8414 §3.3).

The provider is a Starlette app under uvicorn (``identity_support.Provider``) that
counts every request, so fetch behaviour — discovery, redirects, refresh rate — is
asserted at the provider, not inferred. Each test has its own issuer path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from identity_support import DROP, NOW, Provider, Tenant, apply, ec_key, jwks, rsa_key, sign_jwt
from joserfc.jwk import RSAKey

from tether.config import OidcIssuerConfig
from tether.identity.checks import IdentityError
from tether.identity.jwks_cache import MAX_DOCUMENT_BYTES
from tether.identity.oidc import OidcVerifier, render_principal
from tether.model import IdentityKind, WorkloadIdentity

STS = "https://sts.example"
TEMPLATE = "k8s:{/kubernetes.io/namespace}/{/kubernetes.io/serviceaccount/name}"
RSA_1 = rsa_key("k8s-1")
RSA_2 = rsa_key("k8s-2")
EC_1 = ec_key("k8s-ec")
STRANGER = ec_key("unknown")


def sa_claims(issuer: str, *, namespace: Any = "ns", name: Any = "name", now: int = NOW, **extra: Any) -> dict[str, Any]:
    """A Kubernetes projected service-account token's claims."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": [STS],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": "0b5a1d4e-6f0e-4d5c-9a47-2f7e6c1b8a90"},
        },
    }
    return apply(claims, extra)


def sa_token(
    issuer: str, key: Any = RSA_1, *, header: dict[str, Any] | None = None, alg: str | None = None, **claims: Any
) -> str:
    base = {"alg": "RS256" if isinstance(key, RSAKey) else "ES256", "kid": key.kid}
    return sign_jwt(apply(base, header or {}), sa_claims(issuer, **claims), key, alg=alg)


def issuer_config(tenant: Tenant, **overrides: Any) -> OidcIssuerConfig:
    options: dict[str, Any] = {
        "issuer": tenant.issuer,
        "audience": STS,
        "principal": TEMPLATE,
        "algorithms": ("RS256", "ES256"),
    }
    options.update(overrides)
    return OidcIssuerConfig(**options)


Scenario = Callable[[OidcVerifier], Awaitable[None]]


def run(config: OidcIssuerConfig, scenario: Scenario, *, max_lifetime: int = 3600) -> None:
    """Run ``scenario`` with a verifier whose HTTP client is closed afterwards."""

    async def main() -> None:
        async with httpx.AsyncClient(follow_redirects=False, timeout=5.0, trust_env=False) as http:
            await scenario(OidcVerifier(config, http, max_lifetime=max_lifetime, skew=10))

    asyncio.run(main())


async def refused(v: OidcVerifier, token: str, match: str | None = None, *, now: float = NOW) -> None:
    with pytest.raises(IdentityError, match=match):
        await v.verify(token, now=now)


@pytest.fixture
def tenant(provider: Provider) -> Tenant:
    t = Tenant(provider)
    t.publish(RSA_1, EC_1)
    return t


# --- accepted: a Kubernetes service-account token ------------------------------------------


def test_k8s_service_account_token_mapped_to_principal(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        identity: WorkloadIdentity = await v.verify(sa_token(tenant.issuer), now=NOW)
        assert identity.principal == "k8s:ns/name"
        assert identity.kind is IdentityKind.OIDC
        assert identity.issuer == tenant.issuer
        assert identity.exp == NOW + 600
        assert identity.jti is None
        assert identity.claims["sub"] == "system:serviceaccount:ns:name"
        # an ES256 token from the same issuer; discovery and JWKS are not fetched again
        second = await v.verify(sa_token(tenant.issuer, EC_1, namespace="other", name="sa-2", jti="t-2"), now=NOW + 1)
        assert second.principal == "k8s:other/sa-2"
        assert second.jti == "t-2"

    run(issuer_config(tenant), scenario)
    assert tenant.discovery_hits == 1
    assert tenant.jwks_hits == 1


def test_handles_pinned_issuer_only(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert v.handles({"iss": tenant.issuer})
        assert not v.handles({"iss": tenant.issuer + "/"})
        assert not v.handles({"iss": tenant.issuer.upper()})
        assert not v.handles({})

    run(issuer_config(tenant), scenario)
    assert tenant.discovery_hits == 0  # handles() never fetches


# --- AUX-03: discovery must name the configured issuer ----------------------------------------


@pytest.mark.parametrize("suffix", ["-evil", "/", "/sub"])
def test_AUX_03_discovery_naming_other_issuer_refused(provider: Provider, tenant: Tenant, suffix: str) -> None:
    async def control(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"

    run(issuer_config(tenant), control)

    liar = Tenant(provider)
    liar.publish(RSA_1, issuer=liar.issuer + suffix)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(liar.issuer), "different issuer")

    run(issuer_config(liar), scenario)
    assert liar.discovery_hits == 1
    assert liar.jwks_hits == 0  # the document was not used at all


def test_AUX_03_discovery_naming_an_issuer_we_trust_is_not_enough(provider: Provider, tenant: Tenant) -> None:
    """A document at issuer B claiming to be issuer A (whose keys we trust) is still refused."""
    impostor = Tenant(provider)
    provider.set_json(impostor.discovery_path, {"issuer": tenant.issuer, "jwks_uri": tenant.jwks_url})

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(impostor.issuer), "different issuer")

    run(issuer_config(impostor), scenario)
    assert tenant.jwks_hits == 0


@pytest.mark.parametrize(
    "document",
    [{"jwks_uri": None}, {"jwks_uri": DROP}, {"jwks_uri": "file:///etc/passwd"}, {"jwks_uri": 5}, {"jwks_uri": "ftp://x/jwks"}],
)
def test_discovery_without_usable_jwks_uri_refused(provider: Provider, tenant: Tenant, document: dict[str, Any]) -> None:
    broken = Tenant(provider)
    provider.set_json(broken.discovery_path, apply({"issuer": broken.issuer, "jwks_uri": broken.jwks_url}, document))
    broken.set_keys(RSA_1)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(broken.issuer), "jwks_uri")

    run(issuer_config(broken), scenario)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'"issuer"'])
def test_discovery_not_a_json_object_refused(provider: Provider, body: bytes) -> None:
    broken = Tenant(provider)
    provider.set_raw(broken.discovery_path, body)
    broken.set_keys(RSA_1)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(broken.issuer), "discovery")

    run(issuer_config(broken), scenario)


# --- MCP-08: fetchers do not follow redirects; documents are size-capped ----------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_MCP_08_discovery_redirect_not_followed(provider: Provider, tenant: Tenant, status: int) -> None:
    moved = Tenant(provider)
    target = moved.prefix + "/moved/.well-known/openid-configuration"
    # the target would serve a perfectly valid document for this issuer
    provider.set_json(target, {"issuer": moved.issuer, "jwks_uri": tenant.jwks_url})
    provider.set_redirect(moved.discovery_path, provider.url(target), status=status)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(moved.issuer), f"answered {status}")

    run(issuer_config(moved), scenario)
    assert moved.discovery_hits == 1
    assert provider.count(target) == 0


def test_MCP_08_jwks_redirect_not_followed(provider: Provider, tenant: Tenant) -> None:
    moved = Tenant(provider)
    provider.set_json(moved.discovery_path, {"issuer": moved.issuer, "jwks_uri": moved.jwks_url})
    provider.set_redirect(moved.jwks_path, tenant.jwks_url)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(moved.issuer), "kid")

    run(issuer_config(moved), scenario)
    assert moved.jwks_hits == 1
    assert tenant.jwks_hits == 0


def test_MCP_08_oversized_jwks_refused(provider: Provider, tenant: Tenant) -> None:
    big = Tenant(provider)
    provider.set_json(big.discovery_path, {"issuer": big.issuer, "jwks_uri": big.jwks_url})
    provider.set_json(big.jwks_path, {**jwks(RSA_1), "padding": "x" * MAX_DOCUMENT_BYTES})  # a valid JWKS, too big

    async def control(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"

    run(issuer_config(tenant), control)

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(big.issuer), "kid")

    run(issuer_config(big), scenario)
    assert big.jwks_hits == 1


def test_MCP_08_oversized_discovery_document_refused(provider: Provider, tenant: Tenant) -> None:
    big = Tenant(provider)
    provider.set_json(big.discovery_path, {"issuer": big.issuer, "jwks_uri": tenant.jwks_url, "pad": "x" * MAX_DOCUMENT_BYTES})

    async def scenario(v: OidcVerifier) -> None:
        await refused(v, sa_token(big.issuer), "exceeds")

    run(issuer_config(big), scenario)
    assert tenant.jwks_hits == 0


def test_MCP_08_failed_discovery_not_retried_for_every_token(provider: Provider) -> None:
    """Tokens naming an issuer whose discovery fails must not each cause an outbound request.

    The key-set fetcher limits refreshes to one per ``min_refresh`` so unknown kids cannot be
    used to hammer an issuer; discovery is the same outbound fetch and needs the same bound.
    """
    down = Tenant(provider)
    provider.set_raw(down.discovery_path, b"{}", status=503)

    async def scenario(v: OidcVerifier) -> None:
        for _ in range(5):
            await refused(v, sa_token(down.issuer), "discovery")

    run(issuer_config(down), scenario)
    assert down.discovery_hits == 1


# --- key rotation and refresh rate -------------------------------------------------------------


def test_key_rotation_new_kid_accepted_after_refresh(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, RSA_1), now=NOW)).principal == "k8s:ns/name"
        tenant.set_keys(RSA_2)  # the provider rotates: old key gone, new kid
        later = NOW + 60  # well inside the JWKS ttl: only the unknown kid triggers a refresh
        identity = await v.verify(sa_token(tenant.issuer, RSA_2, now=later), now=later)
        assert identity.principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, RSA_1, now=later), "kid", now=later)

    run(issuer_config(tenant), scenario)
    assert tenant.jwks_hits == 2
    assert tenant.discovery_hits == 1


def test_unknown_kids_refresh_at_most_once_per_min_refresh(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        assert tenant.jwks_hits == 1
        for i, now in enumerate(range(NOW, NOW + 10)):  # min_refresh is 10 s
            token = sa_token(tenant.issuer, STRANGER, header={"kid": f"unknown-{i}"}, now=now)
            await refused(v, token, "kid", now=now)
        assert tenant.jwks_hits == 1
        for i, now in enumerate(range(NOW + 10, NOW + 20)):
            token = sa_token(tenant.issuer, STRANGER, header={"kid": f"later-{i}"}, now=now)
            await refused(v, token, "kid", now=now)
        assert tenant.jwks_hits == 2
        # concurrent tokens with unknown kids at one instant: one refresh between them
        now = NOW + 30
        tokens = [sa_token(tenant.issuer, STRANGER, header={"kid": f"burst-{i}"}, now=now) for i in range(20)]
        results = await asyncio.gather(*(v.verify(t, now=now) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, IdentityError) for r in results)
        assert tenant.jwks_hits == 3
        # the known key still works throughout
        assert (await v.verify(sa_token(tenant.issuer, now=now), now=now)).principal == "k8s:ns/name"

    run(issuer_config(tenant), scenario)


def test_provider_down_keeps_last_good_key_set() -> None:
    own = Provider().start()
    try:
        tenant = Tenant(own)
        tenant.publish(RSA_1)

        async def scenario(v: OidcVerifier) -> None:
            assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
            own.stop()  # connection refused from now on
            later = NOW + 3600  # long past the JWKS ttl: a refresh is attempted and fails
            assert (await v.verify(sa_token(tenant.issuer, now=later), now=later)).principal == "k8s:ns/name"
            await refused(v, sa_token(tenant.issuer, RSA_2, now=later + 20), "kid", now=later + 20)

        run(issuer_config(tenant), scenario)
        assert tenant.jwks_hits == 1
    finally:
        own.stop()


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b'{"keys": []}'), (503, b""), (200, b"not json"), (200, b'{"no": "keys"}'), (404, b"{}")],
)
def test_provider_error_keeps_last_good_key_set(tenant: Tenant, provider: Provider, status: int, body: bytes) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        provider.set_raw(tenant.jwks_path, body, status=status)
        later = NOW + 3600
        assert (await v.verify(sa_token(tenant.issuer, now=later), now=later)).principal == "k8s:ns/name"

    run(issuer_config(tenant), scenario)
    assert tenant.jwks_hits == 2  # the refresh was attempted


# --- claim mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a/b", "a b", " ns", "ns\n", "", "x" * 254, "ns\u00e9", "a{b}", 5, 1.5, True, None, ["ns"], {"ns": "x"}],
    ids=repr,
)
def test_claim_value_not_a_plain_name_refused(tenant: Tenant, value: Any) -> None:
    assert render_principal(TEMPLATE, sa_claims(tenant.issuer)) == "k8s:ns/name"
    with pytest.raises(IdentityError, match="not a plain name"):
        render_principal(TEMPLATE, sa_claims(tenant.issuer, namespace=value))

    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, name=value), "not a plain name")

    run(issuer_config(tenant), scenario)


@pytest.mark.parametrize("value", [".", ".."])
def test_claim_value_dot_segment_refused(value: str) -> None:
    """``.``/``..`` are path dot-segments, not names: ``k8s:../name`` must not be minted."""
    assert render_principal(TEMPLATE, sa_claims("x")) == "k8s:ns/name"
    with pytest.raises(IdentityError):
        render_principal(TEMPLATE, sa_claims("x", namespace=value))


def test_render_principal_template_edge_cases() -> None:
    claims = {"sub": "repo:octo", "a/b": "slash", "a~b": "tilde", "deep": {"list": ["x"]}, "n": "v"}
    assert render_principal("ci:{/sub}", claims) == "ci:repo:octo"
    assert render_principal("ci:{/a~1b}", claims) == "ci:slash"  # RFC 6901 escapes
    assert render_principal("ci:{/a~0b}", claims) == "ci:tilde"
    assert render_principal("ci:{/n}-{/n}", claims) == "ci:v-v"
    assert render_principal("ci:{/n}:{/sub}@x", claims) == "ci:v:repo:octo@x"
    assert render_principal("ci:{/" + "}", {"": "empty-key"}) == "ci:empty-key"
    with pytest.raises(IdentityError, match="missing"):
        render_principal("ci:{/nope}", claims)
    with pytest.raises(IdentityError, match="missing"):
        render_principal("ci:{/deep/list/0}", claims)  # pointers do not index arrays
    with pytest.raises(IdentityError, match="missing"):
        render_principal("ci:{/n/deeper}", claims)
    with pytest.raises(IdentityError, match="not a plain name"):
        render_principal("ci:{/deep}", claims)
    # the rendered result must itself be a principal
    with pytest.raises(IdentityError, match="malformed"):
        render_principal("not a principal {/n}", claims)
    with pytest.raises(IdentityError, match="malformed"):
        render_principal("spiffe:{/n}", claims)
    with pytest.raises(IdentityError, match="malformed"):
        render_principal("{/n}", claims)


def test_render_principal_unfilled_placeholder_refused() -> None:
    """A placeholder that is not a JSON pointer must not survive as literal text.

    ``k8s:{sub}`` would otherwise map every token of the issuer to the one principal
    ``k8s:{sub}``.
    """
    assert render_principal("k8s:{/sub}", {"sub": "a"}) == "k8s:a"
    with pytest.raises(IdentityError):
        render_principal("k8s:{sub}", {"sub": "a"})
    with pytest.raises(IdentityError):
        render_principal("k8s:{/sub}{", {"sub": "a"})


def test_missing_claim_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        no_name: dict[str, Any] = {"kubernetes.io": {"namespace": "ns"}}
        no_k8s: dict[str, Any] = {"kubernetes.io": DROP}
        await refused(v, sa_token(tenant.issuer, **no_name), "missing")
        await refused(v, sa_token(tenant.issuer, **no_k8s), "missing")

    run(issuer_config(tenant), scenario)


# --- iss, aud, exp, alg ----------------------------------------------------------------------


def test_JWT_09_wrong_aud_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, aud=STS), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, aud=["https://kubernetes.default.svc"]), "aud does not name")
        await refused(v, sa_token(tenant.issuer, aud=STS + "/token"), "aud does not name")  # only the configured one
        await refused(v, sa_token(tenant.issuer, aud=DROP), "aud missing")

    run(issuer_config(tenant), scenario)


def test_iss_prefix_or_extension_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        for iss in (tenant.issuer[:-1], tenant.issuer + "0", tenant.issuer + "/", tenant.issuer + "/x", DROP, 5):
            await refused(v, sa_token(tenant.issuer, iss=iss), "iss is not this issuer")

    run(issuer_config(tenant), scenario)


def test_expired_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, exp=NOW - 9), now=NOW)).exp == NOW - 9
        await refused(v, sa_token(tenant.issuer, exp=NOW - 10), "expired")
        await refused(v, sa_token(tenant.issuer, exp=DROP), "exp missing")

    run(issuer_config(tenant), scenario)


def test_exp_further_than_max_lifetime_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, exp=NOW + 3600), now=NOW)).exp == NOW + 3600
        await refused(v, sa_token(tenant.issuer, exp=NOW + 3601), "more than")
        # Kubernetes' default projected token lifetime is one year (the legacy "forever" tokens)
        await refused(v, sa_token(tenant.issuer, exp=NOW + 365 * 86400), "more than")

    run(issuer_config(tenant), scenario)


def test_future_iat_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, iat=NOW + 10, nbf=NOW + 10), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, iat=NOW + 11), "iat is in the future")
        await refused(v, sa_token(tenant.issuer, nbf=NOW + 11), "nbf is in the future")

    run(issuer_config(tenant), scenario)


def test_alg_not_in_issuer_allowlist_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, EC_1), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, RSA_1), "algorithm `RS256` not allowed")
        secret = json.dumps(EC_1.as_dict(private=False)).encode()
        hs = sign_jwt({"alg": "HS256", "kid": EC_1.kid}, sa_claims(tenant.issuer), secret=secret)
        await refused(v, hs, "algorithm `HS256` not allowed")
        none = sign_jwt({"alg": "none", "kid": EC_1.kid}, sa_claims(tenant.issuer), EC_1, alg="ES256")
        await refused(v, none, "algorithm `none` not allowed")

    run(issuer_config(tenant, algorithms=("ES256",)), scenario)


def test_JWT_12_tether_token_types_refused(tenant: Tenant) -> None:
    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, header={"typ": "JWT"}), now=NOW)).principal == "k8s:ns/name"
        for typ in ("at+jwt", "application/at+jwt", "dpop+jwt"):
            await refused(v, sa_token(tenant.issuer, header={"typ": typ}), "typ")

    run(issuer_config(tenant), scenario)


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "crit"])
def test_JWT_10_extra_headers_refused(tenant: Tenant, name: str) -> None:
    value: Any = {"jku": "https://x/jwks", "x5u": "https://x/c", "jwk": STRANGER.as_dict(private=False), "crit": ["exp"]}[name]

    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, header={name: value}), f"`{name}` not allowed")

    run(issuer_config(tenant), scenario)


def test_JWT_08_unpublished_key_with_published_kid_refused(tenant: Tenant) -> None:
    impostor = rsa_key("k8s-1")

    async def scenario(v: OidcVerifier) -> None:
        assert (await v.verify(sa_token(tenant.issuer, RSA_1), now=NOW)).principal == "k8s:ns/name"
        await refused(v, sa_token(tenant.issuer, impostor), "signature")

    run(issuer_config(tenant), scenario)
