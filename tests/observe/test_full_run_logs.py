"""BCP-13 (RFC 9700 §4.9.2), "tested by grepping a full run": no token, proof, SVID or secret in any log line.

A whole deployment runs in this process on loopback — the STS, tool services B and C
(B calls C on the agent's behalf, RFC 8693 delegation), a gateway with a header route
and a query-injection route in front of a legacy upstream — and an agent works through
a task, including the calls that leave credentials where servers log them: a token in
a query string (RFC 6750 §2.3), a replayed proof, the gateway's secret in the upstream
URL, use after completion. Meanwhile every logger of the process (tether, uvicorn with
its access log switched on, httpx, httpcore, aiohttp) logs at DEBUG through the
redacting JSON handler into a buffer.

The values to grep for are collected from the wire: every server sits behind a tap
that keeps each request's headers, query and body and each response's headers and
body, so every JWT that crossed loopback (workload JWT-SVIDs, client assertions,
session, hop and delegated tokens, DPoP proofs) is known, plus each spelling of the
vaulted secret. None of them may appear in the log; the log must be non-empty,
valid JSON lines, and show that the leak candidates were there and were redacted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))

from gwkit import (
    KEY,
    QUERY_PARAM,
    SECRET_NAME,
    Upstream,
    encoded_forms,
    gateway_toml,
    put_secret_sync,
    route_toml,
    wait_until,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helpers import ADMIN, AGENT, make_deployment
from tether.agent import Agent, DevIdentity
from tether.client import StsClient
from tether.config import load_config
from tether.demo.services import docs_service, search_service
from tether.gateway.app import build_gateway
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.logs import REDACTED, UVICORN_LOGGERS, JsonFormatter, RedactionFilter
from tether.sts.bootstrap import build_sts
from tether.web.server import ServerThread, free_port

SVC_B = "spiffe://tether.local/svc/search"
SVC_C = "spiffe://tether.local/svc/docs"
JWS = re.compile(rb"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
LOGGERS = (*UVICORN_LOGGERS, "httpx", "httpcore", "aiohttp", "tether")


class Tap:
    """ASGI wrapper that keeps every byte of every HTTP exchange (to know what must never be logged)."""

    def __init__(self, app: ASGIApp, wire: list[bytes]) -> None:
        self.app = app
        self.wire = wire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.wire.append(scope.get("query_string", b""))
        self.wire.extend(value for _, value in scope["headers"])

        async def tapped_receive() -> Message:
            message = await receive()
            self.wire.append(message.get("body", b""))
            return message

        async def tapped_send(message: Message) -> None:
            self.wire.append(message.get("body", b""))
            self.wire.extend(value for _, value in message.get("headers", []))
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)


@contextlib.contextmanager
def everything_logged_at_debug() -> Iterator[io.StringIO]:
    """Every logger of the process at DEBUG into one redacting JSON handler (uvicorn's access log on)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter(debug=True))
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate, logging.getLogger(name).handlers[:])
             for name in LOGGERS}  # fmt: skip
    root_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
        if name in UVICORN_LOGGERS:
            logger.handlers = []
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for name, (level, propagate, handlers) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers = handlers


def _serve(app: ASGIApp, port: int, wire: list[bytes], servers: list[ServerThread]) -> None:
    servers.append(ServerThread(Tap(app, wire), port).start())


