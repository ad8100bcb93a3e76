"""``tether bench --peer``: what its comparison rests on.

The benchmark asserts nothing about speed. These tests pin that the peer is configured as the
README says — node ``oidc-provider`` from the pinned lock, answering each prebuilt request with a
DPoP-bound (RFC 9449 §6) ES256 JWT access token (RFC 9068) for the one resource, with
``client_secret_basic`` and with ``private_key_jwt`` (RFC 7523 §2.2) — that a prebuilt request is
spent once (a replayed proof is refused, so the load is real work), and that a round's figures
are computed as the table prints them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pytest

from tether.bench.calibrate import Sampler, reference_seconds, scaled
from tether.bench.harness import Load
from tether.bench.peer import RESOURCE, OidcProvider, PeerUnavailable, install_peer, oidc_provider
from tether.bench.versus import Phase, _rows, spread


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    try:
        directory = install_peer()
    except PeerUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the benchmark peer cannot be installed under CI: {exc}")
        pytest.skip(str(exc))
    with oidc_provider(directory) as running:
        yield running


def _send(url: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


@pytest.mark.parametrize("client", ["plain", "pkjwt"])
def test_each_prebuilt_request_gets_a_dpop_bound_es256_jwt_for_the_resource(peer: OidcProvider, client: str) -> None:
    build = peer.plain_requests if client == "plain" else peer.private_key_jwt_requests
    status, body = _send(peer.url, build(1)[0])
    assert status == 200, body
    assert body["token_type"] == "DPoP" and body["scope"] == "read"
    header, claims = _segment(body["access_token"], 0), _segment(body["access_token"], 1)
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    assert claims["client_id"] == client and claims["aud"] == RESOURCE and claims["iss"] == peer.url
    assert claims["cnf"]["jkt"] == peer.dpop_thumbprint


def test_a_replayed_request_is_refused_so_every_measured_request_is_new_work(peer: OidcProvider) -> None:
    first, fresh = peer.plain_requests(2)
    assert _send(peer.url, first)[0] == 200
    status, body = _send(peer.url, first)  # the same bytes: only its DPoP proof makes it one of a kind
    assert status == 400 and body["error"] == "invalid_grant"  # oidc-provider in production mode says no more
    assert _send(peer.url, fresh)[0] == 200


def _phase(ok: int, elapsed: float, cpu: float, busy: float) -> Phase:
    load = Load(ok=ok, refused=0, errors=0, elapsed=elapsed, p50_ms=1.0, p99_ms=2.0, statuses={"200": ok})
    return Phase(load, server_cpu_s=cpu, core_busy_s=busy)


def test_a_phase_says_what_the_server_and_its_neighbours_took() -> None:
    phase = _phase(ok=2000, elapsed=2.0, cpu=1.0, busy=1.9)
    assert phase.throughput == 1000
    assert phase.cpu_us_per_request == pytest.approx(500)
    assert phase.server_share == pytest.approx(0.5)
    assert phase.others_share == pytest.approx(0.45)
    assert spread([900, 1000, 1200]) == pytest.approx(0.3)


def test_rows_pair_each_side_with_its_peer_round_by_round() -> None:
    phases = {
        "hop": [_phase(3000, 2.0, 1.0, 1.0), _phase(3200, 2.0, 1.0, 1.0), _phase(2000, 2.0, 1.0, 1.0)],
        "plain": [_phase(2000, 2.0, 1.6, 1.6), _phase(2000, 2.0, 1.6, 1.6), _phase(2000, 2.0, 1.6, 1.6)],
        "session": [_phase(1800, 2.0, 1.0, 1.0)] * 3,
        "pkjwt": [_phase(1200, 2.0, 1.0, 1.0)] * 3,
    }
    plain, hop, pkjwt, session = _rows(phases)
    assert plain.value == 1000 and hop.value == 1500  # medians of the rounds, per second
    assert hop.ratio == pytest.approx(1.5)
    assert hop.notes["round_ratios"] == [1.5, 1.6, 1.0]
    assert hop.notes["cpu_per_req_ratio"] == pytest.approx(round((1.6 / 2000) / (1.0 / 3000), 2))
    assert session.ratio == pytest.approx(1.5) and pkjwt.value == 600


def test_rows_scale_each_rounds_cpu_to_the_fastest_reference_of_the_run() -> None:
    """A round run while the host made core 0 slower (its reference work took longer) is scaled
    back: here the peer's second round took twice the CPU only because the core was half as fast."""

    def timed(ok: int, cpu: float, reference: float) -> Phase:
        return replace(_phase(ok, 2.0, cpu, cpu), reference_s=reference)

    phases = {
        "hop": [timed(2000, 1.0, 0.001)] * 3,
        "plain": [timed(2000, 1.5, 0.001), timed(2000, 3.0, 0.002), timed(2000, 1.5, 0.001)],
        "session": [timed(1000, 1.0, 0.002)] * 3,
        "pkjwt": [timed(1000, 1.0, 0.001)] * 3,
    }
    plain, hop, pkjwt, session = _rows(phases)
    assert plain.notes["cpu_us_per_req"] == [750, 1500, 750]
    assert plain.notes["cpu_us_per_req_scaled"] == [750, 750, 750]
    assert plain.notes["reference_us"] == [1000, 2000, 1000]
    assert hop.notes["cpu_per_req_ratio_scaled"] == pytest.approx(1.5)
    assert pkjwt.notes["cpu_us_per_req_scaled"] == [1000, 1000, 1000]
    assert session.notes["cpu_us_per_req_scaled"] == [500, 500, 500], "its rounds all ran on a core half as fast"
    assert session.notes["cpu_per_req_ratio"] == pytest.approx(1.0) and session.notes["cpu_per_req_ratio_scaled"] == 2.0


def test_scaling_without_a_reference_leaves_the_figure_as_measured() -> None:
    assert scaled(800.0, float("nan"), 0.001) == 800.0
    assert scaled(800.0, 0.002, float("nan")) == 800.0
    assert scaled(800.0, 0.002, 0.001) == pytest.approx(400.0)


def test_the_reference_is_timed_on_the_core_asked_for_and_the_caller_keeps_its_cores() -> None:
    before = os.sched_getaffinity(0)
    seconds = reference_seconds(0, repeat=1)
    assert 0 < seconds < 5 and os.sched_getaffinity(0) == before
    with Sampler(0, interval=0.01) as sampler:
        while len(sampler.samples) < 3:
            time.sleep(0.01)
    assert sampler.median > 0 and sampler._thread.is_alive() is False
