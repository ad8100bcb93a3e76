"""Review (issue 16): the STS's certificate paths attacked with malformed certificates, over real TLS.

Behind a ``[tls] trusted_proxies`` terminator the STS parses whatever certificate the RFC 9440
``Client-Cert`` header carries. Terminators that forward certificates they did not verify are
the normal set-up for RFC 8705 §2.2 self-signed clients (nginx ``ssl_verify_client
optional_no_ca``, Envoy ``forward_client_cert_details`` with ``trust_chain_verification:
ACCEPT_UNTRUSTED``), so the certificate's content is the caller's. SECURITY.md: a reject is the
standard error and an audit record, never a 5xx.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sts_mtlskit import MtlsSts, credentials, mtls_sts

from helpers import ACCESS, AGENT, JWT, SVC_B, TOKEN_EXCHANGE, admin_token
from tether.identity.dev_x509 import DevCA
from tether.rules.certificate import client_cert_header

OTHER = "spiffe://tether.local/agent/other"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsSts]:
    with mtls_sts(tmp_path_factory.mktemp("review-sts"), extra_toml='[tls]\ntrusted_proxies = ["127.0.0.1/32"]\n') as m:
        yield m


def _duplicate_san(der: bytes) -> bytes:
    """The SVID with its extended-key-usage extension's OID turned into a second SAN (same length,
    so the DER stays well formed; the signature no longer matters: parsing comes first)."""
    eku, san = bytes.fromhex("0603551d25"), bytes.fromhex("0603551d11")
    assert der.count(eku) == 1
    return der.replace(eku, san)


def _bad_version(der: bytes) -> bytes:
    """The SVID with an X.509 version the parser rejects (``[0] INTEGER 2`` becomes 5)."""
    v3 = bytes.fromhex("a003020102")
    assert der.count(v3) == 1
    return der.replace(v3, bytes.fromhex("a003020105"))


MALFORMED = {"duplicate-san": _duplicate_san, "bad-version": _bad_version}


def _header(der: bytes) -> dict[str, str]:
    return {"Client-Cert": client_cert_header(der)}


def _refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.json()["error"] == error, response.text


@pytest.mark.parametrize("malformed", sorted(MALFORMED))
def test_review_MTLS_02_a_malformed_certificate_is_invalid_client_not_500(proxied: MtlsSts, malformed: str) -> None:
    svid = proxied.home.issue_svid(AGENT)
    task = proxied.create_task()
    # positive control: the well-formed certificate from the terminator authenticates
    ok = proxied.post(None, credentials(task["id"]), headers=_header(svid.der))
    assert ok.status_code == 200, ok.text
    task = proxied.create_task()
    response = proxied.post(None, credentials(task["id"]), headers=_header(MALFORMED[malformed](svid.der)))
    _refused(response, 401, "invalid_client")


@pytest.mark.parametrize("malformed", sorted(MALFORMED))
def test_review_AUX_04_introspect_with_a_malformed_certificate_is_invalid_client_not_500(
    proxied: MtlsSts, malformed: str
) -> None:
    svid = proxied.home.issue_svid(AGENT)
    form = {"client_id": AGENT, "token": "x.y.z"}
    response = proxied.http(None).post(proxied.url + "/introspect", data=form, headers=_header(MALFORMED[malformed](svid.der)))
    _refused(response, 401, "invalid_client")


def test_review_AUX_04_introspection_of_a_certificate_only_token_says_bearer_not_dpop(proxied: MtlsSts) -> None:
    """RFC 7662 §2.2 ``token_type`` is how the token is presented: a token bound only by
    ``cnf.x5t#S256`` (no ``jkt``) is a Bearer token (RFC 8705 §3, and the STS's own token
    response says ``Bearer``); an RS trusting introspection would demand a DPoP proof that
    can never come."""
    svid = proxied.home.issue_svid(AGENT)
    task = proxied.create_task()
    issued = proxied.post(None, credentials(task["id"]), headers=_header(svid.der))
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "Bearer"
    body = proxied.introspect(issued.json()["access_token"])
    assert body["active"] is True and "jkt" not in body["cnf"]
    assert body["token_type"] == "Bearer", body


def test_review_MTLS_02_a_rotated_x509_bundle_is_honoured_at_the_handshake_too(tmp_path: Path) -> None:
    """``identity.x509.pem_file`` re-reads a trust domain's X.509 bundle when it changes ("Bundles
    rotate"), but the server's TLS context loaded the CA files once at startup: an SVID from the
    trust domain's new CA (SPIRE rotates its CA every ``ca_ttl``, 24 h by default, and
    spiffe-helper rewrites bundle.pem) failed the handshake until the STS restarted; the TLS
    context now follows the files (``web.tls.RotatingContext``)."""
    with mtls_sts(tmp_path) as m:
        rotated = DevCA.create("tether.local")
        bundle = m.directory / "x509" / "tether.local.pem"
        bundle.write_bytes(m.home.bundle_pem + rotated.bundle_pem)  # the new CA published beside the old one
        old, new = m.home.issue_svid(AGENT), rotated.issue_svid(AGENT)
        task = m.create_task()
        ok = m.post(old, credentials(task["id"]))  # control: the old CA still works
        assert ok.status_code == 200, ok.text
        task = m.create_task()
        try:
            response = m.post(new, credentials(task["id"]))
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            pytest.fail(f"the rotated CA's SVID failed the TLS handshake: {exc!r}")
        assert response.status_code == 200, response.text


def test_review_kill_switch_stops_an_mtls_agent_sessions_and_hops(tmp_path: Path) -> None:
    """Checked sound (no defect): the agent kill switch stops certificate-authenticated sessions
    and the hops of a certificate-bound session already issued, as for DPoP agents."""
    with mtls_sts(tmp_path) as m:
        svid = m.home.issue_svid(AGENT)
        task = m.create_task(audiences=["https://wiki.example"])
        session = m.post(svid, credentials(task["id"]))
        assert session.status_code == 200, session.text
        token = session.json()["access_token"]
        hop = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS,
               "resource": "https://wiki.example"}  # fmt: skip
        assert m.post(svid, hop).status_code == 200  # control
        client, admin = admin_token(m.running, m.client(None))
        blocked = client.api("POST", "/principals/block", admin, json={"agent": AGENT})
        assert blocked.status_code == 200, blocked.text
        after = m.post(svid, hop)
        assert after.status_code in (400, 401, 403) and after.json()["error"] != "server_error", after.text
        again = m.post(svid, credentials(task["id"]))
        assert again.status_code in (400, 401, 403), again.text


def test_review_delegation_of_a_certificate_bound_hop_needs_the_audiences_identity_not_the_certificate(
    tmp_path: Path,
) -> None:
    """Checked, by design (RFC 8693 §4.1 delegation; brief: "can a service that received the
    agent's token re-use it without the certificate?"): yes — the audience service redeems the
    agent's certificate-bound hop token with its own workload JWT as ``actor_token`` and its own
    DPoP key, and the onward token is bound to that key only. Anyone else holding the token
    (another workload of the same trust domain with its own credentials) is refused."""
    b, c = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
    with mtls_sts(tmp_path, extra_toml=f'[[resources]]\nuri = "{b}"\nprincipals = ["{SVC_B}"]\n') as m:
        svid = m.home.issue_svid(AGENT)
        task = m.create_task(audiences=[b, c])
        session = m.post(svid, credentials(task["id"])).json()["access_token"]
        hop_form = {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS, "resource": b}
        hop = m.post(svid, hop_form)
        assert hop.status_code == 200, hop.text
        token = hop.json()["access_token"]
        # a stranger with valid credentials of its own (the agent's sibling) cannot redeem it
        stranger = m.client(None).hop(token, c, actor_token=m.running.svid(OTHER), actor_token_type=JWT)
        _refused(stranger, 400, "invalid_grant")
        # the audience service, without the agent's certificate: a token bound to its own key
        service = m.client(None)
        onward = service.hop(token, c, actor_token=m.running.svid(SVC_B), actor_token_type=JWT)
        assert onward.status_code == 200, onward.text
        claims = json.loads(base64.urlsafe_b64decode(onward.json()["access_token"].split(".")[1] + "=="))
        assert set(claims["cnf"]) == {"jkt"} and claims["act"]["sub"] == SVC_B
