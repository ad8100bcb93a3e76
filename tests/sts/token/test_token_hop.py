"""Step 3 of the flow: session token + DPoP from its key + ``resource`` → hop token.

Attenuation only (T-01/T-02/T-03, TX-07), proof of possession at the STS, and subject
token validation (TX-01, RFC 9068 §4). Each refusal is checked on the wire, in the
audit chain, for leaks, and followed by a positive control with the same session.
"""

from __future__ import annotations

import copy
import json

import pytest
from joserfc.jwk import ECKey
from tokenkit import (
    JWT,
    SERVICE_B,
    SERVICE_C,
    RawKey,
    audit_mark,
    b64url,
    claims_of,
    header_of,
    hop_form,
    ok,
    refused,
    sign_jws,
)

from helpers import AGENT, Client, RunningSts, create_task
from tether.errors import InvalidToken
from tether.rules.jws import sign_compact


def _session(sts: RunningSts, **task_fields: object) -> tuple[Client, dict[str, object], str]:
    task = create_task(sts, audiences=[SERVICE_B, SERVICE_C], **task_fields)
    agent = Client(sts)
    return agent, task, ok(agent.session(str(task["id"])))["access_token"]


def test_TX_07_hop_token_shape_and_scope_subset(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, task, session = _session(sts, purpose="read the wiki")
    response = agent.hop(session, SERVICE_B, scope="wiki:read")
    body = ok(response)
    assert body["scope"] == "wiki:read" and body["token_type"] == "DPoP"
    claims = claims_of(body["access_token"])
    parent = claims_of(session)
    assert header_of(body["access_token"])["typ"] == "at+jwt"
    assert claims["aud"] == SERVICE_B
    assert claims["scope"] == "wiki:read"
    assert claims["cnf"] == {"jkt": agent.key.jkt}
    assert claims["txn"] == task["id"] and claims["purp"] == "read the wiki"
    assert claims["sub"] == AGENT and claims["client_id"] == AGENT and "act" not in claims
    assert claims["exp"] <= parent["exp"]
    assert claims["exp"] - claims["iat"] <= 300
    issued = sts.last_audit("token.issued")
    assert issued.detail["parent"] == parent["jti"] and issued.detail["token_kind"] == "hop"
    # Without ``scope`` the hop keeps the parent's scope, never more.
    assert ok(agent.hop(session, SERVICE_B))["scope"] == parent["scope"]


def test_TX_05_on_behalf_of_hop_keeps_act(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts, on_behalf_of="user:bob")
    claims = claims_of(ok(agent.hop(session, SERVICE_B))["access_token"])
    assert claims["sub"] == "user:bob" and claims["act"] == {"sub": AGENT}


def test_T_01_scope_widening_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"], scope="wiki:read"))["access_token"]
    for scope, named in (("wiki:read wiki:write", "wiki:write"), ("wiki:read wiki:write admin", "admin"), ("root", "root")):
        since = audit_mark(sts)
        response = agent.hop(session, SERVICE_B, scope=scope)
        record = refused(sts, response, since=since, status=400, error="invalid_scope", description=named, secrets=[session])
        assert record.jti == claims_of(session)["jti"] and record.task == task["id"]
    assert ok(agent.hop(session, SERVICE_B, scope="wiki:read"))["scope"] == "wiki:read"


def test_T_02_audience_outside_task_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    for target in ("http://127.0.0.1:9999", sts.url, "https://evil.example/api", "urn:tether:internal"):
        since = audit_mark(sts)
        response = agent.hop(session, target)
        record = refused(sts, response, since=since, status=400, error="invalid_target", secrets=[session])
        assert record.detail.get("audience") == target
    ok(agent.hop(session, SERVICE_B))


def test_T_02_several_audiences_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    forms: list[dict[str, str | list[str]]] = [
        {"resource": [SERVICE_B, SERVICE_C]},
        {"resource": SERVICE_B, "audience": SERVICE_C},
        {"audience": [SERVICE_B, SERVICE_C]},
    ]
    for targets in forms:
        since = audit_mark(sts)
        form = {**hop_form(session, None), **targets}
        response = agent.post_token(form)  # type: ignore[arg-type]  # a list value, on purpose
        refused(sts, response, since=since, status=400, error="invalid_target", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_T_02_AUX_02_resource_with_fragment_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    for target in (SERVICE_B + "#frag", SERVICE_B + "/#", "/relative/path", "127.0.0.1:9001"):
        since = audit_mark(sts)
        response = agent.hop(session, target)
        refused(sts, response, since=since, status=400, error="invalid_target", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_AUX_02_missing_resource_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    since = audit_mark(sts)
    response = agent.hop(session, None)
    refused(sts, response, since=since, status=400, error="invalid_target", reason="resource or audience", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_T_02_audience_parameter_accepted_like_resource(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    assert claims_of(ok(agent.hop(session, None, audience=SERVICE_C))["access_token"])["aud"] == SERVICE_C
    # Naming the same target in both parameters is one target.
    assert claims_of(ok(agent.hop(session, SERVICE_B, audience=SERVICE_B))["access_token"])["aud"] == SERVICE_B


def test_T_03_hop_never_outlives_session_even_in_a_loop(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[SERVICE_B, SERVICE_C])
    agent = Client(sts)
    session = ok(agent.session(task["id"], svid=sts.svid(ttl=100)))["access_token"]
    session_exp = claims_of(session)["exp"]
    previous = None
    for _ in range(5):
        body = ok(agent.hop(session, SERVICE_B))
        claims = claims_of(body["access_token"])
        assert claims["exp"] <= session_exp
        assert claims["exp"] <= task["expires_at"]
        assert body["expires_in"] <= session_exp - claims["iat"]
        if previous is not None:
            assert body["expires_in"] < previous
        previous = body["expires_in"]
        sts.clock.advance(15)
    # Past the session's expiry no loop can keep access alive.
    sts.clock.advance(100)
    since = audit_mark(sts)
    refused(
        sts, agent.hop(session, SERVICE_B), since=since, status=400, error="invalid_grant", reason="exp ", secrets=[session]
    )
    fresh = ok(agent.session(task["id"]))["access_token"]
    ok(agent.hop(fresh, SERVICE_B))


def test_T_03_hop_ttl_caps_long_session(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"], svid=sts.svid(ttl=1200)))["access_token"]
    parent = claims_of(session)
    assert parent["exp"] - parent["iat"] <= 900
    claims = claims_of(ok(agent.hop(session, SERVICE_B))["access_token"])
    assert claims["exp"] - claims["iat"] <= 300 and claims["exp"] <= parent["exp"]


def test_DPOP_14_session_token_with_proof_from_another_key_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    thief = Client(sts)
    since = audit_mark(sts)
    response = thief.hop(session, SERVICE_B)
    record = refused(
        sts,
        response,
        since=since,
        status=400,
        error="invalid_dpop_proof",
        reason="does not match the subject token binding",
        secrets=[session],
    )
    # the thief is not the agent: nothing is attributed to the victim's identity or task
    assert record.principal is None and record.task is None
    ok(agent.hop(session, SERVICE_B))


def test_BCP_07_hop_token_exchanged_without_actor_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    hop = ok(agent.hop(session, SERVICE_B))["access_token"]
    since = audit_mark(sts)
    response = agent.hop(hop, SERVICE_C)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="without actor_token", secrets=[hop, session])
    ok(agent.hop(session, SERVICE_C))


def _tamper(token: str) -> str:
    head, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return ".".join((head, payload, signature[:middle] + flipped + signature[middle + 1 :]))


def test_A_01_subject_token_tampered_or_forged_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    header, claims = header_of(session), claims_of(session)
    widened = copy.deepcopy(claims)
    widened["scope"] = "wiki:read wiki:write wiki:admin"
    body_swapped = ".".join((session.split(".")[0], b64url(json.dumps(widened).encode()), session.split(".")[2]))
    rogue = RawKey("P-256")
    foreign = sign_jws(header, claims, rogue, "ES256")
    unsigned = sign_jws({**header, "alg": "none"}, claims, None, "none")
    hmac_forged = sign_jws({**header, "alg": "HS256"}, claims, b"public-key-as-secret", "HS256")
    for bad, reason in (
        (_tamper(session), "signature"),
        (body_swapped, None),
        (foreign, "signature"),
        (unsigned, None),
        (hmac_forged, "algorithm"),
    ):
        since = audit_mark(sts)
        response = agent.hop(bad, SERVICE_B)
        refused(sts, response, since=since, status=400, error="invalid_grant", reason=reason, secrets=[bad, session])
    ok(agent.hop(session, SERVICE_B))


def test_JWT_11_subject_token_with_typ_jwt_refused(shared_sts: RunningSts) -> None:
    """A token signed with the issuer's real key but typed ``JWT`` is not an access token (RFC 9068 §4)."""
    sts = shared_sts
    agent, _, session = _session(sts)
    claims = claims_of(session)
    keyring = sts.sts.ctx.keyring
    for typ in ("JWT", "dpop+jwt", None):
        header = {"alg": keyring.current.alg, "kid": keyring.current.kid} | ({"typ": typ} if typ else {})
        retyped = sign_compact(header, claims, keyring.current.private, keyring.current.alg)
        since = audit_mark(sts)
        response = agent.hop(retyped, SERVICE_B)
        refused(sts, response, since=since, status=400, error="invalid_grant", reason="typ", secrets=[retyped, session])
    ok(agent.hop(session, SERVICE_B))


def test_C_01_expired_subject_token_refused(sts: RunningSts) -> None:
    task = create_task(sts, audiences=[SERVICE_B])
    agent = Client(sts)
    session = ok(agent.session(task["id"], svid=sts.svid(ttl=60)))["access_token"]
    ok(agent.hop(session, SERVICE_B))
    sts.clock.advance(61)
    since = audit_mark(sts)
    response = agent.hop(session, SERVICE_B)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="exp", secrets=[session])
    fresh = ok(agent.session(task["id"]))["access_token"]
    ok(agent.hop(fresh, SERVICE_B))


def test_TX_01_access_token_declared_as_jwt_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, task, session = _session(sts)
    form = hop_form(session, None, task=str(task["id"]))
    form["subject_token_type"] = JWT
    since = audit_mark(sts)
    response = agent.post_token(form)
    refused(sts, response, since=since, status=400, error="invalid_grant", reason="issued by tether", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_TX_01_svid_declared_as_access_token_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    task = create_task(sts, audiences=[SERVICE_B])
    agent = Client(sts)
    svid = sts.svid()
    since = audit_mark(sts)
    response = agent.hop(svid, SERVICE_B, task=task["id"])
    refused(sts, response, since=since, status=400, error="invalid_grant", secrets=[svid])
    # The same SVID, declared correctly, is still good: the refusal did not spend it.
    ok(agent.session(task["id"], svid=svid))


@pytest.mark.parametrize("declared", ["urn:ietf:params:oauth:token-type:id_token", "jwt", "access_token", "urn:x:unknown"])
def test_TX_01_unknown_subject_token_type_refused(shared_sts: RunningSts, declared: str) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    form = hop_form(session, SERVICE_B)
    form["subject_token_type"] = declared
    since = audit_mark(sts)
    refused(sts, agent.post_token(form), since=since, status=400, error="invalid_request", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_TX_07_hop_task_mismatch_refused(shared_sts: RunningSts) -> None:
    sts = shared_sts
    agent, _, session = _session(sts)
    other = create_task(sts, audiences=[SERVICE_B])
    since = audit_mark(sts)
    response = agent.hop(session, SERVICE_B, task=other["id"])
    refused(sts, response, since=since, status=400, error="invalid_request", secrets=[session])
    ok(agent.hop(session, SERVICE_B))


def test_JWT_08_subject_token_from_another_deployment_refused(shared_sts: RunningSts, sts: RunningSts) -> None:
    """A token from another tether deployment (its own keys) is foreign here, even with our issuer renamed in."""
    agent, _, foreign_session = _session(shared_sts)
    task = create_task(sts, audiences=[SERVICE_B])
    foreign_key = shared_sts.sts.ctx.keyring.current
    renamed = sign_compact(
        header_of(foreign_session),
        {**claims_of(foreign_session), "iss": sts.url, "aud": sts.url, "txn": task["id"]},
        foreign_key.private,
        foreign_key.alg,
    )
    local = Client(sts, key=agent.key)
    for bad in (foreign_session, renamed):
        since = audit_mark(sts)
        response = local.hop(bad, SERVICE_B)
        refused(sts, response, since=since, status=400, error="invalid_grant", secrets=[bad])
    own = ok(local.session(task["id"]))["access_token"]
    ok(local.hop(own, SERVICE_B))


def test_DPOP_14_thumbprint_helper_agrees_with_joserfc() -> None:
    """The hand-built JWK thumbprint agrees with joserfc's RFC 7638 implementation."""
    key = RawKey("P-256")
    assert ECKey.import_key(key.jwk).thumbprint() == key.jkt


def test_AUX_01_a_cached_subject_token_is_refused_once_its_key_is_gone(sts: RunningSts, shared_sts: RunningSts) -> None:
    """The verified-token cache holds only while the key that verified the token is still in the
    keyring (and unchanged): a hit must not outlive the key."""
    agent, _, session = _session(sts)
    ok(agent.hop(session, SERVICE_B))  # verified once, now cached
    ctx = sts.sts.ctx
    own = ctx.keyring
    assert ctx.verify_own_token(session, audience=None).jti == claims_of(session)["jti"]
    ctx.keyring = shared_sts.sts.ctx.keyring  # another deployment's keys: our kid is gone
    try:
        with pytest.raises(InvalidToken):
            ctx.verify_own_token(session, audience=None)
    finally:
        ctx.keyring = own
    assert ctx.verify_own_token(session, audience=None).jti == claims_of(session)["jti"]  # positive control
    ok(agent.hop(session, SERVICE_B))
