"""The console's record pages: alerts, bearer exceptions, policies and the audit log (read only).

Every page reads a bounded amount (SECURITY WEB-03, and so a page view never scans a large log):
the audit searches go through ``Store.search_audit`` with a ``scan`` bound, and each page says
which window it looked at, with a link to the older records. Values from the store are
autoescaped and shown with control characters visible (``console.pages.shown``).

- ``/alerts``: the monitor's ``alert.raised`` records (``tether alerts`` shows the same fields).
- ``/exceptions``: the bearer exceptions (DESIGN "Bearer tokens are an exception, not a mode"):
  gateway routes and MCP routes with owner, justification, days to expiry and their calls
  (``gateway.call`` / ``mcp.call`` records among the newest ``CALL_WINDOW``).
- ``/policies``: the Cedar policy versions, the mode, and shadow-mode differences
  (``detail.policy.shadow.decision`` ≠ ``detail.policy.decision``, ``Decision.audit``).
- ``/audit``: a search by task, principal and kind, and the hash chain's state: the newest
  signed checkpoint verified with the issuer's keys (``tether.audit.checkpoint``) and the
  chain from the record it vouches for up to ``VERIFY_MAX`` records after it
  (``tether.audit.export.verify_export``, as ``tether audit verify`` uses it).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tether.audit import checkpoint
from tether.audit.chain import AuditRecord
from tether.audit.export import ExportBroken, verify_export
from tether.console.pages.fmt import task_href
from tether.console.pages.shown import compact, fields, int_param, plain, text_param, when
from tether.console.web import Human, config, context, page, render
from tether.gateway.routes import days_to_expiry, utc_date
from tether.rules.jws import PublicKey
from tether.store.records import AuditPage
from tether.sts.context import StsContext
from tether.web.forms import Form

__all__ = [
    "ALERT_SCAN",
    "AUDIT_SCAN",
    "CALL_WINDOW",
    "CHAIN_CACHE",
    "ROUTES",
    "SHADOW_SCAN",
    "VERIFY_MAX",
    "chain_status",
    "without_userinfo",
]

#: audit records examined per alerts page
ALERT_SCAN = 20_000
#: audit records examined per audit search page
AUDIT_SCAN = 20_000
#: the newest audit records in which the exceptions page counts each route's calls
CALL_WINDOW = 5_000
#: the newest audit records in which the policies page looks for shadow-mode differences
SHADOW_SCAN = 2_000
#: shadow differences shown at most
SHADOW_SHOWN = 50
#: records after the newest checkpoint whose links are verified on each audit page view
VERIFY_MAX = 5_000
#: policy versions listed
POLICY_VERSIONS = 50

_KIND = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*\.?")


def _row(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "time": when(record.ts),
        "kind": plain(record.kind, limit=80),
        "outcome": plain(record.outcome, limit=40),
        "principal": plain(record.principal, limit=200),
        "task": plain(record.task, limit=80),
        "task_raw": record.task or "",
        "error": plain(record.error, limit=80),
        "detail": compact(dict(record.detail), limit=300),
    }


# -- alerts --------------------------------------------------------------------------------------


def _alert(record: AuditRecord) -> dict[str, Any]:
    detail = record.detail
    row = {"seq": record.seq, "time": when(record.ts), "task": plain(record.task, limit=80), "task_raw": record.task or "",
           "task_href": task_href(record.task)}  # fmt: skip
    row.update(fields(detail, "detector", "severity", "agent", "reason"))
    row["evidence"] = compact(detail.get("evidence", {}), limit=400)
    actions = detail.get("actions", [])
    row["actions"] = ", ".join(plain(a, limit=40) for a in actions) if isinstance(actions, list) else plain(actions)
    return row


@page("view")
async def alerts(request: Request, human: Human, form: Form | None) -> Response:
    """The monitor's alerts, newest first (``alert.raised`` in the audit chain), ``before=`` pages on."""
    ctx, cfg = context(request), config(request)
    before = int_param(request, "before")
    found = await ctx.store.search_audit(kind="alert.raised", before=before, limit=cfg.console.page_size, scan=ALERT_SCAN)
    return render(request, "records_alerts.html", {"title": "Alerts", "rows": [_alert(r) for r in found.records],
                  "before": before, "next_before": found.next_before, "scan": ALERT_SCAN}, human=human)  # fmt: skip


# -- bearer exceptions ----------------------------------------------------------------------------


async def _calls(ctx: StsContext, kind: str) -> Counter[str]:
    """Calls per route among the newest ``CALL_WINDOW`` audit records."""
    found = await ctx.store.search_audit(kind=kind, limit=CALL_WINDOW, scan=CALL_WINDOW)
    return Counter(str(r.detail.get("route")) for r in found.records if isinstance(r.detail.get("route"), str))


def _allow_summary(rules: list[str], most: int = 6) -> str:
    shown = ", ".join(rules[:most])
    return shown + (f" (+{len(rules) - most} more)" if len(rules) > most else "")


