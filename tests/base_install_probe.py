"""Run by ``test_packaging`` with the python of a venv holding only ``pip install tether``.

An agent (the agent SDK) takes a hop token for ``audience`` from a real STS; a resource
server (the resource SDK, following the revocation feed with its own workload identity)
verifies it with a proof from the agent's key and refuses it with a proof from another key.
Prints one JSON object: what the verifier saw, and every top-level module imported.

Arguments: STS_URL DATA_DIR MASTER_KEY_FILE TASK_ID AUDIENCE AGENT RESOURCE_SERVER
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tether.agent import Agent, DevIdentity, DPoPKey
from tether.errors import OAuthError
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key
from tether.resource import ResourceSettings, Verifier


async def verify_twice(verifier: Verifier, token: str, agent_key: DPoPKey, url: str, path: str) -> dict[str, Any]:
    await verifier.start()
    try:
        deadline = time.monotonic() + 10
        while not (verifier.feed and verifier.feed.fresh(time.time())):
            if time.monotonic() > deadline:
                return {"error": "the verifier never heard the revocation feed"}
            await asyncio.sleep(0.02)
        refused: dict[str, Any] = {}
        try:
            foreign = DPoPKey().proof("GET", url, access_token=token)
            await verifier.verify(method="GET", path=path, headers={"authorization": f"DPoP {token}", "dpop": foreign})
        except OAuthError as exc:
            refused = {"error": exc.error, "status": exc.rs_status}
        proof = agent_key.proof("GET", url, access_token=token)
        principal = await verifier.verify(method="GET", path=path, headers={"authorization": f"DPoP {token}", "dpop": proof})
        seen = {"agent": principal.agent, "task": principal.task, "scopes": sorted(principal.scopes), "jkt": principal.jkt}
        return {"seen": seen, "refused": refused, "agent_jkt": agent_key.jkt}
    finally:
        await verifier.aclose()


def main(sts_url: str, data_dir: str, master_key_file: str, task_id: str, audience: str, agent: str, rs: str) -> None:
    domain = DevTrustDomain.load(Path(data_dir), "tether.local", load_master_key(Path(master_key_file)))
    sdk_agent = Agent(sts_url, DevIdentity(domain, agent))
    token = sdk_agent.session(task_id).token_for(audience)
    verifier = Verifier(ResourceSettings(issuer=sts_url, resource=audience), identity=DevIdentity(domain, rs))
    result = asyncio.run(verify_twice(verifier, token, sdk_agent.key, audience + "/docs", "/docs"))
    top = {name.split(".")[0] for name in sys.modules if not name.startswith("_")}
    result["modules"] = sorted(top - set(sys.stdlib_module_names))
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
