"""Trusted key sets: JWKS/SPIFFE bundle parsing, file and URL sources (ASVS 9.1.3, MCP-08).

URL sources are exercised against a real loopback server that counts requests, so
"no redirects", "200 only", the size cap and the refresh schedule are observed at
the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_support import NOW, Provider, ec_key, jwks, okp_key, public_jwk, rsa_key
from joserfc.jwk import ECKey, RSAKey

from tether.identity.jwks_cache import (
    MAX_DOCUMENT_BYTES,
    FileKeySource,
    KeySet,
    UrlKeySource,
    fetch_json,
    parse_jwks,
)

EC = ec_key("ec-1")
EC_2 = ec_key("ec-2")
RSA = rsa_key("rsa-1")
OKP = okp_key("okp-1")
ANON = ec_key(None)


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[None]], *, follow_redirects: bool = False) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(follow_redirects=follow_redirects, timeout=5.0, trust_env=False) as http:
            await scenario(http)

    asyncio.run(main())


# --- parse_jwks -------------------------------------------------------------------------------


def test_parse_jwks_keeps_public_signing_keys() -> None:
    document = {
        "keys": [
            public_jwk(EC, use="jwt-svid"),
            public_jwk(RSA, use="sig"),
            public_jwk(OKP),
        ]
    }
    keyset = parse_jwks(document)
    assert len(keyset) == 3
    assert isinstance(keyset.find("ec-1"), ECKey)
    assert isinstance(keyset.find("rsa-1"), RSAKey)
    assert keyset.find("okp-1") is not None
    for kid in ("ec-1", "rsa-1", "okp-1"):
        key = keyset.find(kid)
        assert key is not None
        assert not key.is_private
        assert key.get("use") is None  # "jwt-svid" is a bundle marker, not a JOSE use


def test_parse_jwks_skips_private_members(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tether.identity")
    document = {
        "keys": [
            EC.as_dict(private=True),
            RSA.as_dict(private=True),
            {**public_jwk(EC_2), "d": "AAAA"},  # public key with a stray private member
            public_jwk(ec_key("kept")),
        ]
    }
    keyset = parse_jwks(document)
    assert len(keyset) == 1
    assert keyset.find("kept") is not None
    assert keyset.find("ec-1") is None
    assert keyset.find("rsa-1") is None
    assert keyset.find("ec-2") is None
    assert "private key material" in caplog.text
    assert "AAAA" not in caplog.text


@pytest.mark.parametrize("member", ["p", "q", "dp", "dq", "qi", "oth"])
def test_parse_jwks_skips_each_rsa_private_member(member: str) -> None:
    assert len(parse_jwks({"keys": [public_jwk(RSA)]})) == 1
    assert len(parse_jwks({"keys": [{**public_jwk(RSA), member: "AQAB"}]})) == 0


def test_parse_jwks_skips_oct_keys() -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
    oct_no_k = {"kty": "oct", "kid": "hmac-2"}
    keyset = parse_jwks({"keys": [oct_key, oct_no_k, public_jwk(EC)]})
    assert len(keyset) == 1
    assert keyset.find("hmac") is None
    assert keyset.find("hmac-2") is None


@pytest.mark.parametrize("use", ["x509-svid", "enc", "SIG", "JWT-SVID", "", 1])
def test_parse_jwks_skips_other_uses(use: Any) -> None:
    keyset = parse_jwks({"keys": [public_jwk(EC, use=use), public_jwk(EC_2, use="jwt-svid")]})
    assert keyset.find("ec-1") is None
    assert keyset.find("ec-2") is not None


@pytest.mark.parametrize("use", ["jwt-svid", "sig", None])
def test_parse_jwks_keeps_jwt_svid_sig_and_no_use(use: str | None) -> None:
    entry = public_jwk(EC) if use is None else public_jwk(EC, use=use)
    assert parse_jwks({"keys": [entry]}).find("ec-1") is not None


def test_parse_jwks_skips_unusable_entries() -> None:
    broken_ec = {**public_jwk(EC), "x": "not-a-point"}
    keyset = parse_jwks(
        {
            "keys": [
                "not an object",
                None,
                {"kty": "XYZ", "kid": "alien"},
                {"kid": "no-kty"},
                broken_ec,
                {"kty": "EC", "kid": "half", "crv": "P-256"},
                public_jwk(EC_2),
            ]
        }
    )
    assert len(keyset) == 1
    assert keyset.find("ec-2") is not None


def test_parse_jwks_spiffe_bundle_shape() -> None:
    bundle = {
        "keys": [public_jwk(EC, use="jwt-svid"), {"kty": "EC", "use": "x509-svid", "crv": "P-256", "x5c": ["MIIB"]}],
        "spiffe_sequence": 7,
        "spiffe_refresh_hint": 300,
    }
    keyset = parse_jwks(bundle)
    assert len(keyset) == 1
    assert keyset.find("ec-1") is not None


@pytest.mark.parametrize("document", [[], None, "keys", {"keys": {}}, {"keys": "x"}, {}, {"key": []}], ids=repr)
def test_parse_jwks_refuses_non_jwks(document: Any) -> None:
    assert len(parse_jwks({"keys": []})) == 0
    with pytest.raises(ValueError, match="not a json web key set"):
        parse_jwks(document)


# --- KeySet.find ------------------------------------------------------------------------------


def test_keyset_find_by_kid() -> None:
    keyset = KeySet([EC, RSA])
    assert keyset.find("ec-1") is EC
    assert keyset.find("rsa-1") is RSA
    assert keyset.find("ec-2") is None
    assert keyset.find("") is None
    assert keyset.find(5) is None
    assert keyset.find(["ec-1"]) is None


def test_keyset_find_without_kid() -> None:
    assert KeySet([EC]).find(None) is EC  # the only key
    assert KeySet([ANON]).find(None) is ANON
    assert KeySet([EC, RSA]).find(None) is None  # ambiguous: refuse to guess
    assert KeySet([ANON, EC]).find(None) is None
    assert KeySet([]).find(None) is None
    # anonymous keys are usable only alone, never under a kid
    assert KeySet([ANON]).find("ec-1") is None
    assert KeySet([ANON, EC]).find("ec-1") is EC
    assert len(KeySet([ANON, EC, RSA])) == 3


# --- FileKeySource ----------------------------------------------------------------------------


def _write(path: Path, content: str | bytes, mtime_s: int) -> None:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    os.utime(path, ns=(mtime_s * 1_000_000_000, mtime_s * 1_000_000_000))


def _file_keys(source: FileKeySource) -> KeySet:
    return asyncio.run(source.keys(kid=None, now=NOW))


def test_file_source_rereads_when_mtime_changes(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    _write(path, json.dumps(jwks(EC, use="jwt-svid")), 1_600_000_000)
    source = FileKeySource(path)
    assert _file_keys(source).find("ec-1") is not None
    assert _file_keys(source).find("ec-2") is None

    _write(path, json.dumps(jwks(EC_2, use="jwt-svid")), 1_600_000_100)
    keyset = _file_keys(source)
    assert keyset.find("ec-2") is not None
    assert keyset.find("ec-1") is None


def test_file_source_unchanged_mtime_not_reread(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    _write(path, json.dumps(jwks(EC)), 1_600_000_000)
    source = FileKeySource(path)
    first = _file_keys(source)
    assert first.find("ec-1") is not None
    _write(path, json.dumps(jwks(EC_2)), 1_600_000_000)  # same mtime: the cached set stays
    assert _file_keys(source) is first


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"keys": 5}', b"", b"\xff\xfe{"],
    ids=["not-json", "list", "keys-not-list", "empty", "not-utf8"],
)
def test_file_source_keeps_last_good_set_when_file_becomes_invalid(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.identity")
    path = tmp_path / "bundle.json"
    _write(path, json.dumps(jwks(EC)), 1_600_000_000)
    source = FileKeySource(path)
    assert _file_keys(source).find("ec-1") is not None

    _write(path, content, 1_600_000_100)
    assert _file_keys(source).find("ec-1") is not None
    assert "keeping the last good key set" in caplog.text

    # and a later valid file is picked up
    _write(path, json.dumps(jwks(EC_2)), 1_600_000_200)
    assert _file_keys(source).find("ec-2") is not None


def test_file_source_keeps_last_good_set_when_file_disappears(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    _write(path, json.dumps(jwks(EC)), 1_600_000_000)
    source = FileKeySource(path)
    assert _file_keys(source).find("ec-1") is not None
    path.unlink()
    assert _file_keys(source).find("ec-1") is not None


def test_file_source_missing_from_start_is_empty(tmp_path: Path) -> None:
    source = FileKeySource(tmp_path / "absent.json")
    assert len(_file_keys(source)) == 0
    _write(tmp_path / "absent.json", json.dumps(jwks(EC)), 1_600_000_000)
    assert _file_keys(source).find("ec-1") is not None


def test_file_source_deeply_nested_document_keeps_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    _write(path, json.dumps(jwks(EC)), 1_600_000_000)
    source = FileKeySource(path)
    assert _file_keys(source).find("ec-1") is not None
    _write(path, "[" * 100_000, 1_600_000_100)  # within the size cap, beyond the json parser's depth
    assert _file_keys(source).find("ec-1") is not None


# --- fetch_json / UrlKeySource against loopback ---------------------------------------------


def _doc_of_size(size: int) -> bytes:
    base = json.dumps(jwks(EC))
    filler = size - len(base) - len(',"pad":""')
    assert filler >= 0
    body = (base[:-1] + ',"pad":"' + "x" * filler + '"}').encode()
    assert len(body) == size
    json.loads(body)
    return body


def test_fetch_json_returns_200_document(provider: Provider) -> None:
    path = provider.prefix() + "/doc"
    provider.set_json(path, {"a": 1})

    async def scenario(http: httpx.AsyncClient) -> None:
        assert await fetch_json(http, provider.url(path)) == {"a": 1}

    run(scenario)
    assert provider.count(path) == 1


@pytest.mark.parametrize("status", [201, 203, 204, 206, 301, 302, 304, 307, 308, 400, 404, 500, 503])
def test_fetch_json_only_200(provider: Provider, status: int) -> None:
    path = provider.prefix() + "/jwks"
    body = b"" if status in (204, 304) else json.dumps(jwks(EC)).encode()
    provider.responses[path] = (status, {"location": provider.url(path + "/next")} if 300 <= status < 400 else {}, body)

    async def scenario(http: httpx.AsyncClient) -> None:
        with pytest.raises(ValueError, match=f"answered {status}"):
            await fetch_json(http, provider.url(path))

    run(scenario)
    assert provider.count(path + "/next") == 0


def test_fetch_json_size_cap_boundary(provider: Provider) -> None:
    exact, over = provider.prefix() + "/exact", provider.prefix() + "/over"
    provider.set_raw(exact, _doc_of_size(MAX_DOCUMENT_BYTES))
    provider.set_raw(over, _doc_of_size(MAX_DOCUMENT_BYTES + 1))

    async def scenario(http: httpx.AsyncClient) -> None:
        assert "keys" in await fetch_json(http, provider.url(exact))
        with pytest.raises(ValueError, match="exceeds"):
            await fetch_json(http, provider.url(over))

    run(scenario)


def test_MCP_08_fetch_json_never_follows_redirects_even_if_client_would(provider: Provider) -> None:
    """``fetch_json`` promises "no redirects"; that must not depend on how the caller built its client."""
    src, target = provider.prefix() + "/jwks", provider.prefix() + "/internal"
    provider.set_json(target, jwks(EC))
    provider.set_redirect(src, provider.url(target))

    async def scenario(http: httpx.AsyncClient) -> None:
        with pytest.raises(ValueError, match="answered 302"):
            await fetch_json(http, provider.url(src))

    run(scenario, follow_redirects=True)
    assert provider.count(target) == 0


def test_url_source_no_redirects(provider: Provider) -> None:
    src, target = provider.prefix() + "/jwks", provider.prefix() + "/elsewhere"
    provider.set_json(target, jwks(EC))
    provider.set_redirect(src, provider.url(target))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(src), http)
        assert len(await source.keys(kid="ec-1", now=NOW)) == 0
        direct = UrlKeySource(provider.url(target), http)  # positive control
        assert (await direct.keys(kid="ec-1", now=NOW)).find("ec-1") is not None

    run(scenario)
    assert provider.count(src) == 1
    assert provider.count(target) == 1  # only the direct fetch


@pytest.mark.parametrize("status", [201, 203, 404, 500])
def test_url_source_200_only(provider: Provider, status: int) -> None:
    path = provider.prefix() + "/jwks"
    provider.set_json(path, jwks(EC), status=status)

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http)
        assert len(await source.keys(kid="ec-1", now=NOW)) == 0
        provider.set_json(path, jwks(EC))
        assert (await source.keys(kid="ec-1", now=NOW + 10)).find("ec-1") is not None

    run(scenario)
    assert provider.count(path) == 2


def test_url_source_size_cap(provider: Provider) -> None:
    path = provider.prefix() + "/jwks"
    provider.set_raw(path, _doc_of_size(MAX_DOCUMENT_BYTES + 1))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http)
        assert len(await source.keys(kid="ec-1", now=NOW)) == 0
        provider.set_raw(path, _doc_of_size(MAX_DOCUMENT_BYTES))
        assert (await source.keys(kid="ec-1", now=NOW + 10)).find("ec-1") is not None

    run(scenario)


def test_url_source_ttl_refresh(provider: Provider) -> None:
    path = provider.prefix() + "/jwks"
    provider.set_json(path, jwks(EC))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http, ttl=60, min_refresh=10)
        assert (await source.keys(kid="ec-1", now=NOW)).find("ec-1") is not None
        assert provider.count(path) == 1
        provider.set_json(path, jwks(EC_2))  # rotated at the source
        # known kid, not yet stale: served from cache
        for now in (NOW + 1, NOW + 30, NOW + 60):
            assert (await source.keys(kid="ec-1", now=now)).find("ec-1") is not None
        assert provider.count(path) == 1
        # ttl passed: refreshed even though the kid is known
        keyset = await source.keys(kid="ec-1", now=NOW + 61)
        assert keyset.find("ec-2") is not None
        assert keyset.find("ec-1") is None
        assert provider.count(path) == 2

    run(scenario)


def test_url_source_unknown_kid_refresh_rate_limited(provider: Provider) -> None:
    path = provider.prefix() + "/jwks"
    provider.set_json(path, jwks(EC))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http, ttl=300, min_refresh=10)
        await source.keys(kid="ec-1", now=NOW)
        provider.set_json(path, jwks(EC, EC_2))
        for now in range(NOW + 1, NOW + 10):
            assert (await source.keys(kid="ec-2", now=now)).find("ec-2") is None
        assert provider.count(path) == 1
        assert (await source.keys(kid="ec-2", now=NOW + 10)).find("ec-2") is not None
        assert provider.count(path) == 2
        # many concurrent lookups for unknown kids at one instant: one fetch
        results = await asyncio.gather(*(source.keys(kid=f"nope-{i}", now=NOW + 20) for i in range(25)))
        assert all(r.find("ec-2") is not None for r in results)
        assert provider.count(path) == 3

    run(scenario)


def test_url_source_refresh_keeps_unchanged_key_objects(provider: Provider) -> None:
    """A refresh forced by a stranger's unknown kid must not flush what is keyed on the key
    object (the resource server's verified tokens): unchanged keys stay the same object,
    a replaced one does not."""
    path = provider.prefix() + "/jwks"
    provider.set_json(path, jwks(EC))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http, ttl=300, min_refresh=10)
        first = (await source.keys(kid="ec-1", now=NOW)).find("ec-1")
        assert first is not None
        provider.set_json(path, jwks(EC, EC_2))
        again = await source.keys(kid="who-knows", now=NOW + 10)  # refreshes
        assert provider.count(path) == 2 and again.find("ec-2") is not None
        assert again.find("ec-1") is first
        replaced = ec_key("ec-1")  # same kid, new key material
        provider.set_json(path, jwks(replaced))
        third = await source.keys(kid="still-unknown", now=NOW + 20)
        assert provider.count(path) == 3
        changed = third.find("ec-1")
        assert changed is not None and changed is not first
        assert changed.as_dict(private=False) != first.as_dict(private=False)

    run(scenario)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": 1}', b"\xff\xfe", b"[" * 100_000],
    ids=["not-json", "list", "keys-not-list", "not-utf8", "deeply-nested"],
)
def test_url_source_keeps_last_good_set_on_bad_refresh(provider: Provider, body: bytes) -> None:
    path = provider.prefix() + "/jwks"
    provider.set_json(path, jwks(EC))

    async def scenario(http: httpx.AsyncClient) -> None:
        source = UrlKeySource(provider.url(path), http, ttl=60, min_refresh=10)
        assert (await source.keys(kid="ec-1", now=NOW)).find("ec-1") is not None
        provider.set_raw(path, body)
        assert (await source.keys(kid="ec-1", now=NOW + 61)).find("ec-1") is not None
        assert provider.count(path) == 2
        # the failed refresh is rate limited too, then retried
        assert (await source.keys(kid="ec-1", now=NOW + 65)).find("ec-1") is not None
        assert provider.count(path) == 2
        provider.set_json(path, jwks(EC_2))
        assert (await source.keys(kid="ec-2", now=NOW + 71)).find("ec-2") is not None
        assert provider.count(path) == 3

    run(scenario)


def test_url_source_server_gone_keeps_last_good_set() -> None:
    own = Provider().start()
    try:
        path = own.prefix() + "/jwks"
        own.set_json(path, jwks(EC))

        async def scenario(http: httpx.AsyncClient) -> None:
            source = UrlKeySource(own.url(path), http, ttl=60, min_refresh=10)
            assert (await source.keys(kid="ec-1", now=NOW)).find("ec-1") is not None
            own.stop()
            assert (await source.keys(kid="ec-1", now=NOW + 120)).find("ec-1") is not None
            assert (await source.keys(kid="ec-9", now=NOW + 240)).find("ec-1") is not None

        run(scenario)
        assert own.count(path) == 1
    finally:
        own.stop()
