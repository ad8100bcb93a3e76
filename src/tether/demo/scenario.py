"""The demo scenario: an agent through one task, then the attacks, each expected to be refused.

Everything is real and local: the STS on the embedded SQLite store, services B and C
behind the resource SDK, uvicorn on loopback, a second OS process for the stolen-token
attack. Each step is recorded with its time so the CLI can print a timeline or JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.agent.exchange import ExchangeError, exchange_flow, run_sync
from tether.agent.identity import DevIdentity
from tether.agent.session import Agent, TaskSession
from tether.client import StsClient
from tether.config import load_config
from tether.demo.acts import GatewayPlan, gateway_act, legacy_api, rogue_act, store_legacy_key
from tether.demo.approval_act import APPROVAL_POLICY, PAYMENTS_SERVICE, ApprovalPlan, approval_act
from tether.demo.federation_act import FederationPlan, federation_act, start_peer
from tether.demo.mcp_act import NOTES_SERVICE, McpPlan, mcp_act, pin_drive
from tether.demo.mcp_servers import notes_server, payments_server
from tether.demo.mtls_act import REPORTS_SERVICE, MtlsPlan, enable_x509, mtls_act, reports_service, tls_files
from tether.demo.services import docs_service, search_service
from tether.gateway.app import build_gateway
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.mcp import protect
from tether.provision import initialize
from tether.resource import ResourceSettings, Verifier
from tether.rules.jws import b64url_decode
from tether.sts.bootstrap import build_sts
from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS
from tether.web.server import ServerThread, free_port

__all__ = ["DemoResult", "Step", "run_demo"]

AGENT = "spiffe://tether.local/agent/research"
SVC_B = "spiffe://tether.local/svc/search"
SVC_C = "spiffe://tether.local/svc/docs"
ADMIN = "spiffe://tether.local/admin"
USER = "user:alice"

_THIEF = r"""
import json, sys, httpx
from tether.agent.proof import DPoPKey
token, url = sys.argv[1], sys.argv[2]
own = DPoPKey()
out = {}
with httpx.Client(trust_env=False, timeout=10) as http:
    r = http.get(url, headers={"Authorization": "Bearer " + token})
    out["bearer"] = [r.status_code, r.json().get("error")]
    r = http.get(url, headers={"Authorization": "DPoP " + token, "DPoP": own.proof("GET", url, access_token=token)})
    out["own_key"] = [r.status_code, r.json().get("error")]
