"""SPIFFE bundle endpoints, ``https_web`` profile (Trust Domain and Bundle §5.2.1), over real HTTPS on loopback.

The endpoint is a Starlette app under uvicorn with a server certificate from a private CA
(``tether init --tls``'s dev CA); it counts requests, so the refresh schedule is observed at
the server. Time is the ``now`` the source is called with: no test sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from identity_support import ec_key, public_jwk
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from helpers import ServerThread, free_port
from tether.config import load_config
from tether.errors import ConfigError
from tether.identity import spiffe_bundle
from tether.identity.dev_x509 import DevCA
from tether.identity.spiffe_bundle import BundleEndpointSource
from tether.web.tls import TlsFiles

NOW = 1_700_000_000.0
K1, K2, K3 = ec_key("k1"), ec_key("k2"), ec_key("k3")


class HttpsEndpoint:
    """Bundles served per path over HTTPS; ``status``/``raw`` override a path's answer."""

    def __init__(self, directory: Path) -> None:
        self.ca = DevCA.create("endpoint.test")
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.bundle_pem)
        cert, key = self.ca.issue_server(["127.0.0.1"]).write(directory, "server")
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.documents: dict[str, Any] = {}
        self.raw: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: Counter[str] = Counter()
        #: paths answered 200 with a body that trickles one byte at a time and never ends
        self.trickle: set[str] = set()
        app = Starlette(routes=[Route("/{path:path}", self._serve)])
        self.thread = ServerThread(app, self.port, tls=TlsFiles(cert, key))

    async def _serve(self, request: Request) -> Response:
        path = request.url.path
        self.hits[path] += 1
        if path in self.trickle:
            return StreamingResponse(_trickle(), media_type="application/json")
        if path in self.raw:
            status, body, headers = self.raw[path]
            return Response(body, status_code=status, headers=headers)
        if path not in self.documents:
            return Response(b"{}", status_code=404)
        return Response(json.dumps(self.documents[path]).encode(), media_type="application/json")

    def serve(self, path: str, *keys: Any, sequence: int | None = None, hint: int | None = None) -> str:
        document: dict[str, Any] = {"keys": [public_jwk(k, use="jwt-svid") for k in keys]}
        if sequence is not None:
            document["spiffe_sequence"] = sequence
        if hint is not None:
            document["spiffe_refresh_hint"] = hint
        self.documents[path] = document
        self.raw.pop(path, None)
        return self.base + path


async def _trickle() -> AsyncIterator[bytes]:
    yield b'{"keys": ['
    while True:
        await asyncio.sleep(0.2)
        yield b" "


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsEndpoint]:
    server = HttpsEndpoint(tmp_path_factory.mktemp("bundle-endpoint"))
    server.thread.start()
    try:
        yield server
    finally:
        server.thread.stop()


def kids(source: BundleEndpointSource, *, now: float, kid: object = None) -> set[str]:
    return set(asyncio.run(source.keys(kid=kid, now=now)).by_kid)


def test_bundle_fetched_over_https_with_the_pinned_ca(endpoint: HttpsEndpoint) -> None:
    url = endpoint.serve("/pinned", K1, sequence=1, hint=60)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=300, floor=1)
    assert kids(source, now=NOW) == {"k1"}
    assert kids(source, now=NOW + 30) == {"k1"}
    assert endpoint.hits["/pinned"] == 1
    assert source.bundle is not None and source.bundle.sequence == 1


def test_http_bundle_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        BundleEndpointSource("http://127.0.0.1:1/bundle")


@pytest.mark.parametrize("table", ["trust_domains", "federation"])
def test_config_refuses_an_http_bundle_endpoint(tmp_path: Path, table: str) -> None:
    rows = {
        "trust_domains": '[[trust_domains]]\nname = "b.example"\nbundle_endpoint = "http://127.0.0.1:9/spiffe/bundle"\n',
        "federation": (
            '[[federation]]\nname = "a"\nissuer = "http://127.0.0.1:9"\nbundle_endpoint = "http://127.0.0.1:9/spiffe/bundle"\n'
            'agents = ["spiffe://a.example/agent"]\naudiences = ["https://tools.example"]\nscopes = ["read"]\n'
            'feed_principal = "spiffe://b.example/feed"\n'
        ),
    }
    path = tmp_path / "tether.toml"
    path.write_text(f'issuer = "http://127.0.0.1:8700"\n{rows[table]}', encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.key.endswith(".bundle_endpoint")
    assert "https" in str(refused.value)


def test_another_ca_or_the_system_trust_refuses_the_private_certificate(endpoint: HttpsEndpoint, tmp_path: Path) -> None:
    url = endpoint.serve("/other-ca", K1, sequence=1)
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(DevCA.create("stranger.test").bundle_pem)
    for ca_file in (stranger, None):
        source = BundleEndpointSource(url, ca_file=ca_file, refresh=300, floor=1)
        assert kids(source, now=NOW) == set()
        assert source.failures == 1 and source.bundle is None
    assert endpoint.hits["/other-ca"] == 0  # no handshake completed, no request reached the server


@pytest.mark.parametrize(
    ("hint", "refresh", "floor", "stale_at", "due_at"),
    [(20, 300, 1, 19, 21), (3600, 30, 1, 29, 31), (1, 300, 5, 4, 6), (None, 40, 1, 39, 41)],
    ids=["hint within bounds", "hint capped by refresh", "hint raised to floor", "no hint: refresh"],
)
def test_refresh_follows_the_hint_within_bounds(
    endpoint: HttpsEndpoint, hint: int | None, refresh: float, floor: float, stale_at: float, due_at: float
) -> None:
    path = f"/schedule-{hint}-{refresh}-{floor}"
    url = endpoint.serve(path, K1, sequence=1, hint=hint)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=refresh, floor=floor)
    kids(source, now=NOW)
    endpoint.serve(path, K1, K2, sequence=2, hint=hint)
    assert kids(source, now=NOW + stale_at) == {"k1"}
    assert endpoint.hits[path] == 1
    assert kids(source, now=NOW + due_at) == {"k1", "k2"}
    assert endpoint.hits[path] == 2


