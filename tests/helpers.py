"""Test harness: a real STS on loopback (uvicorn in a thread), and small clients for it.

``ServerThread`` and ``free_port`` are re-exported from ``tether.web.server``.

The server runs with a ``ManualClock`` so tests move time forward instead of sleeping.
Everything else is real: the SQLite file, the HTTP stack, the crypto.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services import new_schema, postgres_toml, require_postgres_and_redis, use_postgres
from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.audit.chain import AuditRecord
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize, render_config
from tether.store.open import open_store
from tether.sts.bootstrap import Sts, build_sts
from tether.web.server import ServerThread, free_port

__all__ = ["ServerThread", "free_port"]  # re-exported for the test folders

#: PostgreSQL schemas created by this test process (dropped at session end by conftest)
SCHEMAS: list[str] = []

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ADMIN = "spiffe://tether.local/admin"
AGENT = "spiffe://tether.local/agent/research"
SVC_B = "spiffe://tether.local/svc/b"
SVC_C = "spiffe://tether.local/svc/c"
#: a resource server's workload, registered only as a feed subscriber (``FEED_SUBSCRIBER``)
SVC_RS = "spiffe://tether.local/svc/rs"
FEED_SUBSCRIBER = f'[revocations]\nsubscribers = ["{SVC_RS}"]\n'


#: For STSs shared by a module's tests: their deliberate refusals add up across tests, so the
#: monitor there only alerts — no suspension or risk from one test lands in another's task
#: (tests/monitor covers what the actions do).
QUIET_MONITOR = "\n".join(
    f'[monitor.detectors.{name}]\nactions = ["alert"]'
    for name in ("exchange_rate_spike", "refusal_burst", "dpop_replay", "deep_delegation")
)


def make_deployment(directory: Path, *, extra_toml: str = "", port: int | None = None) -> Config:
    """``tether init`` into ``directory`` with a free port, plus extra TOML appended.

    With ``TETHER_TEST_STORE=postgres`` the deployment uses PostgreSQL + Redis (its own
    schema and key prefix) instead of SQLite, so the same tests cover both stores.
    """
    port = port or free_port()
    issuer = f"http://127.0.0.1:{port}"
    if use_postgres():
        require_postgres_and_redis()
        schema = new_schema()
        directory.mkdir(parents=True, exist_ok=True)
        text = render_config(issuer).replace('store = "sqlite"', 'store = "postgres"')
        (directory / "tether.toml").write_text(text + postgres_toml(schema, schema), encoding="utf-8")
        SCHEMAS.append(schema)
    result = initialize(directory, issuer=issuer)
    text, extra = merge_approvals(result.config_path.read_text(encoding="utf-8"), extra_toml)
    result.config_path.write_text(text + "\n" + _audit_every_refusal(extra) + "\n", encoding="utf-8")
    return load_config(result.config_path)


_APPROVALS = re.compile(r"^\[approvals\][^\n]*\n((?:(?!\[).*\n?)*)", re.M)


def merge_approvals(config_text: str, extra_toml: str) -> tuple[str, str]:
    """An ``[approvals]`` table in ``extra_toml`` takes over the one ``tether init`` wrote (TOML has
    one table per name): its keys win, the init table's other keys move into it — except the dev
    provider's ``jwks_file`` when the extra table names another ``issuer``."""
    theirs = _APPROVALS.search(extra_toml)
    ours = _APPROVALS.search(config_text)
    if theirs is None or ours is None:
        return config_text, extra_toml

    def keys(block: str) -> dict[str, str]:
        lines = [line for line in block.splitlines() if "=" in line and not line.lstrip().startswith("#")]
        return {line.split("=", 1)[0].strip(): line for line in lines}

    overridden = keys(theirs.group(1))
    if "issuer" in overridden:
        overridden.setdefault("jwks_file", "")
    kept = [line for key, line in keys(ours.group(1)).items() if key not in overridden]
    merged = extra_toml[: theirs.end()].rstrip("\n") + "\n" + "".join(f"{line}\n" for line in kept) + extra_toml[theirs.end() :]
    return config_text[: ours.start()] + config_text[ours.end() :], merged


def _audit_every_refusal(extra_toml: str) -> str:
    """``extra_toml`` with ``[audit] refusal_interval = 0`` unless it sets the interval itself.

    Most tests assert the audit record of the one refusal they provoke, and a module-scoped STS
    sees many identical anonymous refusals from 127.0.0.1, which a deployment counts instead of
    recording each (``tether.audit.anonymous``); the tests of that counting set the interval.
    """
    if "refusal_interval" in extra_toml:
        return extra_toml
    if "[audit]\n" in extra_toml:
        return extra_toml.replace("[audit]\n", "[audit]\nrefusal_interval = 0\n", 1)
    return extra_toml + "\n[audit]\nrefusal_interval = 0\n"


