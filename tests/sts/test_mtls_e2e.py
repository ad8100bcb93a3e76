"""Certificate-bound tokens at the STS over real mutual TLS on loopback (RFC 8705 §2, §3; issue 16).

One STS per module (``mtlskit.mtls_sts``), served by ``ServerThread(tls=…)``; every client is a
real TLS client presenting a certificate made in the test. Session exchanges by X.509-SVID
(``tls_client_auth``) and by a registered self-signed certificate; the refusals with their exact
codes; hops over the same / another / no certificate; ``curl --cert`` as a standard client.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sts_mtlskit import BATCH, MtlsSts, credentials, mtls_sts

from helpers import ACCESS, ADMIN, AGENT, TOKEN_EXCHANGE
from services import store_sql
from tether.identity.dev_x509 import DevCA, Issued
from tether.rules.certificate import client_cert_header, thumbprint

OTHER_AGENT = "spiffe://tether.local/agent/other"
WIKI = "https://wiki.example"


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsSts]:
    with mtls_sts(tmp_path_factory.mktemp("mtls-sts")) as server:
        yield server


@pytest.fixture(scope="module")
def svid(m: MtlsSts) -> Issued:
    return m.home.issue_svid(AGENT)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    return body


def hop_form(subject: str, resource: str = WIKI) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, "resource": resource}


def session(m: MtlsSts, cert: Issued, client_id: str = AGENT, **task_fields: Any) -> tuple[str, dict[str, Any]]:
    task = m.create_task(**task_fields)
    response = m.post(cert, credentials(task["id"], client_id))
    assert response.status_code == 200, response.text
    return task["id"], response.json()


# -- session exchange by certificate ----------------------------------------------------------
def test_MTLS_02_session_by_x509_svid_is_bound_to_the_certificate(m: MtlsSts, svid: Issued) -> None:
    task_id, body = session(m, svid)
    assert body["token_type"] == "Bearer"  # RFC 8705 §3: no jkt, so no DPoP scheme
    claims = claims_of(body["access_token"])
    assert claims["cnf"] == {"x5t#S256": thumbprint(svid.der)}
    assert (claims["sub"], claims["client_id"], claims["aud"], claims["txn"]) == (AGENT, AGENT, m.url, task_id)
    issued = m.running.last_audit("token.issued")
    assert (issued.principal, issued.detail["binding"], issued.detail["x5t"]) == (AGENT, "mtls", thumbprint(svid.der))
    assert issued.detail["jkt"] is None
    # introspection shows the certificate binding (RFC 8705 §3.2)
    assert m.introspect(body["access_token"])["cnf"] == {"x5t#S256": thumbprint(svid.der)}


def test_MTLS_04_session_with_a_dpop_proof_is_bound_to_both(m: MtlsSts, svid: Issued) -> None:
    task = m.create_task()
    client = m.client(svid)
    response = client.post_token(credentials(task["id"]))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    cnf = claims_of(response.json()["access_token"])["cnf"]
    assert cnf == {"x5t#S256": thumbprint(svid.der), "jkt": client.key.jkt}
    assert m.running.last_audit("token.issued").detail["binding"] == "dpop+mtls"


def test_a_dpop_proof_sent_with_client_credentials_must_be_valid(m: MtlsSts, svid: Issued) -> None:
    task = m.create_task()
    response = m.post(svid, credentials(task["id"]), headers={"DPoP": "not-a-proof"})
    refused(response, 400, "invalid_dpop_proof")


def test_self_signed_tls_client_auth_session(m: MtlsSts) -> None:
    _, body = session(m, m.batch, BATCH, agent=BATCH)
    claims = claims_of(body["access_token"])
    assert claims["cnf"] == {"x5t#S256": thumbprint(m.batch.der)}
    assert (claims["client_id"], claims["ckd"]) == (BATCH, "client")


# -- refusals ---------------------------------------------------------------------------------
def test_BCP_10_no_certificate_is_invalid_client(m: MtlsSts) -> None:
    task = m.create_task()
    body = refused(m.post(None, credentials(task["id"])), 401, "invalid_client")
    assert "certificate" in body["error_description"]
    record = m.running.last_audit("token.refused")
    assert (record.error, record.principal) == ("invalid_client", None)  # nothing proven, nothing pinned


def test_MTLS_02_a_certificate_of_another_ca_for_the_same_domain_is_invalid_client(m: MtlsSts) -> None:
    # signed by other.example's CA (trusted at the handshake) for a tether.local SPIFFE ID
    forged = DevCA("tether.local", m.other.certificate, m.other.key).issue_svid(AGENT)
    task = m.create_task()
    refused(m.post(forged, credentials(task["id"])), 401, "invalid_client")


def test_MTLS_02_a_certificate_of_an_unknown_ca_fails_the_handshake(m: MtlsSts) -> None:
    stranger = DevCA.create("tether.local").issue_svid(AGENT)
    task = m.create_task()
    with pytest.raises(httpx.TransportError):
        m.post(stranger, credentials(task["id"]))


def test_MTLS_02_an_svid_of_another_trust_domain_is_invalid_client(m: MtlsSts) -> None:
    foreign = m.other.issue_svid("spiffe://other.example/agent/research")
    task = m.create_task()
    refused(m.post(foreign, credentials(task["id"])), 401, "invalid_client")


def test_an_svid_of_another_domain_redeems_no_task_of_this_one_and_is_attributed(m: MtlsSts) -> None:
    foreign_id = "spiffe://other.example/agent/research"
    task = m.create_task()
    refused(m.post(m.other.issue_svid(foreign_id), credentials(task["id"], foreign_id)), 400, "invalid_grant")
    record = m.running.last_audit("token.refused")
    assert record.principal == foreign_id  # the handshake and the bundle proved who sent it


def test_MTLS_02_client_id_must_be_the_certificates_spiffe_id(m: MtlsSts) -> None:
    task = m.create_task()
    refused(m.post(m.home.issue_svid(OTHER_AGENT), credentials(task["id"])), 401, "invalid_client")
    refused(m.post(m.batch, credentials(task["id"])), 401, "invalid_client")  # a registered cert, another client
    refused(m.post(m.home.issue_svid(AGENT), credentials(task["id"], BATCH)), 401, "invalid_client")


def test_MTLS_02_an_expired_certificate_is_invalid_client(m: MtlsSts) -> None:
    short = m.home.issue_svid(AGENT, ttl=300)
    task = m.create_task()
    m.running.clock.advance(600)  # the STS's clock, not the TLS layer's
    try:
        refused(m.post(short, credentials(task["id"])), 401, "invalid_client")
    finally:
        m.running.clock.advance(-600)
    assert m.post(short, credentials(task["id"])).status_code == 200  # control: the same certificate, in time


def test_client_credentials_with_a_subject_token_or_assertion_is_invalid_request(m: MtlsSts, svid: Issued) -> None:
    task = m.create_task()
    refused(m.post(svid, credentials(task["id"], subject_token="x")), 400, "invalid_request")
    refused(m.post(svid, credentials(task["id"], client_assertion="x", client_assertion_type="y")), 400, "invalid_request")
    refused(m.post(svid, {"grant_type": "client_credentials", "client_id": AGENT}), 400, "invalid_request")
    refused(m.post(svid, {"grant_type": "client_credentials", "task": task["id"]}), 400, "invalid_request")  # no client_id
    refused(m.post(svid, credentials(task["id"], actor_token="x", actor_token_type="y")), 400, "invalid_request")


# -- RFC 9440 Client-Cert: only from a configured terminator (MTLS-03) ---------------------------
def _forwarded(cert: Issued) -> dict[str, str]:
    return {"Client-Cert": client_cert_header(cert.der)}


def test_MTLS_03_a_client_cert_header_from_an_untrusted_address_is_ignored(m: MtlsSts, svid: Issued) -> None:
    task = m.create_task()
    refused(m.post(None, credentials(task["id"]), headers=_forwarded(svid)), 401, "invalid_client")


def test_MTLS_03_a_trusted_terminators_client_cert_header_authenticates(tmp_path: Path) -> None:
    with mtls_sts(tmp_path, extra_toml='[tls]\ntrusted_proxies = ["127.0.0.1/32"]\n') as proxied:
        svid = proxied.home.issue_svid(AGENT)
        task = proxied.create_task()
        response = proxied.post(None, credentials(task["id"]), headers=_forwarded(svid))
        assert response.status_code == 200, response.text
        assert claims_of(response.json()["access_token"])["cnf"] == {"x5t#S256": thumbprint(svid.der)}
        # from the terminator, its header alone counts: the connection's own certificate is the proxy's
        refused(proxied.post(svid, credentials(task["id"])), 401, "invalid_client")


# -- hops of a certificate-bound session ------------------------------------------------------
def test_MTLS_01_hop_over_the_same_certificate_keeps_the_binding(m: MtlsSts, svid: Issued) -> None:
    _, body = session(m, svid)
    response = m.post(svid, hop_form(body["access_token"]))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    claims = claims_of(response.json()["access_token"])
    assert (claims["aud"], claims["cnf"]) == (WIKI, {"x5t#S256": thumbprint(svid.der)})


def test_MTLS_01_hop_with_another_certificate_is_invalid_grant(m: MtlsSts, svid: Issued) -> None:
    _, body = session(m, svid)
    rotated = m.home.issue_svid(AGENT)  # the same workload, another certificate
    refused(m.post(rotated, hop_form(body["access_token"])), 400, "invalid_grant")
    assert m.post(svid, hop_form(body["access_token"])).status_code == 200  # control


def test_MTLS_01_hop_without_a_certificate_is_invalid_grant(m: MtlsSts, svid: Issued) -> None:
    _, body = session(m, svid)
    refused(m.post(None, hop_form(body["access_token"])), 400, "invalid_grant")
    # a DPoP proof does not stand in for the certificate
    refused(m.client(None).post_token(hop_form(body["access_token"])), 400, "invalid_grant")


def test_MTLS_04_hop_of_a_dpop_and_certificate_bound_session_needs_both(m: MtlsSts, svid: Issued) -> None:
    task = m.create_task()
    client = m.client(svid)
    subject = client.post_token(credentials(task["id"])).json()["access_token"]
    refused(m.post(svid, hop_form(subject)), 400, "invalid_dpop_proof")
    refused(m.client(None).post_token(hop_form(subject)), 400, "invalid_grant")
    other_key = m.client(svid)
    refused(other_key.post_token(hop_form(subject)), 400, "invalid_dpop_proof")
    response = client.post_token(hop_form(subject))
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["cnf"] == {"x5t#S256": thumbprint(svid.der), "jkt": client.key.jkt}


# -- introspection and revocation authenticated by certificate (RFC 8705 §2, RFC 7662 §2.1, RFC 7009 §2.1)
def test_introspect_and_revoke_with_certificate_client_authentication(m: MtlsSts, svid: Issued) -> None:
    _, body = session(m, svid)
    token = body["access_token"]
    admin_cert = m.home.issue_svid(ADMIN)
    seen = m.http(admin_cert).post(m.url + "/introspect", data={"client_id": ADMIN, "token": token})
    assert seen.status_code == 200, seen.text
    assert seen.json()["active"] is True and seen.json()["cnf"] == {"x5t#S256": thumbprint(svid.der)}
    refused(m.http(admin_cert).post(m.url + "/introspect", data={"client_id": AGENT, "token": token}), 401, "invalid_client")
    refused(m.http(None).post(m.url + "/introspect", data={"client_id": ADMIN, "token": token}), 401, "invalid_client")
    revoked = m.http(svid).post(m.url + "/revoke", data={"client_id": AGENT, "token": token})
    assert revoked.status_code == 200, revoked.text
    assert m.introspect(token)["active"] is False
    refused(m.post(svid, hop_form(token)), 400, "invalid_grant")  # a revoked session yields no hop


# -- metadata and a standard client -----------------------------------------------------------
def test_metadata_advertises_rfc_8705(m: MtlsSts) -> None:
    body = m.http(None).get(m.url + "/.well-known/oauth-authorization-server").json()
    assert body["tls_client_certificate_bound_access_tokens"] is True
    assert body["mtls_endpoint_aliases"] == {
        "token_endpoint": m.url + "/token",
        "introspection_endpoint": m.url + "/introspect",
        "revocation_endpoint": m.url + "/revoke",
    }
    assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(body["token_endpoint_auth_methods_supported"])
    assert "client_credentials" in body["grant_types_supported"]
    assert "tls_client_auth" in body["introspection_endpoint_auth_methods_supported"]


def test_curl_client_credentials_with_a_client_certificate(m: MtlsSts, svid: Issued) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    certificate, key = m.files(svid)
    task = m.create_task()
    result = subprocess.run(
        [curl, "-sS", "--cert", str(certificate), "--key", str(key), "--cacert", str(m.directory / "x509" / "tether.local.pem"),
         "-d", "grant_type=client_credentials", "-d", f"client_id={AGENT}", "-d", f"task={task['id']}", m.token_url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    body = json.loads(result.stdout)
    assert body["token_type"] == "Bearer", body
    assert claims_of(body["access_token"])["cnf"] == {"x5t#S256": thumbprint(svid.der)}


@pytest.mark.postgres
@pytest.mark.redis
def test_MTLS_01_session_and_hop_on_postgres_and_redis(tmp_path: Path) -> None:
    """The same path on the scale-out store: no DPoP replay key to spend, the x5t kept in the lineage."""
    with mtls_sts(tmp_path, postgres=True) as pg:
        assert pg.running.config.store == "postgres"
        svid = pg.home.issue_svid(AGENT)
        _, body = session(pg, svid)
        hop = pg.post(svid, hop_form(body["access_token"]))
        assert hop.status_code == 200, hop.text
        refused(pg.post(pg.home.issue_svid(AGENT), hop_form(body["access_token"])), 400, "invalid_grant")
        jti = claims_of(hop.json()["access_token"])["jti"]
        stored = store_sql(pg.running.config, "SELECT x5t, jkt FROM tokens WHERE jti = ?", (jti,))
        assert stored == [(thumbprint(svid.der), "")]
