"""The Store protocol: what the STS needs from storage, as atomic steps.

Security-critical writes are single primitives, never a read followed by a write:
``issue_token`` spends the ``jti``, takes one of ``max_tokens``, records lineage and audits in
one transaction; ``first_use`` inserts if absent; ``end_task`` revokes and publishes in one
step. One conformance suite (``tests/store``) holds every backend to the answers written here.
Any failure is ``StoreUnavailable``, never a driver's exception; a block names a principal
whatever its kind; lists of ids are in code-point order, whatever the collation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tether.audit.chain import AuditEvent, AuditRecord
from tether.model import Approval, ApprovalStatus, Task, TaskState
from tether.rules.replay_epoch import ReplayEpoch
from tether.store.recent import RecentAudit
from tether.store.records import (
    AgentHolding,
    AuditMark,
    AuditPage,
    Block,
    BlockKind,
    FederationLink,
    IssuedToken,
    LookupResult,
    Revocation,
    StoredKey,
    VaultEntry,
)

__all__ = ["TAIL_PAGE", "Issuance", "Store"]

# Readers that tail the audit chain while tokens are being issued (the monitor, the
# checkpoint writer) read pages this small and yield between them: one page is a few
# milliseconds of decoding, never a stall every request in flight waits behind.
TAIL_PAGE = 100


@dataclass(frozen=True)
class Issuance:
    """The arguments of one ``Store.issue_token``, handed to the backend whole."""

    token: IssuedToken
    spends: Sequence[tuple[str, int]]
    audit: AuditEvent
    replay: tuple[str, int] | None
    principals: Sequence[str]
    vouch: Callable[[ReplayEpoch], bool] | None


class Store(Protocol):
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless reads and writes can be served."""
        ...

    async def aclose(self) -> None: ...

    # -- signing keys -------------------------------------------------------------
    async def signing_keys(self, *, now: float) -> list[StoredKey]:
        """All keys not yet past ``not_after``, newest first."""
        ...

    async def add_signing_key(self, key: StoredKey, *, retired: Sequence[StoredKey]) -> None:
        """Add ``key`` as current and write ``retired`` (each current key, re-sealed with its retired state).

        One step: ``retired`` must be exactly the keys current at that moment, else
        ``Conflict`` (a concurrent rotation) and nothing is written.
        """
        ...

    # -- tasks --------------------------------------------------------------------
    async def create_task(self, task: Task, audit: AuditEvent) -> None:
        """Insert the task and its audit record; ``Blocked`` if its agent or subject (``on_behalf_of``) is blocked."""
        ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def list_tasks(
        self,
        *,
        state: TaskState | None,
        agent: str | None,
        now: float,
        limit: int,
        audience: str | None = None,
        after: str | None = None,
    ) -> list[Task]:
        """Newest first (ties by id); ``audience``: tasks that allow exactly that audience; ``after``:
        the page after the task with that id (keyset pagination; an unknown id yields no rows)."""
        ...

    async def count_tasks(self, *, now: float) -> dict[TaskState, int]:
        """How many tasks are in each effective state (an active task past its cap counts as expired); every state present."""
        ...

    async def task_tokens(self, task_id: str, *, limit: int) -> list[IssuedToken]:
        """The tokens bound to ``task_id`` (its lineage), oldest first (``iat``, then ``jti``), at most ``limit``."""
        ...

    async def agent_holdings(self, *, now: float, limit: int) -> list[AgentHolding]:
        """Agents with live tasks: how many live tasks and live tokens each; most tokens first (ties by agent)."""
        ...

    async def end_task(self, task_id: str, state: TaskState, *, now: float, audit: AuditEvent) -> Task:
        """Move an active task to ``state`` and revoke every token bound to it.

        Raises ``NotFound`` or ``TaskNotActive``.
        """
        ...

    async def expire_tasks(self, *, now: float) -> list[str]:
        """Mark active tasks past their hard cap as expired; returns their ids, sorted."""
        ...

    # -- linked tasks (federation) ----------------------------------------------------
    async def link_task(self, task: Task, link: FederationLink, *, now: float, audit: AuditEvent) -> Task:
        """Open ``task`` as the linked task of ``link.foreign_task`` from ``link.peer``, or join the one open.

        One step: if an *active* task (state active, before its hard cap) is already linked to
        ``(link.peer, link.foreign_task)`` with agent ``task.agent``, that task is returned and
        ``task`` is not created; else ``task`` is inserted (``Blocked`` if its agent or subject is
        blocked, as ``create_task``). Either way a link row ``(peer, foreign_task, foreign_jti,
        the returned task's id, created_at)`` is written (``link.task_id`` is replaced by it) and
        ``audit`` is appended with ``task`` set to that id and ``detail.joined`` saying which
        happened. ``Conflict`` (nothing written) if ``(peer, foreign_jti)`` was linked before.
        Concurrent calls for one foreign task and agent leave one active linked task.
        """
        ...

    async def linked_tasks(self, peer: str, *, foreign_task: str | None = None, foreign_jti: str | None = None) -> list[str]:
        """Ids of the tasks linked to ``peer``'s ``foreign_task`` or opened/joined from its ``foreign_jti``
        (either filter matching suffices; neither: every task linked from ``peer``), in any state,
        distinct and sorted. What a follower of the peer's revocation feed ends when the peer
        revokes that task or token."""
        ...

    # -- tokens -------------------------------------------------------------------
    async def lookup(self, *, task_id: str | None, jti: str | None, principals: Sequence[str]) -> LookupResult:
        """The task, the stored token, and whether any of ``principals`` or the task's agent or subject is blocked."""
        ...

    async def issue_token(
        self,
        token: IssuedToken,
        *,
        now: float,
        spends: Sequence[tuple[str, int]],
        audit: AuditEvent,
        replay: tuple[str, int] | None = None,
        principals: Sequence[str] = (),
        vouch: Callable[[ReplayEpoch], bool] | None = None,
    ) -> None:
        """Record an issued token atomically, or nothing at all, except that a checked proof stays spent.

        First ``replay`` (a DPoP proof key) is checked and spent: ``Replayed`` if it was
        already spent, and nothing else is done. A store whose replay cache can lose keys
        (Redis) also refuses, with ``PredatesReplayCache`` and after spending it, a proof
        ``vouch`` rejects for the cache's current epoch (``ProofChecker.admits``,
        ``rules.replay_epoch``); ``None`` skips that check. Once spent it **stays spent whatever
        happens next**: an issuance refused below leaves the proof unusable (RFC 9449
        §11.1, a proof is accepted at most once), as it would on a replica that had
        already seen it (if the store itself fails, the mark may or may not remain:
        nothing is issued either way). Then, in one step that any refusal undoes entirely, checked in
        this order: ``spends`` (identity ``jti`` marks) must be unspent
        (``AlreadySpent``); the parent must exist unrevoked (``ParentRevoked``); none of
        ``principals``, ``token.sub`` or ``token.client_id`` may be blocked
        (``Blocked``); the task must still be active (``TaskNotActive``, whose text is
        the state) and below ``max_tokens`` (``CapReached``), and its count goes up by
        one. A refused issuance leaves every identity mark of ``spends`` unspent. This
        is the authority: callers may decide from cached task definitions because every
        mutable fact is re-checked here.
        """
        await self._issue(Issuance(token, spends, audit, replay, principals, vouch), now=now)

    async def _issue(self, issuance: Issuance, *, now: float) -> None:
        """``issue_token`` as each backend implements it (the backends subclass ``Store``)."""
        ...

    async def get_token(self, jti: str) -> IssuedToken | None: ...

    async def revoke_tree(self, jti: str, *, now: float, audit: AuditEvent) -> list[str]:
        """Revoke the token and every token derived from it; returns the jtis newly revoked, sorted."""
        ...

    # -- kill switch --------------------------------------------------------------
    async def block(self, kind: BlockKind, value: str, *, now: float, audit: AuditEvent) -> list[str]:
        """Refuse new exchanges for a principal, end its active tasks and revoke its tokens; returns the task ids, sorted."""
        ...

    async def unblock(self, kind: BlockKind, value: str, *, now: float, audit: AuditEvent) -> bool: ...

    async def list_blocks(self, *, limit: int) -> list[Block]:
        """The kill switch's entries, newest first (ties by kind, value)."""
        ...

    async def spend(self, key: str, *, until: int, now: float) -> bool:
        """Mark a single-use key (the same namespace ``issue_token`` spends); False if already spent."""
        ...

    async def spent(self, key: str, *, now: float) -> bool:
        """Whether ``key`` is spent (and not yet past its mark); reads only, for attributing refusals."""
        ...

    # -- replay cache -------------------------------------------------------------
    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        """True exactly once per ``key`` before ``until`` (DPoP proof ``jti``, RFC 9449 §11.1)."""
        ...

    # -- revocation feed ----------------------------------------------------------
    async def revocations_after(self, seq: int, *, now: float, limit: int) -> list[Revocation]:
        """Feed entries with ``seq`` greater than ``seq`` whose ``exp`` has not passed, in ``seq`` order.

        The feed's order is its commit order: once an entry is visible, no entry with a
        smaller ``seq`` can appear later, so a follower that keeps the last ``seq`` it saw
        as its cursor never skips one.
        """
        ...

    def revocation_generation(self) -> int:
        """A counter that changes whenever a revocation is published (read it before querying)."""
        ...

    async def wait_for_revocations(self, *, since: int, timeout: float) -> bool:
        """Wait until the generation differs from ``since`` (True) or ``timeout`` passes (False)."""
        ...

    async def purge_expired(self, *, now: float) -> None:
        """Drop single-use marks, replay entries and feed entries that can no longer matter."""
        ...

    # -- vault --------------------------------------------------------------------
    async def vault_put(self, name: str, sealed: bytes, *, version: int, now: float, audit: AuditEvent) -> VaultEntry:
        """Store a sealed secret as exactly ``version`` (1 for a new entry, created at ``now``).

        A replacement (rotation) must name the stored version plus one, else ``Conflict`` and
        nothing is written: the caller sealed the value for that version (``keys.sealed.vault_aad``).
        """
        ...

    async def vault_get(self, name: str) -> VaultEntry | None: ...

    async def vault_list(self) -> list[VaultEntry]:
        """Every entry, by name."""
        ...

    async def vault_delete(self, name: str, *, now: float, audit: AuditEvent) -> bool: ...

    async def mcp_pin_latest_audit(self, route: str) -> AuditRecord | None:
        """The ``mcp.pinned`` audit record whose ``detail.route`` is ``route`` naming the newest
        approval (highest ``detail.pinned_at``; then the newest record). Ordered by the approval's
        time, not by position, as ``vault_latest_audit``: a database writer can append a record
        naming an older approval, never lower the newest one recorded. A partial-index lookup."""
        ...

    async def vault_latest_audit(self, name: str) -> AuditRecord | None:
        """The ``vault.put`` or ``vault.rotated`` audit record whose ``detail.name`` is ``name``
        naming the newest state (highest ``created_at``, then ``version``; then the newest record).

        Ordered by the state, not by position: the chain is unkeyed until a checkpoint signs it,
        so a database writer can append a record naming an older state; it can never make the
        greatest state recorded smaller without rewriting a real record (a broken chain).

        An index lookup (a partial index over the vault's records, keyed by name), never a
        scan of the chain: the gateway asks on every cache miss, to refuse a vault row older
        than the newest state the hash-chained audit log says was stored.
        """
        ...

    async def rewrap_sealed(self, rewrap: Callable[[str, str, bytes], bytes], *, now: float, audit: AuditEvent) -> int:
        """Re-seal every sealed blob (vault entries ``"vault"``, signing keys ``"key"``) in one transaction.

        ``rewrap(kind, id, blob)`` returns the blob wrapped under the new master key; used
        to rotate the master key without re-entering any secret.
        """
        ...

    # -- counters -----------------------------------------------------------------
    async def count(self, key: str, *, until: int, now: float) -> int:
        """Add one to a fixed-window counter; returns the new value.

        The call that starts a window sets its end, ``until``; later calls count in it
        whatever ``until`` they pass, and the first call after it ends starts a new one.
        """
        ...

    async def first_seen(self, key: str, *, now: float, until: int) -> float:
        """The time ``key`` was first seen (``now`` if never, remembered until ``until``)."""
        ...

    # -- approvals (``rules.approval``) -----------------------------------------------
    async def hold_approval(self, approval: Approval, *, now: float, max_pending: int, audit: AuditEvent) -> Approval:
        """Record a held request and its ``audit`` (``approval.requested``) in one step; returns the stored approval.

        Idempotent per request: if the task already has a *pending, unexpired* approval with the
        same ``digest``, that one is returned and nothing is written (a retried request waits on
        the same approval, never a second one). Otherwise ``CapReached`` if the task already has
        ``max_pending`` pending, unexpired approvals, and nothing is written.
        """
        ...

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def list_approvals(
        self, *, status: ApprovalStatus | None, task: str | None, now: float, limit: int, before: str | None = None
    ) -> list[Approval]:
        """Newest first (by ``created_at``, then id descending); ``before`` is an id to page from (exclusive).

        ``status`` filters by the *effective* status: ``PENDING`` excludes approvals past their
        expiry, ``EXPIRED`` includes them, whether or not a sweep has marked them yet."""
        ...

    async def decide_approval(self, decided: Approval, *, now: float, audit: AuditEvent) -> Approval:
        """Write a decision (``decided``: the stored approval with status, decider, time, uses,
        window and ``decision_mac`` set) and its audit record, in one step.

        Only if the stored approval is still pending and ``now`` is before its expiry: else
        ``NotFound`` (no such id) or ``Conflict`` (already decided or expired), and nothing is
        written. Only the decision fields are written; what was asked stays as stored.
        """
        ...

    async def expire_approvals(
        self, *, now: float, audit: Callable[[Approval], AuditEvent], limit: int = 1000
    ) -> list[Approval]:
        """Mark pending approvals past their expiry as expired, each with its ``audit(approval)``
        record (``approval.expired``), in one step; returns them as now stored, oldest expiry
        first, at most ``limit``."""
        ...

    async def reseal_approvals(
        self, reseal: Callable[[Approval], tuple[str, str] | None], *, now: float, audit: AuditEvent
    ) -> int:
        """Re-seal every approval (pending, decided or expired) in one transaction, with one
        ``audit`` record: ``tether master-key rotate``, whose approval MAC key (derived from the
        master key, ``rules.approval_seal``) changes with it.

        ``reseal(approval)`` returns the new ``(request_mac, decision_mac)``, or None to leave the
        row as it is (its MACs did not verify under the old key: it stays refused as tampered).
        Only the two MAC columns are written; returns how many rows were re-sealed. An exception
        from ``reseal`` writes nothing.
        """
        ...

    # -- policy versions --------------------------------------------------------
    async def record_policy_version(self, version: str, files: Mapping[str, str], *, now: float) -> bool:
        """Remember a loaded policy set (first load wins); True if it was new."""
        ...

    async def policy_versions(self, *, limit: int) -> list[tuple[str, float]]:
        """``(version, first loaded at)``, newest first."""
        ...

    # -- audit --------------------------------------------------------------------
    async def append_audit(self, event: AuditEvent, *, now: float) -> AuditRecord: ...

    async def audit_records(self, *, after: int, limit: int) -> list[AuditRecord]: ...

    #: what this process appended and saw committed (``tether.store.recent``)
    recent: RecentAudit

    async def audit_tail(self, *, after: int, limit: int) -> list[AuditRecord]:
        """``audit_records``' page for a reader following the head (the monitor): the run of
        records this process appended comes from memory, the rest of the page from the store.
        Never what a verifier reads (``audit_records``): a check of the stored chain must read
        what is stored."""
        run = self.recent.run(after=after, limit=limit)
        if len(run) == limit:
            return run
        return run + await self.audit_records(after=run[-1].seq if run else after, limit=limit - len(run))

    async def search_audit(
        self,
        *,
        task: str | None = None,
        principal: str | None = None,
        kind: str | None = None,
        before: int | None = None,
        limit: int,
        scan: int = 100_000,
    ) -> AuditPage:
        """Records matching every filter given, newest first, with ``seq`` below ``before``.

        ``kind`` is exact, or a prefix when it ends in ``.`` (``approval.``). At most ``scan`` records
        are examined (audit ``seq`` has no gaps: the newest ``scan`` below ``before`` are one range; an
        index on task would cost every exchange's audit append ~6 %), except ``alert.raised``, which a
        partial index finds wherever it is; ``next_before`` says where the next page starts (the
        ``seq`` of the last match when ``limit`` was reached, else the lowest examined, ``None`` at the log's start).
        """
        ...

    async def audit_counts(self, *, after: int, scan: int) -> dict[tuple[str, str, str], int]:
        """``(kind, outcome, error or "")`` → how many records with ``seq`` above ``after``
        (at most ``scan`` of the newest are examined)."""
        ...

    async def audit_marks(self, *, after: int, limit: int) -> list[AuditMark]:
        """``seq``, ``ts``, ``kind`` and ``hash`` of the records after ``after`` (and the JWS of checkpoints)."""
        ...
