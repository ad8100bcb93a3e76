"""Certificate binding in RFC 8693 attenuation (``tether.rules.exchange``): RFC 8705 §3, SECURITY.md MTLS-01, MTLS-04.

Pure: the STS hands the rules the thumbprint of the connection's certificate (``Ask.x5t``) and
the key of the DPoP proof, if any (``Ask.jkt``). A session is bound to one or both; a hop keeps
its parent's binding and is derived only by a caller that proves every binding of the parent.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_exchange import AGENT, ISSUER, JKT, JKT_B, LIMITS, NOW, SVC, URL, as_token, identity, make_task, session

from tether.errors import InvalidDPoPProof, InvalidGrant, InvalidRequest, OAuthError
from tether.model import AccessToken, IdentityKind
from tether.rules.exchange import Ask, check_hop_binding, derive_hop, derive_session

X5T = "x5t-of-the-agent-certificate-aaaaaaaaaaaaaa"
X5T_OTHER = "x5t-of-another-certificate-bbbbbbbbbbbbbbbb"


def ask(*, jkt: str | None = None, x5t: str | None = None, audience: str | None = None) -> Ask:
    return Ask(None, audience, jkt, ISSUER, LIMITS, x5t=x5t)


def test_MTLS_01_a_certificate_only_session_carries_x5t_and_no_jkt() -> None:
    grant = derive_session(identity(jti=None), make_task(), ask(x5t=X5T), now=NOW)
    assert (grant.x5t, grant.jkt) == (X5T, None)
    token = as_token(grant)
    assert (token.x5t, token.jkt, token.bindings) == (X5T, None, "mtls")


def test_MTLS_04_a_session_with_proof_and_certificate_is_bound_to_both() -> None:
    grant = derive_session(identity(), make_task(), ask(jkt=JKT, x5t=X5T), now=NOW)
    assert as_token(grant).bindings == "dpop+mtls"


def test_a_session_is_never_a_bearer_token() -> None:
    with pytest.raises(InvalidRequest) as info:
        derive_session(identity(), make_task(), ask(), now=NOW)
    assert info.value.error == "invalid_request"


def test_a_self_signed_client_redeems_only_its_own_task() -> None:
    client = identity(principal="user:batch", kind=IdentityKind.CLIENT, issuer="user:batch", jti=None)
    grant = derive_session(client, make_task(agent="user:batch"), ask(x5t=X5T), now=NOW, agent_source=("client", "user:batch"))
    assert (grant.client_kind, grant.client_domain) == ("client", "user:batch")
    with pytest.raises(InvalidGrant):  # the same name from another source (rules.namespace)
        derive_session(client, make_task(agent="user:batch"), ask(x5t=X5T), now=NOW, agent_source=("spiffe", "spiffe://x"))


def mtls_session(**changes: Any) -> AccessToken:
    return session(**{"jkt": None, "x5t": X5T, **changes})


def refused(error: type[OAuthError], parent: AccessToken, the_ask: Ask, **actor: Any) -> None:
    with pytest.raises(error) as info:
        derive_hop(parent, make_task(), the_ask, now=NOW, **actor)
    assert type(info.value) is error and info.value.error == error.error


def test_MTLS_01_a_hop_over_the_same_certificate_keeps_the_binding() -> None:
    grant = derive_hop(mtls_session(), make_task(), ask(x5t=X5T, audience=URL["b"]), now=NOW)
    assert (grant.x5t, grant.jkt, grant.aud) == (X5T, None, URL["b"])


def test_MTLS_01_a_hop_with_another_certificate_is_invalid_grant() -> None:
    refused(InvalidGrant, mtls_session(), ask(x5t=X5T_OTHER, audience=URL["b"]))


def test_MTLS_01_a_hop_without_a_certificate_is_invalid_grant() -> None:
    refused(InvalidGrant, mtls_session(), ask(audience=URL["b"]))
    refused(InvalidGrant, mtls_session(), ask(jkt=JKT, audience=URL["b"]))  # a proof does not stand in for it


def test_MTLS_01_a_proof_sent_with_a_certificate_only_parent_does_not_bind_the_hop_to_it() -> None:
    grant = derive_hop(mtls_session(), make_task(), ask(jkt=JKT_B, x5t=X5T, audience=URL["b"]), now=NOW)
    assert (grant.x5t, grant.jkt) == (X5T, None)  # the hop's binding is its parent's


def test_MTLS_04_both_bindings_need_both_proofs() -> None:
    parent = mtls_session(jkt=JKT)
    grant = derive_hop(parent, make_task(), ask(jkt=JKT, x5t=X5T, audience=URL["b"]), now=NOW)
    assert (grant.x5t, grant.jkt) == (X5T, JKT)
    refused(InvalidDPoPProof, parent, ask(x5t=X5T, audience=URL["b"]))
    refused(InvalidDPoPProof, parent, ask(jkt=JKT_B, x5t=X5T, audience=URL["b"]))
    refused(InvalidGrant, parent, ask(jkt=JKT, audience=URL["b"]))


def test_DPOP_a_dpop_only_parent_still_needs_its_key() -> None:
    refused(InvalidDPoPProof, session(), ask(audience=URL["b"]))
    refused(InvalidDPoPProof, session(), ask(jkt=JKT_B, audience=URL["b"]))
    assert derive_hop(session(), make_task(), ask(jkt=JKT, x5t=X5T, audience=URL["b"]), now=NOW).x5t is None


def test_an_unbound_parent_is_never_exchanged() -> None:
    refused(InvalidGrant, session(jkt=None), ask(audience=URL["b"]))


def test_delegation_binds_to_the_actors_key_not_the_agents_certificate() -> None:
    parent = mtls_session(aud=URL["b"])
    delegation: dict[str, Any] = {"actor": SVC["b"], "audience_principals": [SVC["b"]]}
    grant = derive_hop(parent, make_task(), ask(jkt=JKT_B, audience=URL["c"]), now=NOW, **delegation)
    assert (grant.jkt, grant.x5t, grant.actors) == (JKT_B, None, (SVC["b"],))
    refused(InvalidDPoPProof, parent, ask(audience=URL["c"]), **delegation)


def test_check_hop_binding_returns_the_hop_x5t() -> None:
    assert check_hop_binding(mtls_session(), ask(x5t=X5T), actor=None) == X5T
    assert check_hop_binding(session(), ask(jkt=JKT), actor=None) is None
    assert check_hop_binding(mtls_session(), ask(jkt=JKT), actor=AGENT) is None