@page("view")
async def exceptions(request: Request, human: Human, form: Form | None) -> Response:
    """Every bearer exception: who owns it, why, when it expires, what it allows and how much it is used."""
    ctx, cfg = context(request), config(request)
    today = utc_date(ctx.now())
    gateway_calls, mcp_calls = await _calls(ctx, "gateway.call"), await _calls(ctx, "mcp.call")
    routes = []
    for route in cfg.routes:
        routes.append({
            "name": route.name, "owner": plain(route.owner), "justification": plain(route.justification, limit=500),
            "expires": route.expires.isoformat(), "days": days_to_expiry(route, today),
            "upstream": plain(without_userinfo(route.upstream), limit=200),
            "inject": route.injection.mode,
            "allow": _allow_summary([str(rule) for rule in route.allow]),
            "caps": f"{route.max_requests_per_task}/task, {route.max_requests_per_second}/s, "
                    f"{route.max_request_bytes} B in, {route.max_response_bytes} B out, "
                    f"{route.max_session_seconds} s session",
            "calls": gateway_calls.get(route.name, 0),
        })  # fmt: skip
    mcp = []
    for m in cfg.mcp_routes:
        days = (m.expires - today).days
        mcp.append({
            "name": m.name, "owner": plain(m.owner), "justification": plain(m.justification, limit=500),
            "expires": m.expires.isoformat(), "days": days,
            "upstream": plain(without_userinfo(m.url), limit=200) if m.url else _stdio(m.command),
            "credential": m.credential + (f" (vault `{plain(m.secret, limit=60)}`)" if m.secret else ""),
            "allow": _allow_summary(list(m.tools)) or "every tool the catalogue pins",
            "caps": f"{m.max_calls_per_task}/task, {m.max_calls_per_second}/s, {m.max_argument_bytes} B arguments, "
                    f"{m.max_result_bytes} B result",
            "calls": mcp_calls.get(m.name, 0),
        })  # fmt: skip
    return render(request, "records_exceptions.html", {"title": "Bearer exceptions", "routes": routes, "mcp": mcp,
                  "window": CALL_WINDOW, "today": today.isoformat()}, human=human)  # fmt: skip


# -- policies -----------------------------------------------------------------------------------


def _shadow_difference(record: AuditRecord) -> dict[str, Any] | None:
    policy = record.detail.get("policy")
    if not isinstance(policy, dict):
        return None
    shadow = policy.get("shadow")
    if not isinstance(shadow, dict) or shadow.get("decision") == policy.get("decision"):
        return None
    row = _row(record)
    row.update({
        "enforced": plain(policy.get("decision"), limit=10), "shadow": plain(shadow.get("decision"), limit=10),
        "version": plain(policy.get("version"), limit=80),
        "determining": compact(policy.get("determining", []), limit=200),
        "shadow_determining": compact(shadow.get("determining", []), limit=200),
    })  # fmt: skip
    return row


@page("view")
async def policies(request: Request, human: Human, form: Form | None) -> Response:
    """The policy versions (the one in force marked), the mode, and where shadow policies would decide otherwise."""
    ctx, cfg = context(request), config(request)
    versions = await ctx.store.policy_versions(limit=POLICY_VERSIONS)
    current = ctx.policy.version
    rows = [{"version": plain(v, limit=80), "loaded": when(at), "current": v == current} for v, at in versions]
    recent = await ctx.store.search_audit(limit=SHADOW_SCAN, scan=SHADOW_SCAN)
    differences = [d for r in recent.records if (d := _shadow_difference(r)) is not None][:SHADOW_SHOWN]
    return render(request, "records_policies.html", {"title": "Policies", "versions": rows, "current": current or "",
                  "mode": cfg.policy.mode, "differences": differences, "scan": SHADOW_SCAN, "shown": SHADOW_SHOWN},
                  human=human)  # fmt: skip


# -- audit -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainStatus:
    """What one audit page view verified of the hash chain and its newest checkpoint."""

    ok: bool
    message: str
    checkpoint_seq: int | None = None
    checkpoint_names: int | None = None
    checkpoint_time: str = ""
    signed: bool = False
    first: int | None = None
    last: int | None = None
    records: int = 0
    more: bool = False
    #: nothing was found wrong, but the checkpoint could not be checked (its key is no longer held)
    unverified: bool = False


def _issuer_keys(ctx: StsContext) -> dict[str, PublicKey]:
    """The issuer's public keys as the running STS holds them (loaded under the master key's seal)."""
    now, ring = ctx.now(), ctx.keyring
    return {kid: key.public for kid in ring.kids if (key := ring.public_key(kid, now=now)) is not None}


#: seconds one verification of the chain serves every audit page view of this process
CHAIN_CACHE = 5.0


def _stdio(command: tuple[str, ...] | list[str]) -> str:
    return "stdio: " + plain(" ".join(command), limit=200)


