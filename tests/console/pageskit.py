"""Kit for the console page tests: tasks and tokens made through the real STS, HTML read structurally.

A lineage is made as in production: the orchestrator creates a task (admin API), the agent
exchanges its workload SVID for a session token and that for a hop token to service B, and
service B exchanges the hop token with its own SVID as actor for a token to service C (RFC 8693
§4.1). Token ids come from the tokens' own ``jti`` claims.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, TypeVar

import jwt
from consolekit import RunningConsole

from helpers import ACCESS, JWT, SVC_B, SVC_C, TOKEN_EXCHANGE, Client, RunningSts, admin_token, create_task
from tether.audit.chain import AuditRecord
from tether.config import Config
from tether.store.open import open_store
from tether.store.protocol import Store

__all__ = ["RESOURCES", "SERVICE_B", "SERVICE_C", "Lineage", "Tree", "audit_of", "end_by_admin_api", "jti_of", "make_lineage",
           "sse_events", "with_store"]  # fmt: skip

SERVICE_B = "http://127.0.0.1:9001"
SERVICE_C = "http://127.0.0.1:9002"
RESOURCES = f"""
[[resources]]
uri = "{SERVICE_B}"
principals = ["{SVC_B}"]

[[resources]]
uri = "{SERVICE_C}"
principals = ["{SVC_C}"]
"""

T = TypeVar("T")


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


@dataclass
class Lineage:
    task: dict[str, Any]
    agent: Client
    session: str
    hop: str
    actor: str

    @property
    def id(self) -> str:
        return str(self.task["id"])

    @property
    def jtis(self) -> dict[str, str]:
        return {"session": jti_of(self.session), "hop": jti_of(self.hop), "actor": jti_of(self.actor)}


def _ok(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def make_lineage(sts: RunningSts, **task_fields: Any) -> Lineage:
    """session → hop (to B) → actor hop (B acting, to C), all through the STS over HTTP."""
    fields = {"audiences": [SERVICE_B, SERVICE_C], **task_fields}
    task = create_task(sts, **fields)
    agent = Client(sts)
    session = _ok(agent.session(task["id"]))
    hop = _ok(agent.hop(session, SERVICE_B, scope="wiki:read"))
    service_b = Client(sts)
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": hop, "subject_token_type": ACCESS,
            "actor_token": sts.svid(SVC_B), "actor_token_type": JWT, "resource": SERVICE_C}  # fmt: skip
    actor = _ok(service_b.post_token(form))
    return Lineage(task, agent, session, hop, actor)


def end_by_admin_api(sts: RunningSts, task_id: str, action: str = "complete") -> None:
    """End a task as the orchestrator does: the STS admin API (the other runtime)."""
    client, token = admin_token(sts)
    response = client.api("POST", f"/tasks/{task_id}/{action}", token)
    assert response.status_code == 200, response.text


def with_store(config: Config, use: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``use`` against a fresh connection to the deployment's store (a third process, in effect)."""

    async def run() -> T:
        store = await open_store(config)
        try:
            return await use(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def audit_of(console: RunningConsole, kind: str) -> list[AuditRecord]:
    return [r for r in console.sts.audit() if r.kind == kind]


class Tree(HTMLParser):
    """The lineage tree of a task page: each ``data-jti`` item's parent item, state, classes and text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.parent: dict[str, str | None] = {}
        self.state: dict[str, str] = {}
        self.classes: dict[str, set[str]] = {}
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.task: str | None = None
        self._stack: list[str | None] = []  # one entry per open <li> (its jti, or None)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "data-task" in values:
            self.task = values["data-task"]
        if tag != "li":
            return
        jti = values.get("data-jti")
        if jti is not None:
            enclosing = next((j for j in reversed(self._stack) if j is not None), None)
            self.parent[jti] = enclosing
            self.state[jti] = values.get("data-state", "")
            self.classes[jti] = set(values.get("class", "").split())
            self.text[jti] = ""
            self.attrs[jti] = values
        self._stack.append(jti)

    def handle_endtag(self, tag: str) -> None:
        if tag == "li" and self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for jti in self._stack:
            if jti is not None:
                self.text[jti] += data


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` pairs from an iterator of SSE lines (comments skipped)."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
