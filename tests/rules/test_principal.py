"""Principal names (``tether.rules.principal``): SPIFFE ID canonical form (SPIFFE ID spec §2), JWT-08, SVID-04.

A principal is compared as a string, so two spellings of one workload must not both be accepted:
the SPIFFE ID has to arrive already normalised.
"""

from __future__ import annotations

import pytest

from tether.rules.principal import MAX_PRINCIPAL_LENGTH, is_principal, spiffe_trust_domain

VALID_SPIFFE = [
    ("spiffe://example.org/workload", "example.org"),
    ("spiffe://example.org/ns/prod/sa/api", "example.org"),
    ("spiffe://example.org/a-b_c.d", "example.org"),
    ("spiffe://example.org/UpperCasePath", "example.org"),
    ("spiffe://tether.local/agent/research", "tether.local"),
    ("spiffe://my-domain_1.example/x", "my-domain_1.example"),
    ("spiffe://example.org/...", "example.org"),
    ("spiffe://example.org/.hidden", "example.org"),
    ("spiffe://" + "d" * 255 + "/x", "d" * 255),
]

INVALID_SPIFFE = [
    ("spiffe://Example.org/workload", "upper-case-trust-domain"),
    ("SPIFFE://example.org/workload", "upper-case-scheme"),
    ("Spiffe://example.org/workload", "mixed-case-scheme"),
    ("spiffe://example.org", "no-path"),
    ("spiffe://example.org/", "root-path"),
    ("spiffe://example.org/workload/", "trailing-slash"),
    ("spiffe://example.org//workload", "empty-segment"),
    ("spiffe://example.org/./workload", "dot-segment"),
    ("spiffe://example.org/a/../workload", "dot-dot-segment"),
    ("spiffe://example.org/a/.", "trailing-dot"),
    ("spiffe://example.org/%41", "percent-encoded"),
    ("spiffe://example.org/a?b=c", "query"),
    ("spiffe://example.org/a#frag", "fragment"),
    ("spiffe://example.org:8443/a", "port"),
    ("spiffe://user@example.org/a", "userinfo"),
    ("spiffe:///a", "empty-trust-domain"),
    ("spiffe:/example.org/a", "single-slash"),
    ("spiffe:example.org/a", "opaque"),
    ("spiffe://exa mple.org/a", "space-in-domain"),
    ("spiffe://example.org/a b", "space-in-path"),
    ("spiffe://example.org/a:b", "colon-in-path"),
    ("spiffe://example.org/a+b", "plus-in-path"),
    ("spiffe://examp\u013ae.org/a", "non-ascii-domain"),
    ("spiffe://example.org/\u00e9", "non-ascii-path"),
    ("spiffe://" + "d" * 256 + "/x", "trust-domain-too-long"),
    ("spiffe://example.org/" + "a" * MAX_PRINCIPAL_LENGTH, "too-long"),
    ("spiffe://[::1]/a", "ip-literal"),
]


@pytest.mark.parametrize(("value", "domain"), VALID_SPIFFE)
def test_spiffe_id_canonical_accepted(value: str, domain: str) -> None:
    assert spiffe_trust_domain(value) == domain
    assert is_principal(value) is True


@pytest.mark.parametrize(("value", "case"), INVALID_SPIFFE, ids=[c for _, c in INVALID_SPIFFE])
def test_spiffe_id_non_canonical_refused(value: str, case: str) -> None:
    assert is_principal("spiffe://example.org/workload") is True
    assert spiffe_trust_domain(value) is None
    assert is_principal(value) is False, case


@pytest.mark.parametrize(
    "value",
    [
        "user:alice",
        "k8s:ns:default:sa:builder",
        "urn:example:agent",
        "https://issuer.example/sub",
        "client:app-1",
        "x:" + "a" * (MAX_PRINCIPAL_LENGTH - 2),
    ],
)
def test_other_principals_accepted(value: str) -> None:
    assert is_principal(value) is True
    assert spiffe_trust_domain(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "alice",
        "",
        "user:",
        ":alice",
        "1user:alice",
        "user:al ice",
        "user:alice\n",
        "user:\u00e5lice",
        "user:\x7f",
        "us er:x",
        "x:" + "a" * (MAX_PRINCIPAL_LENGTH - 1),
        None,
        1,
        ["user:alice"],
        b"user:alice",
    ],
    ids=repr,
)
def test_malformed_principals_refused(value: object) -> None:
    assert is_principal("user:alice") is True
    assert is_principal(value) is False


def test_an_oversized_value_never_enters_the_memo() -> None:
    # an unverified token's `sub` is looked up before its signature is checked
    from tether.rules.principal import _spiffe_trust_domain

    _spiffe_trust_domain.cache_clear()
    for i in range(20):
        assert spiffe_trust_domain(f"spiffe://tether.local/{i}" + "a" * MAX_PRINCIPAL_LENGTH) is None
    assert _spiffe_trust_domain.cache_info().currsize == 0
    assert spiffe_trust_domain("spiffe://tether.local/agent/x") == "tether.local"  # positive control
    assert _spiffe_trust_domain.cache_info().currsize == 1