def without_userinfo(url: str) -> str:
    """An upstream URL as viewers may see it: a ``user:password@`` part is never shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, "[redacted]@" + netloc, parts.path, parts.query, parts.fragment))


async def _cached_chain_status(request: Request, ctx: StsContext) -> ChainStatus:
    """``chain_status`` at most once per ``CHAIN_CACHE`` seconds per console app: a viewer reloading
    the audit page in a loop costs one bounded verification every few seconds, not one per view."""
    now = ctx.now()
    hit: tuple[float, ChainStatus] | None = getattr(request.app.state, "chain_status", None)
    if hit is not None and 0 <= now - hit[0] < CHAIN_CACHE:
        return hit[1]
    status = await chain_status(ctx)
    request.app.state.chain_status = (now, status)
    return status


async def chain_status(ctx: StsContext) -> ChainStatus:
    """Verify the newest checkpoint (signature, issuer, pinned fields) and the links from the record
    it vouches for onward, at most ``VERIFY_MAX`` records: bounded work on every view.

    Without a checkpoint, the first ``VERIFY_MAX`` records are verified from the genesis."""
    store = ctx.store
    found = await store.search_audit(kind=checkpoint.CHECKPOINT_KIND, limit=1, scan=VERIFY_MAX * 20)
    keys = _issuer_keys(ctx)
    if not found.records:
        records = await store.audit_records(after=0, limit=VERIFY_MAX + 1)
        more = len(records) > VERIFY_MAX
        records = records[:VERIFY_MAX]
        try:
            report = verify_export([r.as_json() for r in records], keys=keys, issuer=ctx.settings.issuer)
        except ExportBroken as exc:
            return ChainStatus(False, f"the chain is broken at record {exc.seq}: {exc.reason}", records=len(records))
        span = (report.first, report.head[0]) if report.head else (None, None)
        return ChainStatus(True, "no signed checkpoint found among the newest records; the chain verifies from its "
                           "start", first=span[0], last=span[1], records=report.records, more=more)  # fmt: skip
    record = found.records[0]
    raw = record.as_json()
    try:
        cp = checkpoint.verify_checkpoint_record(raw, keys=keys, issuer=ctx.settings.issuer)
    except checkpoint.UnknownKey:
        return ChainStatus(False, "the newest checkpoint is signed by a key the issuer no longer holds; verify it with "
                           "an archived JWKS (`tether audit verify --jwks`)", checkpoint_seq=record.seq,
                           checkpoint_time=when(record.ts), unverified=True)  # fmt: skip
    except checkpoint.CheckpointError as exc:
        return ChainStatus(False, f"the newest checkpoint (record {record.seq}) does not verify: {exc}",
                           checkpoint_seq=record.seq, checkpoint_time=when(record.ts))  # fmt: skip
    records = await store.audit_records(after=cp.seq - 1, limit=VERIFY_MAX + 2)
    named = records[0] if records else None
    if named is None or named.seq != cp.seq or named.hash != cp.hash:
        return ChainStatus(False, f"record {cp.seq}, which the newest checkpoint vouches for, was changed or removed",
                           checkpoint_seq=record.seq, checkpoint_names=cp.seq, checkpoint_time=when(cp.iat),
                           signed=True)  # fmt: skip
    after = records[1:]
    more = len(after) > VERIFY_MAX
    after = after[:VERIFY_MAX]
    base = ChainStatus(True, "", checkpoint_seq=record.seq, checkpoint_names=cp.seq, checkpoint_time=when(cp.iat), signed=True)
    try:
        report = verify_export([r.as_json() for r in after], keys=keys, issuer=cp.iss, after=cp.seq, after_hash=cp.hash)
    except ExportBroken as exc:
        return replace(base, ok=False, message=f"the chain is broken at record {exc.seq}: {exc.reason}", records=len(after))
    return replace(base, message="the newest checkpoint verifies with the issuer's keys and the chain links from the "
                   "record it vouches for", first=cp.seq, last=report.head[0] if report.head else cp.seq,
                   records=report.records, more=more)  # fmt: skip


@page("view")
async def audit(request: Request, human: Human, form: Form | None) -> Response:
    """Search the audit log (newest first) and show what this view verified of the chain."""
    ctx, cfg = context(request), config(request)
    task = text_param(request, "task", limit=200)
    principal = text_param(request, "principal", limit=512)
    kind = text_param(request, "kind", limit=64, pattern=_KIND)
    before = int_param(request, "before")
    found: AuditPage = await ctx.store.search_audit(task=task, principal=principal, kind=kind, before=before,
                                                    limit=cfg.console.page_size, scan=AUDIT_SCAN)  # fmt: skip
    query = {k: v for k, v in (("task", task), ("principal", principal), ("kind", kind)) if v}
    status = await _cached_chain_status(request, ctx)
    return render(request, "records_audit.html", {"title": "Audit", "rows": [_row(r) for r in found.records],
                  "query": query, "before": before, "next_before": found.next_before, "scan": AUDIT_SCAN,
                  "indexed": task is not None, "chain": status, "verify_max": VERIFY_MAX}, human=human)  # fmt: skip


ROUTES: list[BaseRoute] = [
    Route("/alerts", alerts, methods=["GET"]),
    Route("/exceptions", exceptions, methods=["GET"]),
    Route("/policies", policies, methods=["GET"]),
    Route("/audit", audit, methods=["GET"]),
]
