"""Request-time Cedar decisions with hot reload, shadow mode and fail-closed errors.

``PolicyEngine.authorize`` runs for every exchange, task creation, admin call and (at resource
servers and the gateway) every request. It reloads when the directory changes, keeping the
previous set if the new one fails (``last_error``). Cedar skips a policy that errors, which
could turn a ``forbid`` into an allow, so any evaluation error denies. Shadow policies never
change the enforced decision; the ``Decision`` carries both for the audit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from tether.errors import PolicyUnavailable
from tether.lru import LruCache
from tether.policy.entities import PolicyRequest
from tether.policy.loader import PolicyLoadError, PolicyVersion, directory_fingerprint, load_directory, load_texts
from tether.policy.watch import DirectoryWatch

__all__ = ["Decision", "PolicyEngine"]

log = logging.getLogger("tether.policy")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    version: str
    determining: tuple[str, ...]
    errors: tuple[str, ...] = ()
    mode: str = "enforce"
    shadow_allowed: bool | None = None
    shadow_determining: tuple[str, ...] = ()
    #: the approver groups of the determining permits annotated ``@approval`` (``rules.approval``):
    #: when not empty, an allowed request is held until a human in every one of them says yes
    approval: tuple[str, ...] = ()
    #: the determining ``@approval`` policies, and whether one lets the task's creator approve
    approval_policies: tuple[str, ...] = ()
    creator_may_approve: bool = False

    def audit(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "version": self.version,
            "decision": "allow" if self.allowed else "deny",
            "determining": list(self.determining),
            "mode": self.mode,
        }
        if self.errors:
            record["errors"] = list(self.errors)
        if self.approval:
            record["approval"] = list(self.approval)
        if self.shadow_allowed is not None:
            record["shadow"] = {
                "decision": "allow" if self.shadow_allowed else "deny",
                "determining": list(self.shadow_determining),
            }
        return record


_CACHE_SIZE = 8192
_MEMO_SIZE = 4096


def _evaluate(cedar_request: dict[str, Any], entities: Any, policy_set: Any) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    result = cedarpy.is_authorized(cedar_request, policy_set, entities)
    errors = tuple(str(e) for e in result.diagnostics.errors)
    allowed = result.decision == cedarpy.Decision.Allow and not errors
    return allowed, tuple(result.diagnostics.reasons), errors


def _reduced(request: PolicyRequest, attributes: frozenset[str] | None) -> dict[str, Any]:
    cedar = request.cedar()
    if attributes is not None:
        cedar["context"] = {k: v for k, v in request.context.items() if k in attributes}
    return cedar


class PolicyEngine:
    def __init__(self, directory: Path | None = None, *, mode: str = "enforce") -> None:
        if mode not in ("enforce", "shadow"):
            raise ValueError("policy mode must be `enforce` or `shadow`")
        self.directory = directory
        self.mode = mode
        self.current: PolicyVersion | None = None
        self.last_error: PolicyLoadError | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._watch = DirectoryWatch(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Decision] = OrderedDict()
        self._memo: LruCache[tuple[str, str, Hashable], tuple[Decision, dict[str, Any]]] = LruCache(_MEMO_SIZE)
        self.decisions = 0
        self.denials = 0
        self.cache_hits = 0
        if directory is not None:
            self.refresh()

    # -- loading ------------------------------------------------------------------
    def refresh(self) -> bool:
        """Reload if the directory changed; True when a new set was installed."""
        if self.directory is None or self._watch is None:
            return False
        if not self._watch.changed():
            return False
        fingerprint = directory_fingerprint(self.directory)
        if fingerprint == self._fingerprint:
            return False
        with self._lock:
            if fingerprint == self._fingerprint:
                return False
            self._fingerprint = fingerprint
            try:
                version = load_directory(self.directory)
            except PolicyLoadError as exc:
                self.last_error = exc
                log.error("policy set refused, keeping version %s: %s", self.version, exc)
                return False
            return self._install(version)

    def install_texts(self, files: Mapping[str, str]) -> bool:
        """Install a policy set pushed by the STS (same validation as a directory)."""
        try:
            version = load_texts(files)
        except PolicyLoadError as exc:
            self.last_error = exc
            log.error("pushed policy set refused, keeping version %s: %s", self.version, exc)
            return False
        with self._lock:
            return self._install(version)

    def _install(self, version: PolicyVersion) -> bool:
        changed = self.current is None or self.current.version != version.version
        self.current = version
        self.last_error = None
        if changed:  # the same version (content hash) decides the same: its cached decisions stand
            self._cache = OrderedDict()
            self._memo = LruCache(_MEMO_SIZE)
            log.info(
                "policy set %s loaded: %d policies (%d shadow)", version.version, len(version.policies), len(version.shadow_ids)
            )
        return changed

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    # -- deciding -----------------------------------------------------------------
    def authorize(self, request: PolicyRequest) -> Decision:
        """Decide ``request``; identical requests under one policy version share a cached decision.

        Cedar evaluation is a pure function of the policy set, the request and the entities,
        and the cache key holds all three (the context reduced to what policies read), so a
        cached decision is exactly the one Cedar would compute again.
        """
        self.refresh()
        current = self.current
        if current is None:
            raise PolicyUnavailable(f"no valid policy set is loaded: {self.last_error}")
        cedar_request = _reduced(request, current.context_attributes)
        # a digest, not the text: a request path can be long (up to the server's URL limit),
        # and an entry-bounded cache of full texts would let one caller pin a lot of memory
        key = hashlib.sha256(
            (current.version + self.mode + json.dumps([cedar_request, request.entities], sort_keys=True)).encode()
        ).digest()
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(current, cedar_request, request.entities)
            self._cache[key] = decision
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self.cache_hits += 1
        self._account(request.describe(), decision)
        return decision

    def authorize_memo(self, key: Hashable, build: Callable[[], PolicyRequest]) -> Decision:
        """``authorize(build())``, remembered under ``key`` for the policy version in force.

        ``key`` must determine the request completely (``entities.ExchangeQuestion.key``
        is the one for ``exchange_request``); a hit skips building the entities and
        hashing them, and a new policy version starts with an empty memo.
        """
        self.refresh()
        current = self.current
        if current is None:
            raise PolicyUnavailable(f"no valid policy set is loaded: {self.last_error}")
        memo_key = (current.version, self.mode, key)
        hit = self._memo.get(memo_key)
        if hit is not None:
            decision, described = hit
            self.cache_hits += 1
            self._account(described, decision)
            return decision
        request = build()
        decision = self.authorize(request)
        if decision.version == current.version:  # not if a reload happened in between
            self._memo.put(memo_key, (decision, request.describe()))
        return decision

    def _decide(self, current: PolicyVersion, cedar_request: dict[str, Any], entities: Any) -> Decision:
        allowed, reasons, errors = _evaluate(cedar_request, entities, current.enforced)
        shadow_allowed: bool | None = None
        shadow_reasons: tuple[str, ...] = ()
        if self.mode == "shadow":
            if current.full is not None:
                shadow_allowed, shadow_reasons, _ = _evaluate(cedar_request, entities, current.full)
            else:
                shadow_allowed, shadow_reasons = allowed, reasons
            allowed, reasons = True, ()
        elif current.full is not None:
            shadow_allowed, shadow_reasons, _ = _evaluate(cedar_request, entities, current.full)
        held = [current.approvals[r] for r in reasons if r in current.approvals] if allowed else []
        return Decision(
            allowed=allowed,
            version=current.version,
            determining=reasons,
            errors=errors,
            mode=self.mode,
            shadow_allowed=shadow_allowed,
            shadow_determining=shadow_reasons,
            approval=tuple(sorted({p.approval for p in held if p.approval is not None})),
            approval_policies=tuple(sorted(p.id for p in held)),
            creator_may_approve=bool(held) and all(p.creator_may_approve for p in held),
        )

    def _account(self, described: Mapping[str, Any], decision: Decision) -> None:
        self.decisions += 1
        if not decision.allowed:
            self.denials += 1
        if decision.errors:
            log.error("policy evaluation error (denied, fail closed) for %s: %s", described, "; ".join(decision.errors))
        if decision.shadow_allowed is False and decision.allowed:
            log.warning("shadow policy would deny %s: %s", described, ", ".join(decision.shadow_determining) or "no permit")
