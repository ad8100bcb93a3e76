"""Identity sources own disjoint namespaces of principal names (issue 21 finding 2), pure rules."""

from __future__ import annotations

import pytest

from tether.rules.namespace import Namespace, collisions, source_of

TD = Namespace("spiffe", "spiffe://prod.example", "spiffe://prod.example/")
PROD = Namespace("oidc", "https://prod.k8s", "k8s-prod:")
DEV = Namespace("oidc", "https://dev.k8s", "k8s-dev:")
CLIENT = Namespace("client", "client:orchestrator", "client:orchestrator", exact=True)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (PROD, Namespace("oidc", "https://dev.k8s", "k8s-prod:")),  # the same prefix
        (PROD, Namespace("oidc", "https://dev.k8s", "k8s-prod:eu/")),  # one inside the other
        (Namespace("oidc", "https://x", "k8s"), DEV),  # a shorter prefix covers a longer one
        (PROD, Namespace("client", "k8s-prod:ops", "k8s-prod:ops", exact=True)),  # a client inside a prefix
        (TD, Namespace("client", "spiffe://prod.example/c", "spiffe://prod.example/c", exact=True)),
        (CLIENT, Namespace("client", "client:orchestrator", "client:orchestrator", exact=True)),
        (Namespace("oidc", "https://x", "spif"), TD),  # would render names in a trust domain
    ],
)
def test_overlapping_namespaces_collide(a: Namespace, b: Namespace) -> None:
    assert collisions([a, b]) == [(a, b)]
    assert collisions([b, a]) == [(b, a)]


def test_disjoint_namespaces_do_not_collide_and_each_name_has_one_source() -> None:
    spaces = [TD, PROD, DEV, CLIENT, Namespace("spiffe", "spiffe://prod.example.org", "spiffe://prod.example.org/")]
    assert collisions(spaces) == []
    assert source_of("k8s-prod:agents/a", spaces) is PROD
    assert source_of("k8s-dev:agents/a", spaces) is DEV
    assert source_of("client:orchestrator", spaces) is CLIENT
    assert source_of("client:orchestrator2", spaces) is None  # an exact namespace holds one name only
    assert source_of("spiffe://prod.example/agent", spaces) is TD
    assert source_of("k8s:agents/a", spaces) is None


def test_an_ambiguous_principal_has_no_source() -> None:
    """Never reached with a checked configuration; an unchecked one must not pick either source."""
    assert source_of("k8s-prod:a", [PROD, Namespace("oidc", "https://dev.k8s", "k8s-")]) is None


@pytest.mark.parametrize(
    ("space", "domain"), [(TD, "prod.example"), (PROD, "https://prod.k8s"), (CLIENT, "client:orchestrator")]
)
def test_trust_domain_is_what_cedar_sees(space: Namespace, domain: str) -> None:
    assert space.trust_domain == domain
