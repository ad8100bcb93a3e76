"""``[[federation]]``: a peer trust domain, typed and defaulted, and every refusal naming its key (FED-01)."""

from __future__ import annotations

from typing import Any

import pytest

import tether.features  # noqa: F401 - registers the feature tables a config needs
from tether.config import parse_config
from tether.errors import ConfigError

OWN = "http://127.0.0.1:8700"
PEER: dict[str, Any] = {
    "name": "a",
    "issuer": "https://sts.a.example",
    "jwks_uri": "https://sts.a.example/jwks",
    "agents": ["spiffe://a.example/agent/*"],
    "audiences": ["https://wiki.b.example"],
    "scopes": ["wiki:read"],
    "feed_principal": "spiffe://b.example/feed",
}


def _parse(*peers: dict[str, Any], **top: Any) -> Any:
    return parse_config({"issuer": OWN, "federation": list(peers), **top}, path=None, env={})


def _peer(**changes: Any) -> dict[str, Any]:
    row = {**PEER, **changes}
    return {k: v for k, v in row.items() if v is not None}


def test_a_peer_with_its_defaults_and_namespace() -> None:
    cfg = _parse(_peer())
    (peer,) = cfg.federation
    assert (peer.max_depth, peer.max_ttl, peer.max_tokens, peer.stale_after) == (2, 900, 100, 10)
    assert peer.max_crossings_per_minute == 600
    assert peer.algorithms == ("ES256", "EdDSA") and peer.scopes == frozenset({"wiki:read"})
    assert peer.local_name("spiffe://a.example/agent/x") == "fed:a/spiffe://a.example/agent/x"
    assert peer.admits_agent("spiffe://a.example/agent/x") and not peer.admits_agent("spiffe://a.example/tool/x")
    spaces = [s for s in cfg.namespaces if s.kind == "federation"]
    assert [(s.issuer, s.prefix) for s in spaces] == [(PEER["issuer"], "fed:a/")]
    assert _parse().federation == ()


@pytest.mark.parametrize(
    ("peers", "key"),
    [
        ([_peer(bogus=1)], "federation[0].bogus"),
        ([_peer(name=None)], "federation[0].name"),
        ([_peer(feed_principal=None)], "federation[0].feed_principal"),
        ([_peer(name="A B")], "federation[0].name"),
        ([_peer(name=3)], "federation[0].name"),
        ([_peer(issuer="not a url")], "federation[0].issuer"),
        ([_peer(issuer=OWN)], "federation[0].issuer"),
        ([_peer(jwks_uri=None)], "federation[0]"),
        ([_peer(jwks_file="a.json")], "federation[0]"),
        ([_peer(jwks_uri="ftp://x/jwks")], "federation[0].jwks_uri"),
        ([_peer(jwks_uri=None, bundle_endpoint="http://a.example/bundle")], "federation[0].bundle_endpoint"),
        ([_peer(agents=[])], "federation[0].agents"),
        ([_peer(agents="spiffe://a.example/agent")], "federation[0].agents"),
        ([_peer(agents=["not-a-principal"])], "federation[0].agents"),
        ([_peer(audiences=["relative/path"])], "federation[0].audiences"),
        ([_peer(audiences=["https://b.example/#frag"])], "federation[0].audiences"),
        ([_peer(scopes=['bad"scope'])], "federation[0].scopes"),
        ([_peer(scopes=[])], "federation[0].scopes"),
        ([_peer(feed_principal="nobody")], "federation[0].feed_principal"),
        ([_peer(algorithms=["HS256"])], "federation[0].algorithms"),
        ([_peer(algorithms=["none"])], "federation[0].algorithms"),
        ([_peer(max_depth=6)], "federation[0].max_depth"),
        ([_peer(max_depth=True)], "federation[0].max_depth"),
        ([_peer(max_ttl=0)], "federation[0].max_ttl"),
        ([_peer(max_tokens=0)], "federation[0].max_tokens"),
        ([_peer(stale_after=0)], "federation[0].stale_after"),
        ([_peer(max_crossings_per_minute=0)], "federation[0].max_crossings_per_minute"),
        ([_peer(max_crossings_per_minute="10")], "federation[0].max_crossings_per_minute"),
        ([_peer(), _peer(issuer="https://other.example")], "federation"),
        ([_peer(), _peer(name="b")], "federation"),
    ],
)
def test_fed01_bad_peers_name_their_key(peers: list[dict[str, Any]], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _parse(*peers)
    assert str(raised.value).startswith(key + ":"), str(raised.value)


def test_federation_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"issuer": OWN, "federation": {"name": "a"}}, path=None, env={})
    assert str(raised.value).startswith("federation:"), str(raised.value)


def test_fed02_a_client_id_inside_a_peers_namespace_is_refused() -> None:
    """A registered client named like a peer's principal would let a local workload pass as the peer's."""
    client = {"client_id": "fed:a/spiffe://a.example/agent/x", "jwks": {"keys": []}}
    with pytest.raises(ConfigError) as raised:
        _parse(_peer(), clients=[client])
    assert str(raised.value).startswith("federation[0].name:") and "clients[0].client_id" in str(raised.value)


def test_fed02_review_a_peer_named_like_a_local_trust_domain_is_refused() -> None:
    """rvfed: Cedar's ``trust_domain`` of a peer's principal is the peer's name, of a local SPIFFE
    workload its trust domain; a peer named like a local trust domain (natural when both sides run
    the dev domain ``tether.local``) would satisfy a policy written for local workloads
    (``principal.trust_domain == "tether.local"``), so the name is refused (FED-02). Client ids and
    OIDC issuers contain ``:``, which a peer name cannot."""
    domain = {"name": "tether.local", "bundle_file": "td.json"}
    with pytest.raises(ConfigError) as raised:
        _parse(_peer(name="tether.local"), trust_domains=[domain])
    assert str(raised.value).startswith("federation[0].name:") and "trust_domain" in str(raised.value), raised.value
