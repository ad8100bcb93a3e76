"""Demo act: one hop across trust domains, and the revocation crossing back (issue 19).

The demo's STS is trust domain A (``tether.local``). The act starts a second deployment, B
(``tether init --trust-domain b.example``, its own keys and store), that trusts A as
``[[federation]]`` peer ``a`` and follows A's revocation feed; A trusts B's trust domain (B's
bundle file) and lists B's follower as a feed subscriber. The agent crosses with its home key
(``agent.federation.LinkedSession``), hops at B, and when the orchestrator completes A's task,
B's linked task ends: its tokens turn inactive at B.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.agent.exchange import run_sync
from tether.agent.federation import LinkedSession
from tether.agent.identity import DevIdentity
from tether.agent.session import Agent
from tether.client import StsClient
from tether.config import load_config
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.provision import initialize
from tether.rules.jws import b64url_decode, strict_json_loads
from tether.sts.bootstrap import Sts, build_sts
from tether.urns import JWT_BEARER
from tether.web.server import ServerThread, free_port

__all__ = ["B_DOMAIN", "FederationPlan", "federation_act", "start_peer"]

B_DOMAIN = "b.example"
B_FEED = f"spiffe://{B_DOMAIN}/feed"
B_WIKI = "https://wiki.b.example"

Step = Callable[..., None]
Check = Callable[..., None]


@dataclass(frozen=True)
class FederationPlan:
    """Where B lives; made before A starts, since A's configuration names B's bundle and follower."""

    directory: Path
    url: str

    @classmethod
    def create(cls, root: Path) -> FederationPlan:
        return cls(root / "domain-b", f"http://127.0.0.1:{free_port()}")

    def toml(self) -> str:
        """A's side: trust B's trust domain (to authenticate B's follower) and let it read the feed."""
        initialize(self.directory, issuer=self.url, trust_domain=B_DOMAIN)  # B's keys and bundle exist from here
        bundle = DevTrustDomain.bundle_path(self.directory / ".tether", B_DOMAIN)
        return f'\n[[trust_domains]]\nname = "{B_DOMAIN}"\nbundle_file = "{bundle}"\n'

    def subscriber(self) -> str:
        return B_FEED


def start_peer(plan: FederationPlan, a_url: str, agent: str) -> tuple[Sts, ServerThread]:
    """B's configuration (A as peer ``a``), then B's STS on loopback; its lifespan starts the follower."""
    with (plan.directory / "tether.toml").open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[[federation]]\nname = "a"\nissuer = "{a_url}"\njwks_uri = "{a_url}/jwks"\nagents = ["{agent}"]\n'
            f'audiences = ["{B_WIKI}"]\nscopes = ["wiki:read"]\nmax_ttl = 300\nstale_after = 5\n'
            f'feed_principal = "{B_FEED}"\n'
        )
    sts = build_sts(load_config(plan.directory / "tether.toml"))
    return sts, ServerThread(sts.app, int(plan.url.rsplit(":", 1)[1])).start()


def _claims(token: str) -> dict[str, Any]:
    value = strict_json_loads(b64url_decode(token.split(".")[1]))
    return value if isinstance(value, dict) else {}


def _active_at_b(http: httpx.Client, plan: FederationPlan, token: str) -> bool:
    config = load_config(plan.directory / "tether.toml")
    domain = DevTrustDomain.load(config.data_dir, B_DOMAIN, load_master_key(config.master_key_file))
    admin = domain.issue(f"spiffe://{B_DOMAIN}/admin", audience=plan.url, ttl=60, now=int(time.time()))
    form = {"token": token, "client_assertion": admin, "client_assertion_type": JWT_BEARER}
    return bool(http.post(plan.url + "/introspect", data=form).json().get("active"))


def federation_act(step: Step, check: Check, admin: StsClient, identity: DevIdentity, a_url: str, plan: FederationPlan,
                   b_sts: Sts) -> float | None:  # fmt: skip
    """The crossing and the revocation that follows it; returns the crossing revocation's latency (ms)."""
    deadline = time.monotonic() + 15
    while not b_sts.ctx.federation.fresh("a", b_sts.ctx.now()):
        if time.monotonic() > deadline:
            raise RuntimeError("B never heard A's revocation feed")
        time.sleep(0.05)
    step("setup", "trust domain B started: it trusts A as peer `a` and follows A's revocation feed",
         b=plan.url, trust_domain=B_DOMAIN)  # fmt: skip
    agent = identity.principal or ""
    task = admin.create_task(agent=agent, audiences=[plan.url], scopes=["wiki:read"], purpose="read B's wiki",
                             max_duration=300)  # fmt: skip
    with httpx.Client(trust_env=False, timeout=10.0) as raw:
        home = Agent(a_url, identity).session(task["id"])
        abroad = LinkedSession(home, plan.url)
        session = run_sync(abroad.session_flow(), raw)
        claims = _claims(session)
        jkt = str(claims.get("cnf", {}).get("jkt", ""))[:12] + "…"
        check("federation:crossed", claims.get("sub") == f"fed:a/{agent}" and claims.get("iss") == plan.url,
              "agent crosses to B with its home key: a session of B's linked task, A's agent namespaced",
              sub=claims.get("sub"), txn=claims.get("txn"), jkt=jkt)  # fmt: skip
        hop = abroad.token_for(B_WIKI, raw)
        check("federation:hop-at-b", _claims(hop).get("aud") == B_WIKI and _active_at_b(raw, plan, hop),
              "hop at B for B's wiki, inside the linked task", aud=B_WIKI)  # fmt: skip
        admin.api("POST", f"/tasks/{task['id']}/complete")
        done = time.perf_counter()
        latency: float | None = None
        while time.perf_counter() - done < 5:
            if not _active_at_b(raw, plan, hop):
                latency = (time.perf_counter() - done) * 1000
                break
            time.sleep(0.01)
    shown = round(latency, 2) if latency is not None else None
    check("federation:revocation-crossed", latency is not None,
          "A's task completed: B's linked task ends and its tokens turn inactive at B", ms=shown)  # fmt: skip
    return latency
