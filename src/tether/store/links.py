"""Linked tasks' rows (``Store.link_task``, ``Store.linked_tasks``): the SQL both backends share.

A link row records which local task a federation peer's task (and token) opened or joined;
``{mark}`` is the backend's parameter marker.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tether.audit.chain import AuditEvent
from tether.model import Task
from tether.store.records import FederationLink
from tether.store.rows import TASK_COLUMNS

__all__ = ["ACTIVE_LINKED", "INSERT_LINK", "LINK_COLUMNS", "link_audit", "link_values", "linked_query"]

LINK_COLUMNS = "peer, foreign_task, foreign_jti, task_id, created_at"

#: the active task linked to (peer, foreign task) for one agent, newest first
ACTIVE_LINKED = (  # constant fragments; every value is a bound parameter
    f"SELECT {', '.join('t.' + c for c in TASK_COLUMNS.split(', '))} FROM federation_links l"  # noqa: S608
    " JOIN tasks t ON t.id = l.task_id WHERE l.peer = {mark} AND l.foreign_task = {mark} AND t.agent = {mark}"
    " AND t.state = 'active' AND t.expires_at > {mark} ORDER BY t.created_at DESC, t.id LIMIT 1"
)

INSERT_LINK = f"INSERT INTO federation_links ({LINK_COLUMNS}) VALUES ({', '.join(['{mark}'] * 5)})"  # noqa: S608


def link_values(link: FederationLink, task_id: str) -> tuple[Any, ...]:
    return (link.peer, link.foreign_task, link.foreign_jti, task_id, link.created_at)


def link_audit(audit: AuditEvent, task: Task, *, joined: bool) -> AuditEvent:
    """The caller's ``federation.linked`` record, naming the task it ended up linked to."""
    return replace(audit, task=task.id, detail={**audit.detail, "joined": joined})


def linked_query(peer: str, foreign_task: str | None, foreign_jti: str | None, mark: str) -> tuple[str, list[Any]]:
    """Distinct task ids linked from ``peer`` that match either filter (neither: all of them)."""
    sql, args = f"SELECT DISTINCT task_id FROM federation_links WHERE peer = {mark}", [peer]  # noqa: S608
    terms = []
    if foreign_task is not None:
        terms.append(f"foreign_task = {mark}")
        args.append(foreign_task)
    if foreign_jti is not None:
        terms.append(f"foreign_jti = {mark}")
        args.append(foreign_jti)
    if terms:
        sql += " AND (" + " OR ".join(terms) + ")"
    return sql, args
