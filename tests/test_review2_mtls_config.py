"""Second review (issue 16): ``config.load._check_networks`` (fix of F8) validates the syntax of
``[tls] trusted_proxies`` but accepts a network that contains every address.

``trusted_proxies = ["0.0.0.0/0"]`` (or ``"::/0"``, a copy of a firewall "allow all" or of
uvicorn's ``forwarded_allow_ips='*'``) makes every peer a terminator: any client's ``Client-Cert``
header is believed, and a thief with a certificate-bound token and the victim's public
certificate is accepted at the STS APIs, hop exchanges and the gateway — certificate binding is
silently off. Such an entry is never a terminator's address; it should be refused at load like
a malformed one (at least one ``/0``; a warning for very broad prefixes). Fixed: a ``/0`` is
refused at load.
"""

from __future__ import annotations

import pytest

from test_config import config_error


@pytest.mark.parametrize("entry", ["0.0.0.0/0", "::/0", "0.0.0.0/0.0.0.0"])
def test_review2_MTLS_03_trusted_proxies_that_trust_every_address_are_refused(entry: str) -> None:
    err = config_error({"tls": {"trusted_proxies": [entry]}})
    assert err.key == "tls.trusted_proxies"
