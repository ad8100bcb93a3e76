"""How a vaulted secret reaches the upstream: a header template, a query parameter or basic auth.

The agent's own credentials never pass through: its ``Authorization`` and ``DPoP`` are
dropped with the hop-by-hop headers (RFC 9110 §7.6.1), the ``Forwarded``/``X-Forwarded-*``
family, method and URL overrides (``tether.gateway.overrides``) and anything named like the
injected header or parameter, so an agent cannot smuggle a value in beside the real one, claim
another client address, nor have the upstream run another call than the one allowed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from tether.gateway.overrides import is_override_header

__all__ = ["HOP_BY_HOP", "Injection", "encodings", "forward_headers", "inject", "response_headers", "strip_query"]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade"}
)  # fmt: skip
#: the agent's credentials, never passed on; RFC 9440 ``Client-Cert``/``Client-Cert-Chain`` among
#: them: the certificate was checked here, and an upstream that believed the header would take
#: the gateway's word (or a forger's, had it come from an untrusted peer) for the agent's TLS identity
_AGENT_CREDENTIALS = frozenset(
    {"authorization", "dpop", "cookie", "host", "content-length", "x-api-key", "client-cert", "client-cert-chain"}
)
#: Where a request claims to come from (RFC 7239 and its de-facto forms): an upstream that
#: allowlists client addresses must not be told a made-up one by the agent.
_CLIENT_ORIGIN = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-real-ip",
     "x-client-ip", "true-client-ip", "x-original-forwarded-for"}
)  # fmt: skip


@dataclass(frozen=True)
class Injection:
    mode: str  # "header" | "query" | "basic"
    header: str = "Authorization"
    template: str = "Bearer {secret}"
    query_param: str = "api_key"
    username: str = ""

    def names(self) -> frozenset[str]:
        return frozenset({self.header.lower()}) if self.mode == "header" else frozenset()


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(","))
    return tokens


def forward_headers(headers: Iterable[tuple[str, str]], injection: Injection) -> list[tuple[str, str]]:
    """The agent's headers minus hop-by-hop, credentials, claimed client origins, method and URL
    overrides and anything the injection sets."""
    pairs = list(headers)
    drop = HOP_BY_HOP | _AGENT_CREDENTIALS | _CLIENT_ORIGIN | injection.names() | _connection_tokens(pairs)
    return [(n, v) for n, v in pairs
            if n.lower() not in drop and not n.lower().startswith("proxy-") and not is_override_header(n)
            and not _claims_tls_identity(n)]  # fmt: skip


#: fragments of the header names terminators use to hand on a client's TLS identity (nginx's
#: ``X-SSL-Client-Cert`` and ``X-SSL-Cert``, HAProxy's ``X-SSL-Client-*``, ``X-Client-Cert``,
#: ``SSL-Client-Verify``, Azure's ``X-ARR-ClientCert``, AWS ALB's ``X-Amzn-Mtls-Clientcert*``)
_TLS_IDENTITY = ("client-cert", "clientcert", "ssl-client", "ssl-cert", "client-verify", "client-dn", "client-s-dn", "mtls")


def _claims_tls_identity(name: str) -> bool:
    """A header that claims a client certificate, in any of the conventions an upstream may
    believe; or any name with ``_``, which CGI-style servers fold into the same variables as
    the dashed form (``client_cert`` → ``HTTP_CLIENT_CERT``). The gateway is the upstream's TLS
    terminator: it alone may say who the client is, and it says it with the injected secret."""
    lowered = name.lower()
    return "_" in lowered or any(fragment in lowered.replace("_", "-") for fragment in _TLS_IDENTITY)


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream headers minus hop-by-hop, length (the body may be scrubbed while streamed) and the
    upstream's ``date``/``server`` (the gateway sends its own)."""
    pairs = list(headers)
    drop = HOP_BY_HOP | {"content-length", "set-cookie", "date", "server"} | _connection_tokens(pairs)
    return [(n, v) for n, v in pairs if n.lower() not in drop]


def strip_query(query: str, injection: Injection) -> list[tuple[str, str]]:
    """The agent's query parameters, minus any named like the injected one."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return [(k, v) for k, v in pairs if not (injection.mode == "query" and k == injection.query_param)]


def inject(
    injection: Injection, secret: str, headers: list[tuple[str, str]], query: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], str]:
    """Add the secret; returns the upstream headers and the encoded query string."""
    if injection.mode == "header":
        headers = [*headers, (injection.header, injection.template.replace("{secret}", secret))]
    elif injection.mode == "basic":
        token = base64.b64encode(f"{injection.username}:{secret}".encode()).decode("ascii")
        headers = [*headers, ("Authorization", f"Basic {token}")]
    else:
        query = [*query, (injection.query_param, secret)]
    return headers, urlencode(query)


def encodings(secret: str, injection: Injection) -> list[bytes]:
    """Every form in which an upstream might echo the secret back (for the scrubber)."""
    raw = secret.encode()
    forms = {
        raw,
        urlencode({"x": secret})[2:].encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        secret.replace("/", "\\/").encode(),  # JSON with escaped slashes (PHP's json_encode)
        json.dumps(secret, ensure_ascii=False)[1:-1].encode(),  # JSON string escaping
        json.dumps(secret, ensure_ascii=True)[1:-1].encode(),
        json.dumps(secret, ensure_ascii=True)[1:-1].replace("/", "\\/").encode(),
        "".join(f"\\u{ord(c):04x}" for c in secret).encode(),  # fully \\u-escaped JSON
    }
    if injection.mode == "basic":
        forms.add(base64.b64encode(f"{injection.username}:{secret}".encode()))
    if injection.mode == "header":
        forms.add(injection.template.replace("{secret}", secret).encode())
    return sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)
