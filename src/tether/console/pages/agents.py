"""``/agents``: what each agent holds now, its risk and whether it is blocked; the kill switch.

Holdings are ``Store.agent_holdings`` (live tasks and live tokens per agent, one grouped query);
risk is the monitor's score (``ctx.risk``, 0-100); blocks are ``Store.list_blocks``. Blocking an
agent or subject ends its tasks and revokes its tokens (``actions.block_principal``: Cedar
``admin`` check, audited as the human). As with tasks, a GET only shows what will happen
(``/principals/{block|unblock}/confirm?kind=&value=``) and the POST with the session's CSRF
token does it (WEB-02), for operators only (WEB-05). Principal names are attacker-chosen text,
rendered autoescaped and passed in query strings and form fields, never in paths (WEB-03).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tether.console.actions import MAX_PRINCIPAL, block_principal
from tether.console.pages.fmt import FORMATS
from tether.console.web import Human, client_address, context, page, render
from tether.errors import InvalidRequest, NotFoundError
from tether.store.records import BlockKind
from tether.web.forms import Form

__all__ = ["ROUTES", "parse_principal"]

#: blocked principals listed on one page
BLOCKS = 500
#: agents listed (those holding the most live tokens first); any other agent is one search away on /tasks
AGENTS = 200
_OPS = ("block", "unblock")


def parse_principal(kind: str | None, value: str | None) -> tuple[BlockKind, str]:
    """An agent or subject name from a query or form (``InvalidRequest``, a 400 page, when malformed)."""
    try:
        parsed = BlockKind((kind or "").strip())
    except ValueError:
        raise InvalidRequest("kind must be agent or subject") from None
    name = (value or "").strip()
    if not name or len(name) > MAX_PRINCIPAL or not name.isprintable():
        raise InvalidRequest(f"name one agent or subject (printable, at most {MAX_PRINCIPAL} characters)")
    return parsed, name


def _op(request: Request) -> str:
    op = str(request.path_params["op"])
    if op not in _OPS:
        raise NotFoundError("no such action")
    return op


@page("view")
async def agents_page(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/agents``: holdings with risk and blocked state, and the kill switch's entries."""
    ctx = context(request)
    now = ctx.now()
    holdings = await ctx.store.agent_holdings(now=now, limit=AGENTS)
    blocks = await ctx.store.list_blocks(limit=BLOCKS)
    blocked = {(b.kind.value, b.value): b.since for b in blocks}
    rows = [{"agent": h.agent, "tasks": h.tasks, "tokens": h.tokens, "risk": ctx.risk(h.agent),
             "blocked": blocked.get((BlockKind.AGENT.value, h.agent))} for h in holdings]  # fmt: skip
    return render(request, "agents.html", {
        **FORMATS, "title": "Agents", "rows": rows, "blocks": blocks, "operator": human.may("act"),
        "kinds": [k.value for k in BlockKind], "more": len(holdings) >= AGENTS, "shown": AGENTS,
    }, human=human)  # fmt: skip


@page("act")
async def confirm_principal(request: Request, human: Human, form: Form | None) -> Response:
    """GET ``/principals/{block|unblock}/confirm?kind=&value=``: what will happen, and the POST form."""
    op = _op(request)
    kind, value = parse_principal(request.query_params.get("kind"), request.query_params.get("value"))
    if op == "block":
        effects = [
            f"New exchanges for this {kind.value} are refused.",
            f"Every active task of this {kind.value} ends, and every token derived from them is revoked at once.",
        ]
    else:
        effects = [f"This {kind.value} may exchange tokens again (its ended tasks stay ended)."]
    return render(request, "confirm.html", {
        **FORMATS, "title": f"{op.capitalize()} {kind.value}", "action": f"/principals/{op}", "verb": op.capitalize(),
        "what": f"{kind.value} {value}", "effects": effects, "fields": [("kind", kind.value), ("value", value)],
        "back": "/agents",
    }, human=human)  # fmt: skip


@page("act")
async def do_principal(request: Request, human: Human, form: Form | None) -> Response:
    """POST ``/principals/{block|unblock}`` (fields ``kind``, ``value``): ``actions.block_principal``."""
    op = _op(request)
    assert form is not None  # ``page`` reads the form of every POST
    kind, value = parse_principal(form.get("kind"), form.get("value"))
    await block_principal(context(request), human, kind, value, lift=op == "unblock", client=client_address(request))
    return RedirectResponse("/agents", status_code=303)


ROUTES: list[BaseRoute] = [
    Route("/agents", agents_page, methods=["GET"]),
    Route("/principals/{op}/confirm", confirm_principal, methods=["GET"]),
    Route("/principals/{op}", do_principal, methods=["POST"]),
]