print(json.dumps(out))
"""


@dataclass
class Step:
    at_ms: float
    kind: str
    title: str
    detail: dict[str, Any] = field(default_factory=dict)
    ok: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {"at_ms": round(self.at_ms, 1), "kind": self.kind, "title": self.title, "detail": self.detail, "ok": self.ok}


@dataclass
class DemoResult:
    steps: list[Step] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    revocation_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": self.checks,
            "revocation_ms": self.revocation_ms,
            "steps": [s.as_json() for s in self.steps],
        }


def claims_of(token: str) -> dict[str, Any]:
    """Decode a JWT payload for display only (the services verified it)."""
    value: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return value


def _token_view(token: str) -> dict[str, Any]:
    c = claims_of(token)
    view = {
        "aud": c["aud"],
        "scope": c["scope"],
        "ttl_s": c["exp"] - c["iat"],
        "sub": c["sub"],
        "jkt": c["cnf"]["jkt"][:12] + "…",
    }
    if "act" in c:
        view["act"] = c["act"]
    return view


class _Run:
    def __init__(self, result: DemoResult) -> None:
        self.result = result
        self.t0 = time.perf_counter()

    def step(self, kind: str, title: str, ok: bool | None = None, **detail: Any) -> None:
        self.result.steps.append(Step((time.perf_counter() - self.t0) * 1000, kind, title, detail, ok))

    def check(self, name: str, ok: bool, title: str, **detail: Any) -> None:
        self.result.checks[name] = ok
        self.step("attack" if name.startswith("refused:") else "check", title, ok, **detail)


def _wait_fresh(verifiers: list[Verifier], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(v.feed is not None and v.feed.fresh(time.time()) for v in verifiers):
        if time.monotonic() > deadline:
            raise RuntimeError("resource servers did not subscribe to the revocation feed")
        time.sleep(0.02)


def _wait_until(ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready")
        time.sleep(0.02)


def run_demo(keep: Path | None = None) -> DemoResult:
    """Run the whole demo; with ``keep`` the deployment stays there (for ``tether report``)."""
    result = DemoResult()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        _scenario(keep, _Run(result))
        return result
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as tmp:
        _scenario(Path(tmp), _Run(result))
    return result


def _scenario(directory: Path, run: _Run) -> None:
    sts_port, b_port, c_port = free_port(), free_port(), free_port()
    sts_url, b_url, c_url = (f"http://127.0.0.1:{p}" for p in (sts_port, b_port, c_port))
    plan = GatewayPlan(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    notes_port = free_port()
    mcp_plan = McpPlan(plan.gateway_url, f"http://127.0.0.1:{notes_port}/mcp", directory / "drive-vendor-update")
    mtls_plan = MtlsPlan(f"https://127.0.0.1:{free_port()}", f"https://127.0.0.1:{free_port()}")
    payments_port = free_port()
    approval_plan = ApprovalPlan(f"http://127.0.0.1:{payments_port}/mcp")
    federation_plan = FederationPlan.create(directory)
    init = initialize(directory, issuer=sts_url)
    with init.config_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[[resources]]\nuri = "{b_url}"\nprincipals = ["{SVC_B}"]\n'
            f'\n[[resources]]\nuri = "{c_url}"\nprincipals = ["{SVC_C}"]\n'
            + mcp_plan.toml()
            + plan.toml()
            + mtls_plan.toml()
            + approval_plan.toml()
            + federation_plan.toml()
            + f'\n[revocations]\nsubscribers = ["{federation_plan.subscriber()}"]\n'
        )
    initial = load_config(init.config_path)
    master = load_master_key(initial.master_key_file)
    ca, bundle = enable_x509(init.config_path, initial.data_dir, "tether.local", master)
    config = load_config(init.config_path)
    (config.policy_dir / "50-payments.cedar").write_text(APPROVAL_POLICY, encoding="utf-8")
    store_legacy_key(config)
    pinned = pin_drive(config)
    domain = DevTrustDomain.load(config.data_dir, "tether.local", master)
    sts = build_sts(config)
    tls = tls_files(config)
    servers = [
        ServerThread(sts.app, sts_port).start(),
        ServerThread(sts.app, _port(mtls_plan.sts_mtls_url), tls=tls, lifespan=False).start(),
    ]
    run.step("setup", "STS started on the embedded SQLite store", url=sts_url, kid=sts.ctx.keyring.current.kid[:12] + "…")
    c_app, c_verifier = docs_service(sts_url, c_url, DevIdentity(domain, SVC_C))
    b_app, b_verifier = search_service(sts_url, b_url, c_url, DevIdentity(domain, SVC_B))
    servers += [ServerThread(c_app, c_port).start(), ServerThread(b_app, b_port).start()]
    notes_verifier = Verifier(ResourceSettings(issuer=sts_url, resource=mcp_plan.notes_url),
                              identity=DevIdentity(domain, NOTES_SERVICE))  # fmt: skip
    servers.append(ServerThread(protect(notes_server(), notes_verifier), notes_port).start())
    payments_verifier = Verifier(ResourceSettings(issuer=sts_url, resource=approval_plan.payments_url,
                                                  policy_dir=str(config.policy_dir)),
                                 identity=DevIdentity(domain, PAYMENTS_SERVICE))  # fmt: skip
    paid: list[dict[str, Any]] = []
    servers.append(ServerThread(protect(payments_server(paid), payments_verifier), payments_port).start())
    r_app, r_verifier = reports_service(sts_url, mtls_plan.reports_url, DevIdentity(domain, REPORTS_SERVICE))
    servers.append(ServerThread(r_app, _port(mtls_plan.reports_url), tls=tls).start())
    gateway = build_gateway(config)
    upstream_port, gateway_port = (int(u.rsplit(":", 1)[1]) for u in (plan.upstream_url, plan.gateway_url))
    servers += [ServerThread(legacy_api(), upstream_port).start(), ServerThread(gateway.app, gateway_port).start()]
    try:
        _wait_fresh([b_verifier, c_verifier, notes_verifier, r_verifier, payments_verifier])
        run.step("setup", "services B (search) and C (docs) subscribed to revocations", b=b_url, c=c_url)
        run.step("setup", "MCP: notes server behind tether.mcp.protect; the gateway's stdio drive route pinned",
                 notes=mcp_plan.notes_url, drive=mcp_plan.drive_url, pinned=pinned)  # fmt: skip
        _story(run, sts_url, b_url, c_url, domain)
        _wait_until(lambda: getattr(gateway, "feed", None) is not None and gateway.feed.fresh(time.time()), "gateway feed")
        _later_acts(run, sts_url, b_url, domain, plan, mcp_plan)
        with StsClient(sts_url, DevIdentity(domain, ADMIN, ttl=120)) as admin:
            run.step("setup", "the STS's mutual-TLS listener and the reports service, both asking for client certificates",
                     sts=mtls_plan.sts_mtls_url, reports=mtls_plan.reports_url)  # fmt: skip
            mtls_act(run.step, run.check, admin, mtls_plan, ca, bundle, directory / "svids")
            run.step("setup", "a payments MCP server behind tether.mcp.protect; `pay` is held for finance's approval",
                     payments=approval_plan.payments_url, policy="payments-need-finance")  # fmt: skip
            approval_act(run.step, run.check, admin, domain, sts_url, approval_plan, config, paid)
            b_sts, b_server = start_peer(federation_plan, sts_url, AGENT)
            servers.append(b_server)
            federation_act(run.step, run.check, admin, DevIdentity(domain, AGENT), sts_url, federation_plan, b_sts)
    finally:
        for server in reversed(servers):
            server.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _later_acts(run: _Run, sts_url: str, b_url: str, domain: DevTrustDomain, plan: GatewayPlan, mcp_plan: McpPlan) -> None:
    with StsClient(sts_url, DevIdentity(domain, ADMIN, ttl=120)) as admin:
        run.step("setup", "gateway in front of a legacy CRM API (a bearer exception, expiring soon)",
                 gateway=plan.gateway_url, route="legacy-crm")  # fmt: skip
        gateway_act(run.step, run.check, admin, domain, sts_url, plan)
        mcp_act(run.step, run.check, admin, domain, sts_url, mcp_plan)
        rogue_act(run.step, run.check, admin, domain, sts_url, b_url)


def _story(run: _Run, sts_url: str, b_url: str, c_url: str, domain: DevTrustDomain) -> None:
    admin = StsClient(sts_url, DevIdentity(domain, ADMIN, ttl=120))
    agent_identity = DevIdentity(domain, AGENT)
    with admin, httpx.Client(trust_env=False, timeout=10.0) as raw:
        task = admin.create_task(
            agent=AGENT,
            on_behalf_of=USER,
            audiences=[b_url, c_url],
            scopes=["wiki:read", "docs:read"],
            purpose="summarise the Q3 design docs",
            max_duration=300,
            max_depth=3,
        )
        run.step(
            "task",
            "task created by the orchestrator",
            id=task["id"],
            agent=AGENT,
            on_behalf_of=USER,
            audiences=task["audiences"],
            scopes=task["scopes"],
            hard_cap_s=task["expires_at"] - task["created_at"],
        )
        svid = agent_identity.token(sts_url)
        run.step("identity", "agent proves what it is with a JWT-SVID (no standing secret)", **_svid_view(svid))
        agent = Agent(sts_url, agent_identity)
        session = agent.session(task["id"], scopes={b_url: "wiki:read docs:read", c_url: "docs:read"})
        session_token = run_sync(session.session_flow(), raw)
        run.step("token", "session token (audience: the STS, bound to the agent's key)", **_token_view(session_token))
        auth = session.auth(audiences={b_url: b_url, c_url: c_url})
        with httpx.Client(auth=auth, trust_env=False, timeout=10.0) as http:
            hop_b = session.token_for(b_url, raw)
            run.step("token", "hop token for B", **_token_view(hop_b))
            response = http.get(b_url + "/search", params={"q": "design"})
            body = response.json()
            run.step(
                "call",
                "agent → B /search",
                ok=response.status_code == 200,
                status=response.status_code,
                b_saw=body.get("seen_by_b"),
            )
            chain = (body.get("from_c") or {}).get("seen_by_c", {})
            run.check(
                "delegation:act-chain",
                chain.get("actors") == [SVC_B, AGENT],
                "B → C on the agent's behalf: C sees the act chain",
                c_saw=chain,
            )
            response = http.get(c_url + "/fetch")
            run.step("call", "agent → C /fetch", ok=response.status_code == 200, status=response.status_code)
            _attacks(run, raw, session, hop_b, b_url, c_url)
            _complete(run, admin, task["id"], session, raw, b_url, c_url)
            response = http.get(b_url + "/search")
            run.check(
                "refused:after-completion",
                response.status_code == 401 and _err(response) == "invalid_token",
                "call after completion refused",
                status=response.status_code,
                error=_err(response),
            )
        try:
            run_sync(exchange_flow(sts_url + "/token", _hop_form(session_token, b_url), session.key, session.nonces), raw)
            refused, code = False, None
        except ExchangeError as exc:
            refused, code = exc.error == "invalid_grant", exc.error
        run.check("refused:exchange-after-completion", refused, "new exchange after completion refused", error=code)


def _svid_view(svid: str) -> dict[str, Any]:
    c = claims_of(svid)
    return {"sub": c["sub"], "aud": c["aud"], "ttl_s": c["exp"] - c["iat"]}


def _hop_form(subject: str, audience: str, scope: str | None = None) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": TOKEN_TYPE_ACCESS,
        "resource": audience,
    }
    if scope:
        form["scope"] = scope
    return form


def _err(response: httpx.Response) -> str | None:
    try:
        return str(response.json().get("error"))
    except ValueError:
        return None


def _signed_get(raw: httpx.Client, session: TaskSession, url: str, token: str, proof: str | None = None) -> httpx.Response:
    proof = proof or session.key.proof("GET", url, access_token=token)
    return raw.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def _attacks(run: _Run, raw: httpx.Client, session: TaskSession, hop_b: str, b_url: str, c_url: str) -> None:
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _THIEF, hop_b, b_url + "/search"], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        stolen = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        stolen = {"bearer": [None, out.stderr[-200:]], "own_key": [None, None]}
    run.check(
        "refused:stolen-token-as-bearer",
        stolen["bearer"][0] == 401,
        "stolen hop token replayed from another process as a bearer token",
        status=stolen["bearer"],
    )
    run.check(
        "refused:stolen-token-other-key",
        stolen["own_key"] == [401, "invalid_token"],
        "stolen hop token replayed from another process with the thief's own key",
        status=stolen["own_key"],
    )
    url = b_url + "/search"
    proof = session.key.proof("GET", url, access_token=hop_b)
    first = _signed_get(raw, session, url, hop_b, proof)
    replay = _signed_get(raw, session, url, hop_b, proof)
    run.check(
        "refused:proof-replay",
        first.status_code == 200 and replay.status_code == 401 and _err(replay) == "invalid_dpop_proof",
        "DPoP proof replayed",
        first=first.status_code,
        replay=[replay.status_code, _err(replay)],
    )
    wrong = _signed_get(raw, session, c_url + "/fetch", hop_b)
    run.check(
        "refused:wrong-audience",
        wrong.status_code == 401 and _err(wrong) == "invalid_token",
        "hop token for B presented to C",
        status=[wrong.status_code, _err(wrong)],
    )
    session_token = run_sync(session.session_flow(), raw)
    try:
        run_sync(
            exchange_flow(
                session.token_url, _hop_form(session_token, b_url, "wiki:read wiki:admin"), session.key, session.nonces
            ),
            raw,
        )
        widened, code = False, None
    except ExchangeError as exc:
        widened, code = exc.error == "invalid_scope", exc.error
    run.check("refused:scope-widening", widened, "exchange asking for wiki:admin (beyond the task)", error=code)


def _complete(
    run: _Run, admin: StsClient, task_id: str, session: TaskSession, raw: httpx.Client, b_url: str, c_url: str
) -> None:
    hop_c = session.token_for(c_url, raw)
    hop_b = session.token_for(b_url, raw)
    admin.api("POST", f"/tasks/{task_id}/complete")
    done = time.perf_counter()
    run.step("task", "task completed: the STS revokes everything derived from it and pushes the revocation")
    latency: dict[str, float] = {}
    targets = {"B": (b_url + "/whoami", hop_b), "C": (c_url + "/whoami", hop_c)}
    deadline = time.monotonic() + 5
    while len(latency) < len(targets) and time.monotonic() < deadline:
        for name, (url, token) in targets.items():
            if name not in latency and _signed_get(raw, session, url, token).status_code == 401:
                latency[name] = (time.perf_counter() - done) * 1000
    run.result.revocation_ms = {k: round(v, 2) for k, v in sorted(latency.items())}
    run.check(
        "revocation:pushed",
        set(latency) == {"B", "C"} and max(latency.values()) < 1000,
        "first refusal at each service after completion",
        ms=run.result.revocation_ms,
    )