def test_unknown_kid_refreshes_early_but_at_most_once_per_floor(endpoint: HttpsEndpoint) -> None:
    url = endpoint.serve("/unknown-kid", K1, sequence=1, hint=300)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=300, floor=10)
    kids(source, now=NOW)
    endpoint.serve("/unknown-kid", K1, K2, sequence=2, hint=300)
    assert kids(source, now=NOW + 5, kid="k2") == {"k1"}  # inside the floor: no fetch
    assert kids(source, now=NOW + 11, kid="k2") == {"k1", "k2"}
    for i in range(5):  # a stranger's kids cannot hammer the endpoint
        kids(source, now=NOW + 12 + i, kid=f"nobody-{i}")
    assert endpoint.hits["/unknown-kid"] == 2


@pytest.mark.parametrize("second", [4, None], ids=["lower sequence", "sequence dropped"])
def test_bundle_whose_sequence_goes_backwards_is_refused(endpoint: HttpsEndpoint, second: int | None) -> None:
    path = f"/backwards-{second}"
    url = endpoint.serve(path, K1, sequence=5, hint=10)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=300, floor=1)
    assert kids(source, now=NOW) == {"k1"}
    endpoint.serve(path, K3, sequence=second, hint=10)  # a replayed (or rolled back) endpoint swaps the keys
    assert kids(source, now=NOW + 11) == {"k1"}
    assert source.failures == 1 and source.bundle is not None and source.bundle.sequence == 5
    endpoint.serve(path, K1, K3, sequence=6, hint=10)
    assert kids(source, now=NOW + 22) == {"k1", "k3"}
    assert source.failures == 0


@pytest.mark.parametrize(
    "answer",
    [
        (500, b'{"keys": []}', {}),
        (200, b"not json", {}),
        (200, json.dumps({"keys": [{"kty": "EC", "kid": "no-use"}]}).encode(), {}),
        (302, b"", {"location": "/elsewhere"}),
    ],
    ids=["server error", "not json", "malformed key", "redirect not followed"],
)
def test_failed_refresh_keeps_the_last_good_bundle(endpoint: HttpsEndpoint, answer: tuple[int, bytes, dict[str, str]]) -> None:
    path = f"/last-good-{answer[0]}-{len(answer[1])}"
    url = endpoint.serve(path, K1, sequence=1, hint=10)
    endpoint.serve("/elsewhere", K3, sequence=9)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=300, floor=1)
    assert kids(source, now=NOW) == {"k1"}
    endpoint.raw[path] = answer
    assert kids(source, now=NOW + 11) == {"k1"}
    assert source.failures == 1
    assert endpoint.hits["/elsewhere"] == 0


def test_unreachable_endpoint_keeps_the_last_good_bundle(tmp_path: Path) -> None:
    server = HttpsEndpoint(tmp_path)
    server.thread.start()
    url = server.serve("/gone", K1, sequence=1, hint=10)
    source = BundleEndpointSource(url, ca_file=server.ca_file, refresh=300, floor=1)
    try:
        assert kids(source, now=NOW) == {"k1"}
    finally:
        server.thread.stop()
    assert kids(source, now=NOW + 11) == {"k1"}
    assert source.failures == 1


def test_a_trickling_endpoint_is_given_up_on_and_the_last_good_bundle_kept(
    endpoint: HttpsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One deadline covers the whole fetch: an endpoint that sends a byte every 0.2 s (never slow
    enough for a per-read timeout) is abandoned, the refresh counted as failed, the old keys kept."""
    monkeypatch.setattr(spiffe_bundle, "FETCH_SECONDS", 1.0)
    url = endpoint.serve("/trickle", K1, sequence=1, hint=60)
    source = BundleEndpointSource(url, ca_file=endpoint.ca_file, refresh=300, floor=1)
    assert kids(source, now=NOW) == {"k1"}
    endpoint.trickle.add("/trickle")
    try:
        assert asyncio.run(source.refresh(NOW + 400)) is False
    finally:
        endpoint.trickle.discard("/trickle")
    assert source.failures == 1 and kids(source, now=NOW + 401) == {"k1"}
