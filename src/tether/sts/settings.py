"""The STS's view of the configuration: plain values, resolved once at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from tether.config import Config
from tether.config.approvers import ApproverGroup
from tether.config.federation import FederationPeer
from tether.config.sections import ApprovalSettings
from tether.rules.exchange import Limits
from tether.rules.namespace import Namespace
from tether.rules.scope import parse_scope
from tether.rules.task import TaskLimits

__all__ = ["StsSettings"]


@dataclass(frozen=True)
class StsSettings:
    issuer: str
    limits: Limits = field(default_factory=Limits)
    task_limits: TaskLimits = field(default_factory=TaskLimits)
    admin_principals: frozenset[str] = frozenset({"spiffe://tether.local/admin"})
    admin_scope: frozenset[str] = frozenset({"tether:admin"})
    admin_ttl: int = 300
    skew: int = 10
    dpop_algs: tuple[str, ...] = ("ES256", "ES384", "EdDSA", "PS256", "RS256")
    dpop_max_age: int = 60
    nonce: bool = True
    nonce_ttl: int = 120
    resources: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    publish_policies: bool = True
    #: the identity sources' disjoint namespaces of principal names (``tether.rules.namespace``)
    namespaces: tuple[Namespace, ...] = ()
    #: unattributed refusals: one audit record per source, kind and error each this many seconds
    refusal_interval: int = 60
    refusal_buckets: int = 1000
    #: TLS terminators whose RFC 9440 ``Client-Cert`` headers are believed (``[tls] trusted_proxies``)
    trusted_proxies: tuple[str, ...] = ()
    #: held requests and their approvers (``[approvals]``, ``[[approver_groups]]``; ``rules.approval``)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    approver_groups: tuple[ApproverGroup, ...] = ()
    #: ``[[federation]]`` peers whose agents are accepted within a ceiling (``sts.federation``)
    federation: tuple[FederationPeer, ...] = ()

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def max_token_lifetime(self) -> int:
        """No tether token lives longer than this (a longer-lived one is refused; a retired key is kept this long)."""
        return max(self.limits.session_ttl, self.limits.hop_ttl, self.admin_ttl)

    @classmethod
    def from_config(cls, config: Config) -> StsSettings:
        tokens, dpop, tasks = config.tokens, config.dpop, config.tasks
        return cls(
            issuer=config.issuer,
            limits=Limits(session_ttl=tokens.session_ttl, hop_ttl=tokens.hop_ttl),
            task_limits=replace(  # a default above its maximum is the maximum
                tasks,
                default_max_depth=min(tasks.default_max_depth, tasks.max_depth),
                default_max_tokens=min(tasks.default_max_tokens, tasks.max_tokens),
            ),
            admin_principals=frozenset(config.admin.principals),
            admin_scope=parse_scope(config.admin_scope),
            admin_ttl=tokens.admin_ttl,
            skew=tokens.clock_skew,
            dpop_algs=dpop.algorithms,
            dpop_max_age=dpop.max_age,
            nonce=dpop.nonce,
            nonce_ttl=dpop.nonce_ttl,
            resources={r.uri: frozenset(r.principals) for r in config.resources},
            tags={r.uri: r.tags for r in config.resources},
            publish_policies=config.policy.publish,
            namespaces=config.namespaces,
            refusal_interval=config.audit.refusal_interval,
            refusal_buckets=config.audit.refusal_buckets,
            trusted_proxies=tuple(config.tls.trusted_proxies),
            approvals=config.approvals,
            approver_groups=config.approver_groups,
            federation=config.federation,
        )