@dataclass
class RunningSts:
    config: Config
    clock: ManualClock
    sts: Sts
    thread: ServerThread
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.config.issuer

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def dev(self) -> DevTrustDomain:
        return DevTrustDomain.load(self.config.data_dir, "tether.local", load_master_key(self.config.master_key_file))

    def svid(self, spiffe_id: str = AGENT, *, audience: str | None = None, ttl: int = 300, jti: bool = True) -> str:
        now = int(self.clock.now())
        return self.dev().issue(spiffe_id, audience=audience or self.url, ttl=ttl, now=now, with_jti=jti)

    def identity(self, spiffe_id: str) -> DevIdentity:
        """A workload identity minting SVIDs on this STS's clock (a resource server's, for the feed)."""
        return DevIdentity(self.dev(), spiffe_id, clock=self.clock)

    def client_auth(self, spiffe_id: str = ADMIN, **form: str) -> dict[str, str]:
        """A form authenticating ``spiffe_id`` with a fresh RFC 7523 client assertion (``/introspect``, the feed)."""
        return {"client_assertion": self.svid(spiffe_id), "client_assertion_type": JWT_BEARER, **form}

    def audit(self) -> list[AuditRecord]:
        async def read() -> list[AuditRecord]:
            store = await open_store(self.config)
            try:
                return await store.audit_records(after=0, limit=100_000)
            finally:
                await store.aclose()

        return asyncio.run(read())

    def last_audit(self, kind: str | None = None) -> AuditRecord:
        records = [r for r in self.audit() if kind is None or r.kind == kind]
        assert records, f"no audit record of kind {kind}"
        return records[-1]


@contextlib.contextmanager
def running_sts(directory: Path, *, extra_toml: str = "", clock: ManualClock | None = None) -> Iterator[RunningSts]:
    with serving(make_deployment(directory, extra_toml=extra_toml), clock or ManualClock()) as running:
        yield running


@contextlib.contextmanager
def serving(config: Config, clock: ManualClock) -> Iterator[RunningSts]:
    """Serve an existing deployment's STS (a second ``serving`` of the same config is a restart)."""
    port = int(config.issuer.rsplit(":", 1)[1])
    sts = build_sts(config, clock=clock)
    thread = ServerThread(sts.app, port)
    thread.start()
    running = RunningSts(config=config, clock=clock, sts=sts, thread=thread)
    try:
        yield running
    finally:
        for http in running.clients:
            http.close()
        thread.stop()


class Client:
    """A DPoP client for the STS that remembers the server nonce, like a standard client would."""

    def __init__(self, sts: RunningSts, key: DPoPKey | None = None) -> None:
        self.sts = sts
        self.key = key or DPoPKey()
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        sts.clients.append(self.http)
        self.nonce: str | None = None

    def proof(self, method: str = "POST", url: str | None = None, *, access_token: str | None = None, **kw: Any) -> str:
        now = kw.pop("now", self.sts.clock.now())
        return self.key.proof(
            method, url or self.sts.token_url, nonce=kw.pop("nonce", self.nonce), access_token=access_token, now=now
        )

    def post_token(
        self, form: dict[str, str], *, proof: str | None = None, headers: dict[str, str] | None = None, retry_nonce: bool = True
    ) -> httpx.Response:
        """POST /token with a fresh proof (or ``proof``); one retry on ``use_dpop_nonce``."""
        for _ in range(2):
            hdrs = dict(headers or {})
            if proof is not None or "DPoP" not in hdrs:
                hdrs.setdefault("DPoP", proof if proof is not None else self.proof())
            response = self.http.post(self.sts.token_url, data=form, headers=hdrs)
            if "dpop-nonce" in response.headers:
                self.nonce = response.headers["dpop-nonce"]
            challenged = response.status_code == 400 and response.json().get("error") == "use_dpop_nonce"
            if retry_nonce and proof is None and challenged:
                continue
            return response
        return response

    def session(self, task_id: str, *, svid: str | None = None, **extra: str) -> httpx.Response:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": svid or self.sts.svid(),
            "subject_token_type": JWT,
            "task": task_id,
            **extra,
        }
        return self.post_token(form)

    def hop(self, subject: str, resource: str | None, **extra: str) -> httpx.Response:
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS, **extra}
        if resource is not None:
            form["resource"] = resource
        return self.post_token(form)

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        url = self.sts.url + path
        for _ in range(2):
            headers = {"Authorization": f"DPoP {token}", "DPoP": self.proof(method, url, access_token=token)}
            response = self.http.request(method, url, headers=headers, **kwargs)
            if "dpop-nonce" in response.headers:
                self.nonce = response.headers["dpop-nonce"]
            if response.status_code == 401 and "use_dpop_nonce" in response.headers.get("www-authenticate", ""):
                continue
            return response
        return response


def admin_token(sts: RunningSts, client: Client | None = None) -> tuple[Client, str]:
    client = client or Client(sts)
    response = client.post_token({"grant_type": TOKEN_EXCHANGE, "subject_token": sts.svid(ADMIN), "subject_token_type": JWT})
    assert response.status_code == 200, response.text
    return client, str(response.json()["access_token"])


def create_task(sts: RunningSts, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"agent": AGENT, "audiences": ["http://127.0.0.1:9001"], "scopes": ["wiki:read", "wiki:write"]}
    body.update(fields)
    client, token = admin_token(sts)
    response = client.api("POST", "/tasks", token, json=body)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task
