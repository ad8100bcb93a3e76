"""Second review (issue 16): the gateway's header sanitising (``inject._claims_tls_identity``, fix of F5).

The fix drops a header whose name contains ``client-cert``, ``ssl-client``, ``client-verify``,
``client-dn`` or ``client-s-dn`` (after ``_`` → ``-``), and every name with ``_``. Widely deployed
terminators hand on the client certificate under names that contain none of those fragments,
and the upstreams behind them believe those names:

* ``X-SSL-Cert``: the usual nginx spelling (``proxy_set_header X-SSL-CERT $ssl_client_escaped_cert``),
  and HAProxy's ``http-request set-header X-SSL-Cert %[ssl_c_der,base64]``;
* ``X-ARR-ClientCert``: Azure App Service / IIS ARR (ASP.NET Core's certificate forwarding reads it);
* ``X-Amzn-Mtls-Clientcert`` / ``X-Amzn-Mtls-Clientcert-Leaf``: AWS Application Load Balancer mTLS.

An agent that sends one of them through the gateway tells the upstream a client certificate it
does not hold. A denylist of fragments cannot keep up; the gateway, the upstream's terminator,
should forward an allowlist, or at least match ``clientcert`` / ``ssl-cert`` too. Fixed: those
fragments (and ``mtls``) are dropped as well.
"""

from __future__ import annotations

import pytest
from test_gateway_mtls import MtlsGateway, bearer, mgw, sf  # noqa: F401  (the module fixture)

FORGED = {
    "X-SSL-Cert": "-----BEGIN%20CERTIFICATE-----forged",
    "X-ARR-ClientCert": "MIIforged",
    "X-Amzn-Mtls-Clientcert": "-----BEGIN%20CERTIFICATE-----forged",
    "X-Amzn-Mtls-Clientcert-Leaf": "-----BEGIN%20CERTIFICATE-----forged",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_review2_BCP_14_other_client_certificate_header_conventions_do_not_reach_the_upstream(
    mgw: MtlsGateway,  # noqa: F811
    name: str,
) -> None:
    token = mgw.bound_token()
    before = len(mgw.upstream.log)
    with mgw.client(mgw.agent) as agent:
        response = agent.get(mgw.tls_url + "/routes/apikey/v1/items", headers=bearer(token, **{name: FORGED[name]}))
    assert response.status_code == 200, response.text  # control: the call itself is allowed
    seen = mgw.upstream.log[before:]
    assert seen, "the call did not reach the upstream"
    for record in seen:
        assert name.lower() not in {h.lower() for h in record["headers"]}, record["headers"]
