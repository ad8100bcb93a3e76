"""Resource-server SDK: accept tether tokens in a few lines.

verifier = Verifier(ResourceSettings(issuer="http://127.0.0.1:8700", resource="http://127.0.0.1:9001"))
app = Starlette(routes=..., middleware=[Middleware(TetherMiddleware, verifier=verifier)])
"""

from tether.resource.middleware import METADATA_PATH, TetherMiddleware, principal_of, require_scope, requires
from tether.resource.principal import Principal
from tether.resource.verifier import MissingToken, ResourceSettings, Verifier

__all__ = [
    "METADATA_PATH",
    "MissingToken",
    "Principal",
    "ResourceSettings",
    "TetherMiddleware",
    "Verifier",
    "principal_of",
    "require_scope",
    "requires",
]
