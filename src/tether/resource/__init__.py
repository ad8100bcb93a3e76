"""Resource-server SDK: accept tether tokens in a few lines.

identity = FileIdentity(Path("/run/spire/svc.jwt"))  # this service's workload JWT (registered at the STS)
verifier = Verifier(ResourceSettings(issuer="http://127.0.0.1:8700", resource="http://127.0.0.1:9001"), identity=identity)
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
