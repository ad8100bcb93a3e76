"""Review (issue 16): what the gateway forwards upstream about the agent's client certificate.

The gateway drops the RFC 9440 ``Client-Cert``/``Client-Cert-Chain`` headers and the
``Forwarded``/``X-Forwarded-*`` family, so an agent cannot tell the upstream a made-up TLS
identity or address. The de-facto client-certificate headers that upstreams actually trust
pass through untouched: Envoy's ``X-Forwarded-Client-Cert`` (XFCC, ``URI=spiffe://…``), the
nginx/HAProxy conventions ``X-SSL-Client-Cert`` / ``SSL-Client-Cert`` / ``X-Client-Cert``, and
the underscore spelling ``client_cert``, which CGI/WSGI-style servers map to the same
``HTTP_CLIENT_CERT`` variable as ``Client-Cert`` (BCP-14: a terminator sanitises client-cert
headers; the gateway is the upstream's terminator). The second review added the spellings that
contained none of the first fix's fragments: nginx's and HAProxy's ``X-SSL-Cert``, Azure's
``X-ARR-ClientCert``, AWS ALB's ``X-Amzn-Mtls-Clientcert`` / ``-Leaf``. All are dropped now.
"""

from __future__ import annotations

import pytest
from test_gateway_mtls import MtlsGateway, bearer, mgw, sf  # noqa: F401  (the module fixture)

FORGED = {
    "X-Forwarded-Client-Cert": "By=spiffe://example.org/upstream;Hash=00;URI=spiffe://example.org/admin",
    "X-SSL-Client-Cert": "forged",
    "SSL-Client-Cert": "forged",
    "X-Client-Cert": "forged",
    "client_cert": "forged",
    # second review
    "X-SSL-Cert": "-----BEGIN%20CERTIFICATE-----forged",
    "X-ARR-ClientCert": "MIIforged",
    "X-Amzn-Mtls-Clientcert": "-----BEGIN%20CERTIFICATE-----forged",
    "X-Amzn-Mtls-Clientcert-Leaf": "-----BEGIN%20CERTIFICATE-----forged",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_review_BCP_14_agent_supplied_client_cert_headers_do_not_reach_the_upstream(mgw: MtlsGateway, name: str) -> None:  # noqa: F811
    token = mgw.bound_token()
    before = len(mgw.upstream.log)
    with mgw.client(mgw.agent) as agent:
        response = agent.get(mgw.tls_url + "/routes/apikey/v1/items", headers=bearer(token, **{name: FORGED[name]}))
    assert response.status_code == 200, response.text  # control: the call itself is allowed
    seen = mgw.upstream.log[before:]
    assert seen, "the call did not reach the upstream"
    for record in seen:
        assert name.lower() not in {h.lower() for h in record["headers"]}, record["headers"]
