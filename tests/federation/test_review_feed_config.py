"""Review of ``[[federation]]`` transport (issue 19, SECURITY FED-01/FED-03): plain http to a peer off loopback.

The follower reads the peer's revocation feed at ``issuer`` + ``/revocations/stream`` (sending a
JWT-SVID of ``feed_principal``), and ``jwks_uri`` gives the keys that verify the peer's crossing
tokens. Over plain http a network attacker between the two would read the SVID, forge heartbeats
while withholding entries (B fresh, nothing revoked) and swap in its own keys (forged crossing
tokens). Only loopback (two deployments on one machine) may use http.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.config.federation import parse_federation
from tether.errors import ConfigError

OWN = "https://sts.b.example"


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": "a",
        "issuer": "https://sts.a.example",
        "jwks_uri": "https://sts.a.example/jwks",
        "agents": ["spiffe://a.example/agent/*"],
        "audiences": ["https://wiki.b.example"],
        "scopes": ["wiki:read"],
        "feed_principal": "spiffe://b.example/feed",
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"issuer": "http://sts.a.example", "jwks_uri": "https://sts.a.example/jwks"}, "federation[0].issuer"),
        ({"jwks_uri": "http://sts.a.example/jwks"}, "federation[0].jwks_uri"),
        ({"issuer": "http://10.0.0.7:8700"}, "federation[0].issuer"),
    ],
    ids=["issuer", "jwks_uri", "private-address"],
)
def test_review_feed_fed03_plain_http_peer_off_loopback_refused(overrides: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_federation({"federation": [_row(**overrides)]}, tmp_path, OWN)
    assert refused.value.key == key


@pytest.mark.parametrize("host", ["127.0.0.1:8700", "localhost:8700", "[::1]:8700"])
def test_review_feed_plain_http_peer_on_loopback_accepted(host: str, tmp_path: Path) -> None:
    row = _row(issuer=f"http://{host}", jwks_uri=f"http://{host}/jwks")
    (peer,) = parse_federation({"federation": [row]}, tmp_path, OWN)
    assert peer.issuer == f"http://{host}"
