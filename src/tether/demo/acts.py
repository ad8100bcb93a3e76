"""The demo's later acts: a legacy API behind the gateway, and an agent that misbehaves.

The gateway act shows the bearer exception: the legacy API takes only a static key, which the
gateway holds in the vault and injects into allowlisted calls, so the agent never sees it (the
route expires soon, so ``tether report`` has a finding). The rogue act shows the monitor: an
agent replays a proof and probes audiences its task does not name; the monitor raises alerts
and suspends the task, visible in the audit log and ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.agent.exchange import ExchangeError, exchange_flow, run_sync
from tether.agent.identity import DevIdentity
from tether.agent.session import Agent
from tether.client import StsClient
from tether.config import Config
from tether.gateway.vault import store_secret
from tether.identity.dev_issuer import DevTrustDomain
from tether.urns import TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS

__all__ = ["LEGACY_KEY", "ROGUE", "GatewayPlan", "gateway_act", "legacy_api", "rogue_act", "store_legacy_key"]

AGENT = "spiffe://tether.local/agent/research"
ROGUE = "spiffe://tether.local/agent/rogue"
#: The legacy vendor's static API key: in the vault and at the upstream, never at the agent.
LEGACY_KEY = "crm_live_4f9Q+demo/StaticKey=2026"
ROUTE = "legacy-crm"
EXPIRES_IN_DAYS = 10


@dataclass(frozen=True)
class GatewayPlan:
    gateway_url: str
    upstream_url: str

    def toml(self) -> str:
        port = self.gateway_url.rsplit(":", 1)[1]
        expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=EXPIRES_IN_DAYS)).isoformat()
        return (
            f'\n[gateway]\nurl = "{self.gateway_url}"\nport = {port}\n'
            f'\n[[gateway.routes]]\nname = "{ROUTE}"\nupstream = "{self.upstream_url}"\nsecret = "crm-api-key"\n'
            'inject = "header"\nheader = "X-Api-Key"\ntemplate = "{secret}"\n'
            'allow = ["GET /v1/customers", "GET /v1/customers/*"]\nowner = "team-crm"\n'
            'justification = "the CRM vendor API only accepts a static key; replacement planned"\n'
            f"expires = {expires}\n"
        )


def legacy_api() -> Starlette:
    """A vendor API that only knows one static key (and would echo it if asked)."""

    async def customers(request: Request) -> Response:
        if request.headers.get("x-api-key") != LEGACY_KEY:
            return JSONResponse({"error": "bad api key"}, status_code=401)
        echoed = request.query_params.get("debug") == "1"
        body: dict[str, Any] = {"customers": [{"id": "c-1", "name": "Acme"}]}
        if echoed:
            body["debug_key"] = LEGACY_KEY  # a careless upstream: the gateway must scrub this
        return JSONResponse(body)

    async def admin(request: Request) -> Response:
        return JSONResponse({"deleted": True})

    return Starlette(
        routes=[
            Route("/v1/customers", customers),
            Route("/v1/customers/{cid}", customers),
            Route("/v1/admin/purge", admin, methods=["GET", "POST"]),
        ]
    )


def store_legacy_key(config: Config) -> None:
    store_secret(config, "crm-api-key", LEGACY_KEY, actor="demo:operator")


Step = Callable[..., None]


def gateway_act(step: Step, check: Step, admin: StsClient, domain: DevTrustDomain, sts_url: str, plan: GatewayPlan) -> None:
    audience = f"{plan.gateway_url}/routes/{ROUTE}"
    task = admin.create_task(agent=AGENT, audiences=[audience], scopes=["crm:read"], purpose="look up a customer")
    agent = Agent(sts_url, DevIdentity(domain, AGENT))
    session = agent.session(task["id"])
    auth = session.auth(audiences={audience: audience})
    with httpx.Client(auth=auth, trust_env=False, timeout=10.0) as http:
        response = http.get(audience + "/v1/customers", params={"debug": "1"})
        body = response.text
        step(
            "gateway",
            "agent → gateway → legacy CRM: the vaulted key is injected, the echoed key scrubbed",
            ok=response.status_code == 200,
            status=response.status_code,
            route=ROUTE,
        )
        check("gateway:key-never-seen", response.status_code == 200 and LEGACY_KEY not in body,
              "the agent never sees the legacy API key, even when the upstream echoes it",
              scrubbed="[REDACTED]" in body)  # fmt: skip
        off = http.post(audience + "/v1/admin/purge")
        check(
            "refused:gateway-outside-allowlist",
            off.status_code == 403,
            "call outside the route's allowlist (POST /v1/admin/purge)",
            status=off.status_code,
        )
    admin.api("POST", f"/tasks/{task['id']}/complete")


def _alerts(sts_url: str) -> dict[str, float]:
    text = httpx.get(sts_url + "/metrics", trust_env=False, timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tether_alerts":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["detector"]] = sample.value
    return counts


def rogue_act(step: Step, check: Step, admin: StsClient, domain: DevTrustDomain, sts_url: str, b_url: str) -> None:
    task = admin.create_task(agent=ROGUE, audiences=[b_url], scopes=["wiki:read"], purpose="summarise a page")
    session = Agent(sts_url, DevIdentity(domain, ROGUE)).session(task["id"])
    with httpx.Client(trust_env=False, timeout=10.0) as raw:
        session_token = run_sync(session.session_flow(), raw)
        started = time.perf_counter()
        url = session.token_url
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": session_token, "subject_token_type": TOKEN_TYPE_ACCESS,
                "resource": b_url}  # fmt: skip
        proof = session.key.proof("POST", url, nonce=session.nonces.get(httpx.URL(url)))
        first = raw.post(url, data=form, headers={"DPoP": proof})
        again = raw.post(url, data=form, headers={"DPoP": proof})
        step("rogue", "rogue agent replays a DPoP proof at the STS", first=first.status_code,
             replay=[again.status_code, _error(again)])  # fmt: skip
        probes = ["https://payroll.internal", "https://hr.internal", "https://billing.internal",
                  "https://secrets.internal", "https://admin.internal"]  # fmt: skip
        codes = []
        for audience in probes:
            try:
                run_sync(exchange_flow(url, {**form, "resource": audience}, session.key, session.nonces), raw)
                codes.append("issued")
            except ExchangeError as exc:
                codes.append(exc.error)
        step("rogue", "rogue agent probes five audiences its task does not name", errors=codes)
        deadline = time.monotonic() + 15
        state = "active"
        while time.monotonic() < deadline:
            state = admin.api("GET", f"/tasks/{task['id']}")["state"]
            if state == "suspended":
                break
            time.sleep(0.05)
        detected_ms = round((time.perf_counter() - started) * 1000)
        check("monitor:rogue-suspended", state == "suspended", "the monitor suspends the rogue task",
              ms=detected_ms, state=state)  # fmt: skip
        alerts = _alerts(sts_url)
        check("monitor:alerts-in-metrics", alerts.get("dpop_replay", 0) >= 1 and alerts.get("refusal_burst", 0) >= 1,
              "alerts counted in /metrics (tether_alerts_total by detector)", alerts=alerts)  # fmt: skip
        try:
            run_sync(exchange_flow(url, form, session.key, session.nonces), raw)
            code = None
        except ExchangeError as exc:
            code = exc.error
        check("refused:rogue-after-suspension", code == "invalid_grant", "rogue's next exchange refused", error=code)


def _error(response: httpx.Response) -> str | None:
    try:
        value = response.json().get("error")
    except ValueError:
        return None
    return value if isinstance(value, str) else None
