"""The OAuth identifiers tether speaks on the wire, defined once for the STS and its clients.

RFC 8693 §2.1 grant type and §3 token type identifiers; RFC 7523 §2.1 grant type (a federation
peer's access token as the grant, draft-ietf-oauth-identity-chaining) and §2.2 client assertion type.
"""

__all__ = [
    "CLIENT_CREDENTIALS",
    "JWT_BEARER",
    "JWT_BEARER_GRANT",
    "TOKEN_EXCHANGE",
    "TOKEN_TYPE_ACCESS",
    "TOKEN_TYPE_JWT",
]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 7523 §2.1: a JWT as an authorization grant (``assertion``); here a federation peer's access token
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: RFC 6749 §4.4 (a grant name, not a URN): the mTLS session exchange, client authenticated by RFC 8705
CLIENT_CREDENTIALS = "client_credentials"
