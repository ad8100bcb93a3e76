"""A task's delegation lineage as a forest, from its token rows (pure: no I/O, no clock of its own).

Every token an exchange issues records its ``parent_jti`` (RFC 8693: the subject token it was
derived from), so the rows of ``Store.task_tokens`` link up into trees: the session token at the
root, each hop below the token it was exchanged from, and each actor hop (a service acting with
``act``, RFC 8693 §4.1) below the hop it received. Revoking a token revokes every token derived
from it (``Store.revoke_tree``, task end), so a node below a revoked node is shown revoked too:
the branch is cut. A row whose parent is not among the rows (a page limit, a purged row) is a
root of its own, marked ``orphan``. The rows come from the store and parent links are never
trusted to be acyclic: every walk here is iterative and visits a node once, so a malformed
chain can neither loop forever nor exhaust the recursion limit.

Only token ids and metadata are handled (``IssuedToken`` never holds a token value).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from tether.store.records import IssuedToken

__all__ = ["EXPIRED", "LIVE", "REVOKED", "Node", "Step", "Summary", "build_forest", "summarize", "walk"]

State = Literal["live", "expired", "revoked"]
LIVE: Final = "live"
EXPIRED: Final = "expired"
REVOKED: Final = "revoked"


@dataclass(frozen=True)
class Node:
    """One token in the tree, as the console shows it (never a token value)."""

    jti: str
    kind: str
    aud: str
    scope: tuple[str, ...]
    iat: int
    exp: int
    depth: int
    #: ``dpop`` (RFC 9449 ``cnf.jkt``), ``mtls`` (RFC 8705 ``cnf.x5t#S256``), ``dpop+mtls`` or ``bearer``
    binding: str
    #: the thumbprint the token is bound to (``jkt`` and/or ``x5t#S256``), empty for a bearer token
    thumbprint: str
    #: who the token is about (``sub``) and, when another party holds it, that actor (``client_id``)
    holder: str
    actor: str | None
    state: State
    #: revoked because an ancestor was (the branch is cut), not by its own revocation
    inherited: bool
    #: its parent is not among the rows given
    orphan: bool
    parent_jti: str | None
    revoked_at: int | None
    children: tuple[Node, ...] = field(default=())

    @property
    def revoked(self) -> bool:
        return self.state == REVOKED


@dataclass(frozen=True)
class Step:
    """One step of a depth-first walk, for rendering nested lists without recursion.

    ``op``: ``"item"`` (a node at ``level``, 1-based as ``aria-level``), ``"open"`` (its children
    begin), ``"close"`` (they end)."""

    op: Literal["item", "open", "close"]
    node: Node | None = None
    level: int = 0
    #: position among siblings (1-based) and how many siblings (``aria-posinset`` / ``aria-setsize``)
    position: int = 0
    siblings: int = 0


@dataclass(frozen=True)
class Summary:
    """What a live update says about a task's tokens: the revoked ids (own or inherited) and how many are live."""

    revoked: tuple[str, ...]
    live: int
    expired: int
    total: int


def _binding(token: IssuedToken) -> tuple[str, str]:
    names = [name for name, value in (("dpop", token.jkt), ("mtls", token.x5t)) if value]
    prints = [value for value in (token.jkt, token.x5t) if value]
    return ("+".join(names) or "bearer", " ".join(prints))


def _order(token: IssuedToken) -> tuple[int, str]:
    return (token.iat, token.jti)


def build_forest(tokens: Sequence[IssuedToken], *, now: float) -> list[Node]:
    """The trees the rows form, roots and children oldest first (``iat``, then ``jti``): stable whatever the input order.

    A token is ``revoked`` if it or an ancestor has ``revoked_at``; else ``expired`` if ``exp <= now``; else ``live``.
    Duplicate ids keep the first row; a self-parent or a cycle is broken where the walk enters it."""
    rows: dict[str, IssuedToken] = {}
    for token in tokens:
        rows.setdefault(token.jti, token)
    ordered = sorted(rows.values(), key=_order)
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for token in ordered:
        parent = token.parent_jti
        if parent is not None and parent in rows and parent != token.jti:
            children.setdefault(parent, []).append(token.jti)
        else:
            roots.append(token.jti)
    # Top-down: who is reached from which root, and whether an ancestor is revoked.
    cut: dict[str, bool] = {}
    tops: list[str] = []
    pending = list(roots)
    for token in ordered:  # a cycle has no root: enter it at its oldest member
        pending.append(token.jti)
    for start in pending:
        if start in cut:
            continue
        tops.append(start)
        stack = [(start, False)]
        while stack:
            jti, above = stack.pop()
            if jti in cut:
                continue
            cut[jti] = above
            down = above or rows[jti].revoked_at is not None
            stack.extend((child, down) for child in reversed(children.get(jti, [])) if child not in cut)
    # Bottom-up: build frozen nodes, each child attached under the parent that reached it first.
    owner: dict[str, list[str]] = {}
    seen: set[str] = set()
    order: list[str] = []
    for top in tops:
        stack2 = [top]
        seen.add(top)
        while stack2:
            jti = stack2.pop()
            order.append(jti)
            kept = [child for child in children.get(jti, []) if child not in seen]
            seen.update(kept)
            owner[jti] = kept
            stack2.extend(reversed(kept))
    built: dict[str, Node] = {}
    for jti in reversed(order):
        token = rows[jti]
        binding, thumbprint = _binding(token)
        if token.revoked_at is not None or cut[jti]:
            state: State = REVOKED
        elif token.exp <= now:
            state = EXPIRED
        else:
            state = LIVE
        built[jti] = Node(
            jti=token.jti,
            kind=token.kind,
            aud=token.aud,
            scope=tuple(sorted(token.scope.split())),
            iat=token.iat,
            exp=token.exp,
            depth=token.depth,
            binding=binding,
            thumbprint=thumbprint,
            holder=token.sub,
            actor=token.client_id if token.client_id and token.client_id != token.sub else None,
            state=state,
            inherited=token.revoked_at is None and cut[jti],
            orphan=token.parent_jti is not None and token.parent_jti not in rows,
            parent_jti=token.parent_jti,
            revoked_at=token.revoked_at,
            children=tuple(built[child] for child in owner[jti]),
        )
    return [built[top] for top in tops]


def walk(forest: Sequence[Node]) -> Iterator[Step]:
    """Depth-first steps (iterative): ``item`` for each node, ``open``/``close`` around its children."""
    stack: list[tuple[Sequence[Node], int, int]] = [(forest, 0, 1)]
    while stack:
        nodes, index, level = stack.pop()
        if index >= len(nodes):
            if level > 1:
                yield Step("close", level=level)
            continue
        node = nodes[index]
        stack.append((nodes, index + 1, level))
        yield Step("item", node, level, index + 1, len(nodes))
        if node.children:
            yield Step("open", level=level + 1)
            stack.append((node.children, 0, level + 1))


def summarize(forest: Sequence[Node]) -> Summary:
    """Revoked ids (sorted), live and expired counts over every node of ``forest``."""
    revoked: list[str] = []
    live = expired = total = 0
    for step in walk(forest):
        if step.node is None:
            continue
        total += 1
        if step.node.state == REVOKED:
            revoked.append(step.node.jti)
        elif step.node.state == EXPIRED:
            expired += 1
        else:
            live += 1
    return Summary(tuple(sorted(revoked)), live, expired, total)
