"""Which proof of possession a token needs at a resource server (RFC 9449 §7.1, RFC 8705 §3) — pure.

A tether token is always sender-constrained: by a DPoP key (``cnf.jkt``), by a client
certificate (``cnf.x5t#S256``), or by both. The rules, in one place:

* a token bound to neither is refused (it would be a bearer token);
* ``x5t`` is honoured only with that certificate, from this server's own TLS handshake or a
  trusted terminator's RFC 9440 header (``check_certificate_binding``); no certificate, or
  another one, is ``invalid_token`` and never a downgrade to bearer;
* ``jkt`` needs the ``DPoP`` scheme and a proof from that key (RFC 9449 §7.1: a DPoP-bound
  token sent as ``Bearer`` is refused); a token with both needs both;
* a token with ``x5t`` alone is sent as ``Authorization: Bearer`` (RFC 8705 §3 relies on
  RFC 6750): under the ``DPoP`` scheme it is refused, since RFC 9449 §7.1 defines that
  scheme for tokens whose ``cnf.jkt`` a proof can match, and this one has none;
* a resource configured without ``mtls`` refuses certificate-bound tokens outright.
"""

from __future__ import annotations

from tether.errors import InvalidToken
from tether.rules.certificate import ClientCertificate, check_certificate_binding

__all__ = ["SCHEMES", "needs_dpop_proof"]

#: the authorization schemes a resource may accept, lower-case (RFC 9110 §11.1)
SCHEMES = ("dpop", "bearer")


def needs_dpop_proof(
    *, jkt: str | None, x5t: str | None, scheme: str, certificate: ClientCertificate | None, mtls: bool
) -> bool:
    """Check the token's binding against how it was presented; True when a DPoP proof must follow.

    Runs on every request, cached token or not: the certificate is the connection's, not the token's.
    """
    if jkt is None and x5t is None:
        raise InvalidToken("token is not key-bound")
    if x5t is not None:
        if not mtls:
            raise InvalidToken("certificate-bound tokens are not accepted here", debug="resource has mtls off")
        check_certificate_binding(x5t, certificate)
    if jkt is not None:
        if scheme != "dpop":
            raise InvalidToken("tokens must be presented with the dpop scheme", debug=f"scheme {scheme}, token has jkt")
        return True
    if scheme != "bearer":
        raise InvalidToken(
            "a certificate-bound token is presented with the bearer scheme", debug=f"scheme {scheme}, token has x5t only"
        )
    return False