def _signed(http: httpx.Client, key: Any, method: str, url: str, token: str, proof: str | None = None) -> httpx.Response:
    proof = proof or key.proof(method, url, access_token=token)
    return http.request(method, url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def _story(sts_url: str, b_url: str, c_url: str, gw_url: str, domain: DevTrustDomain) -> None:
    apikey_aud, query_aud = f"{gw_url}/routes/apikey", f"{gw_url}/routes/query"
    with StsClient(sts_url, DevIdentity(domain, ADMIN)) as admin, httpx.Client(trust_env=False, timeout=10.0) as raw:
        task = admin.create_task(agent=AGENT, audiences=[b_url, c_url, apikey_aud, query_aud],
                                 scopes=["wiki:read", "docs:read"], purpose="grep the logs", max_duration=300)  # fmt: skip
        session = Agent(sts_url, DevIdentity(domain, AGENT)).session(task["id"])
        audiences = {u: u for u in (b_url, c_url, apikey_aud, query_aud)}
        with httpx.Client(auth=session.auth(audiences=audiences, discover=False), trust_env=False, timeout=10.0) as http:
            searched = http.get(b_url + "/search", params={"q": "design"})
            assert searched.status_code == 200 and searched.json()["c_status"] == 200, searched.text
            assert http.get(c_url + "/fetch").status_code == 200
            assert http.get(apikey_aud + "/v1/items").status_code == 200
            assert http.get(query_aud + "/v1/items").status_code == 200
        hop_c = session.token_for(c_url, raw)
        in_query = raw.get(c_url + "/whoami", params={"access_token": hop_c})  # RFC 6750 §2.3: refused, but logged
        assert in_query.status_code == 401
        proof = session.key.proof("GET", c_url + "/whoami", access_token=hop_c)
        assert _signed(raw, session.key, "GET", c_url + "/whoami", hop_c, proof).status_code == 200
        assert _signed(raw, session.key, "GET", c_url + "/whoami", hop_c, proof).status_code == 401  # replayed proof
        session.complete(raw)
        wait_until(lambda: _signed(raw, session.key, "GET", c_url + "/whoami", hop_c).status_code == 401,
                   what="the completion to reach C")  # fmt: skip


def test_BCP_13_a_full_run_at_debug_logs_no_token_proof_svid_or_secret(tmp_path: Path) -> None:
    wire: list[bytes] = []
    servers: list[ServerThread] = []
    upstream = Upstream()
    up_port, b_port, c_port, gw_port = free_port(), free_port(), free_port(), free_port()
    upstream.url = f"http://127.0.0.1:{up_port}"
    b_url, c_url, gw_url = f"http://127.0.0.1:{b_port}", f"http://127.0.0.1:{c_port}", f"http://127.0.0.1:{gw_port}"
    apikey: dict[str, Any] = {"inject": "header", "header": "X-Api-Key", "template": "{secret}"}
    extra = "\n".join([
        f'[[resources]]\nuri = "{b_url}"\nprincipals = ["{SVC_B}"]\n',
        f'[[resources]]\nuri = "{c_url}"\nprincipals = ["{SVC_C}"]\n',
        gateway_toml(gw_port),
        route_toml("apikey", f"{upstream.url}/apikey", allow=["GET /v1/items"], **apikey),
        route_toml("query", f"{upstream.url}/query", allow=["GET /v1/items"], inject="query", query_param=QUERY_PARAM),
    ])  # fmt: skip
    config = make_deployment(tmp_path, extra_toml=extra)
    assert config.path is not None
    config = load_config(Path(config.path))
    put_secret_sync(config, SECRET_NAME, KEY, now=time.time())
    domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    sts = build_sts(config)
    gateway = build_gateway(config)
    c_app, c_verifier = docs_service(config.issuer, c_url, DevIdentity(domain, SVC_C))
    b_app, b_verifier = search_service(config.issuer, b_url, c_url, DevIdentity(domain, SVC_B))
    try:
        _serve(sts.app, int(config.issuer.rsplit(":", 1)[1]), wire, servers)
        _serve(upstream.app(), up_port, wire, servers)
        _serve(c_app, c_port, wire, servers)
        _serve(b_app, b_port, wire, servers)
        _serve(gateway.app, gw_port, wire, servers)
        with everything_logged_at_debug() as buffer:
            for feed in (b_verifier.feed, c_verifier.feed, gateway.feed):
                wait_until(lambda feed=feed: feed is not None and feed.fresh(time.time()), timeout=10, what="feeds")  # type: ignore[misc]  # mypy infers no lambda with defaults
            _story(config.issuer, b_url, c_url, gw_url, domain)
            text = buffer.getvalue()
    finally:
        for server in reversed(servers):
            server.stop()

    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) > 50
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {str(r["logger"]).split(".")[0] for r in records} | {str(r["logger"]) for r in records}
    assert {"httpx", "httpcore", "uvicorn.access", "tether"} <= loggers, loggers
    access = [str(r["message"]) for r in records if r["logger"] == "uvicorn.access"]
    assert any(f"access_token={REDACTED}" in line for line in access), "the query-string token was logged, redacted"
    assert any(f"{QUERY_PARAM}={REDACTED}" in line for line in access), "the upstream URL secret was logged, redacted"

    values = {m.decode() for blob in wire for m in JWS.findall(blob)}
    kinds = {json.loads(_b64(v.split(".")[0])).get("typ") for v in values}
    assert {"dpop+jwt", "at+jwt"} <= kinds and len(values) > 20, kinds  # proofs, tokens, SVIDs and assertions seen
    secrets = values | set(encoded_forms(KEY))
    leaked = [s[:24] + "…" for s in secrets if s in text or json.dumps(s)[1:-1] in text]
    assert leaked == [], f"{len(leaked)} secret values appear in the log"


def _b64(segment: str) -> bytes:
    from tether.rules.jws import b64url_decode

    return b64url_decode(segment)
