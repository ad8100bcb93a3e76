"""The certificate-binding rules at a resource server, without a network (RFC 8705 §3, RFC 9449 §7, RFC 6750 §3).

``needs_dpop_proof`` decides what a token's binding asks of a request; ``error_response``
renders the challenge for the scheme the request used; ``Verifier.verify`` applies both on
every request, a cached token included. The over-the-wire versions are ``test_mtls_resource``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rs_mtlskit import MtlsKit
from starlette.datastructures import Headers

from tether.agent.proof import DPoPKey
from tether.errors import InsufficientScope, InvalidRequest, InvalidToken, OAuthError
from tether.resource import MissingToken, ResourceSettings, Verifier
from tether.rules.binding import needs_dpop_proof
from tether.rules.certificate import ClientCertificate, thumbprint
from tether.web.errors import error_response, request_scheme

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

RESOURCE = "https://127.0.0.1:9443"
JKT = "j" * 43


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> MtlsKit:
    return MtlsKit.create(tmp_path_factory.mktemp("mtls-rules"))


def cert(kit: MtlsKit, which: str) -> ClientCertificate:
    return ClientCertificate(kit.agent.der if which == "agent" else kit.other.der)


# -- the binding rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("jkt", "x5t", "scheme", "presented", "mtls", "dpop"),
    [
        pytest.param(False, True, "bearer", "agent", True, False, id="x5t-bearer-right-cert"),
        pytest.param(True, False, "dpop", None, True, True, id="jkt-dpop"),
        pytest.param(True, True, "dpop", "agent", True, True, id="both-dpop-right-cert"),
        pytest.param(True, False, "dpop", None, False, True, id="jkt-dpop-mtls-off"),
    ],
)
def test_AUX_06_binding_accepted(
    kit: MtlsKit, jkt: bool, x5t: bool, scheme: str, presented: str | None, mtls: bool, dpop: bool
) -> None:
    got = needs_dpop_proof(
        jkt=JKT if jkt else None,
        x5t=thumbprint(kit.agent.der) if x5t else None,
        scheme=scheme,
        certificate=cert(kit, presented) if presented else None,
        mtls=mtls,
    )
    assert got is dpop


@pytest.mark.parametrize(
    ("jkt", "x5t", "scheme", "presented", "mtls"),
    [
        pytest.param(False, False, "bearer", "agent", True, id="unbound-bearer"),
        pytest.param(False, False, "dpop", None, True, id="unbound-dpop"),
        pytest.param(False, True, "bearer", None, True, id="MTLS_01-x5t-no-cert"),
        pytest.param(False, True, "bearer", "other", True, id="MTLS_01-x5t-other-cert"),
        pytest.param(False, True, "dpop", "agent", True, id="x5t-only-under-dpop-scheme"),
        pytest.param(False, True, "bearer", "agent", False, id="x5t-mtls-off"),
        pytest.param(True, False, "bearer", "agent", True, id="DPOP_15-jkt-as-bearer"),
        pytest.param(True, True, "bearer", "agent", True, id="MTLS_04-both-as-bearer"),
        pytest.param(True, True, "dpop", None, True, id="MTLS_04-both-no-cert"),
        pytest.param(True, True, "dpop", "other", True, id="MTLS_04-both-other-cert"),
    ],
)
def test_MTLS_01_binding_refused_as_invalid_token(
    kit: MtlsKit, jkt: bool, x5t: bool, scheme: str, presented: str | None, mtls: bool
) -> None:
    with pytest.raises(InvalidToken) as caught:
        needs_dpop_proof(
            jkt=JKT if jkt else None,
            x5t=thumbprint(kit.agent.der) if x5t else None,
            scheme=scheme,
            certificate=cert(kit, presented) if presented else None,
            mtls=mtls,
        )
    assert caught.value.error == "invalid_token"


# -- the challenge (the one mapping place) ---------------------------------------------------------
def challenge(exc: Exception, **kwargs: object) -> str:
    response = error_response(exc, resource=True, algs=("ES256",), **kwargs)  # type: ignore[arg-type]
    return str(response.headers["www-authenticate"])


def test_RFC6750_bearer_request_refused_with_a_bearer_challenge() -> None:
    refused = InvalidToken("client certificate does not match the token binding")
    assert challenge(refused, scheme="bearer", bearer=True) == (
        'Bearer error="invalid_token", error_description="client certificate does not match the token binding", '
        'DPoP algs="ES256"'
    )
    meta = "https://rs.test/.well-known/oauth-protected-resource"
    assert challenge(refused, scheme="bearer", bearer=True, resource_metadata=meta) == (
        'Bearer error="invalid_token", error_description="client certificate does not match the token binding", '
        f'resource_metadata="{meta}", DPoP resource_metadata="{meta}", algs="ES256"'
    )
    scoped = InsufficientScope("scope `wiki:write` is required", scope="wiki:write")
    assert challenge(scoped, scheme="bearer", bearer=True).startswith(
        'Bearer error="insufficient_scope", error_description="scope `wiki:write` is required", scope="wiki:write", DPoP'
    )


def test_RFC9449_dpop_request_and_dpop_only_resource_keep_the_dpop_challenge() -> None:
    refused = InvalidToken("token is not key-bound")
    expected = 'DPoP error="invalid_token", error_description="token is not key-bound", algs="ES256"'
    assert challenge(refused, scheme="dpop", bearer=False) == expected
    assert challenge(refused, scheme="bearer", bearer=False) == expected  # this resource takes DPoP only
    assert challenge(refused, scheme="dpop", bearer=True) == expected  # a DPoP request: the DPoP challenge alone


def test_RFC9449_7_2_no_credentials_names_both_schemes_without_an_error() -> None:
    missing = MissingToken("an access token is required")
    assert challenge(missing, scheme=None, bearer=True) == 'DPoP algs="ES256", Bearer'
    assert challenge(missing, scheme=None, bearer=False) == 'DPoP algs="ES256"'


def test_a_malformed_proxy_header_is_400_without_a_challenge() -> None:
    response = error_response(InvalidRequest("malformed Client-Cert header"), resource=True, scheme="bearer", bearer=True)
    assert response.status_code == 400 and "www-authenticate" not in response.headers


def test_request_scheme_is_case_insensitive() -> None:
    assert request_scheme("BeArEr abc") == "bearer"
    assert request_scheme("DPoP abc") == "dpop"
    assert request_scheme(None) is None and request_scheme("") is None


# -- metadata and settings -------------------------------------------------------------------------
def test_RFC9728_metadata_follows_the_mtls_setting(kit: MtlsKit) -> None:
    on = Verifier(ResourceSettings(issuer="https://sts.test", resource=RESOURCE, revocation_feed=False), keys=kit.keys())
    assert on.metadata()["tls_client_certificate_bound_access_tokens"] is True
    assert on.metadata()["dpop_bound_access_tokens_required"] is False
    off = Verifier(
        ResourceSettings(issuer="https://sts.test", resource=RESOURCE, revocation_feed=False, mtls=False), keys=kit.keys()
    )
    assert off.metadata()["dpop_bound_access_tokens_required"] is True
    assert "tls_client_certificate_bound_access_tokens" not in off.metadata()


def test_MTLS_03_trusted_proxies_default_to_none_and_must_parse() -> None:
    settings = ResourceSettings(issuer="https://sts.test", resource=RESOURCE, revocation_feed=False)
    assert not Verifier(settings).proxies
    with pytest.raises(ValueError):
        Verifier(ResourceSettings(issuer="https://sts.test", resource=RESOURCE, revocation_feed=False,
                                  trusted_proxies=("not-an-address",)))  # fmt: skip


# -- Verifier.verify: the certificate is checked on every request, cached token or not ----------------
def verifier(kit: MtlsKit, **fields: object) -> Verifier:
    from rs_mtlskit import ISSUER

    settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE, revocation_feed=False, **fields)  # type: ignore[arg-type]
    return Verifier(settings, keys=kit.keys())


async def verify(v: Verifier, token: str, scheme: str, certificate: ClientCertificate | None, proof: str | None = None) -> str:
    headers = {"authorization": f"{scheme} {token}", **({"dpop": proof} if proof else {})}
    try:
        principal = await v.verify(method="GET", path="/x", headers=Headers(headers), certificate=certificate)
    except OAuthError as exc:
        return exc.error
    return f"ok {principal.binding}"


def test_MTLS_01_a_cached_token_is_checked_against_the_certificate_every_request(kit: MtlsKit) -> None:
    v = verifier(kit)
    token = kit.bound(RESOURCE)
    x5t = thumbprint(kit.agent.der)

    async def run() -> list[str]:
        return [
            await verify(v, token, "Bearer", cert(kit, "agent")),  # verified, now cached
            await verify(v, token, "Bearer", cert(kit, "other")),
            await verify(v, token, "Bearer", None),
            await verify(v, token, "Bearer", ClientCertificate(kit.other.der, source="proxy")),
            await verify(v, token, "Bearer", cert(kit, "agent")),
        ]

    assert asyncio.run(run()) == [f"ok jkt= x5t={x5t}", "invalid_token", "invalid_token", "invalid_token", f"ok jkt= x5t={x5t}"]
    assert len(v._verified) == 1  # the second to fifth calls used the cached verification


def test_MTLS_04_a_token_bound_to_both_needs_the_proof_and_the_certificate(kit: MtlsKit) -> None:
    v = verifier(kit)
    key, stranger = DPoPKey(), DPoPKey()
    token = kit.token(RESOURCE, jkt=key.jkt, x5t=thumbprint(kit.agent.der))
    url = RESOURCE + "/x"

    async def run() -> list[str]:
        return [
            await verify(v, token, "DPoP", cert(kit, "agent"), key.proof("GET", url, access_token=token)),
            await verify(v, token, "DPoP", None, key.proof("GET", url, access_token=token)),
            await verify(v, token, "DPoP", cert(kit, "other"), key.proof("GET", url, access_token=token)),
            await verify(v, token, "DPoP", cert(kit, "agent"), stranger.proof("GET", url, access_token=token)),
            await verify(v, token, "DPoP", cert(kit, "agent")),
            await verify(v, token, "Bearer", cert(kit, "agent")),
        ]

    got = asyncio.run(run())
    assert got[0] == f"ok jkt={key.jkt} x5t={thumbprint(kit.agent.der)}"
    assert got[1:] == ["invalid_token", "invalid_token", "invalid_token", "invalid_dpop_proof", "invalid_token"]


def test_mtls_off_refuses_certificate_bound_tokens_and_the_bearer_scheme(kit: MtlsKit) -> None:
    v = verifier(kit, mtls=False)
    key = DPoPKey()
    both = kit.token(RESOURCE, jkt=key.jkt, x5t=thumbprint(kit.agent.der))
    dpop_only = kit.token(RESOURCE, jkt=key.jkt)
    url = RESOURCE + "/x"

    async def run() -> list[str]:
        return [
            await verify(v, kit.bound(RESOURCE), "Bearer", cert(kit, "agent")),
            await verify(v, both, "DPoP", cert(kit, "agent"), key.proof("GET", url, access_token=both)),
            await verify(v, dpop_only, "DPoP", None, key.proof("GET", url, access_token=dpop_only)),
        ]

    got = asyncio.run(run())
    assert got[:2] == ["invalid_token", "invalid_token"]
    assert got[2] == f"ok jkt={key.jkt} x5t="  # positive control: DPoP works as before


def test_an_unbound_token_is_refused_under_either_scheme(kit: MtlsKit, tmp_path: Path) -> None:
    v = verifier(kit)
    token = kit.token(RESOURCE)

    async def run() -> list[str]:
        return [await verify(v, token, "Bearer", cert(kit, "agent")), await verify(v, token, "DPoP", cert(kit, "agent"))]

    assert asyncio.run(run()) == ["invalid_token", "invalid_token"]
