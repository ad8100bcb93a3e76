"""Wire a running STS from configuration: store, master key, keyring, identity, proofs, policy.

``build_sts`` checks everything that can be checked without I/O (configuration, master
key, policy set) so a bad deployment fails before it binds a port. ``Sts.start`` opens
the store and loads the keyring inside the event loop that will serve requests (an
async connection pool belongs to one loop); the app's lifespan calls it, and
``tether serve`` calls it first so store errors are reported before serving.
"""

from __future__ import annotations

import contextlib
import logging

import httpx
from starlette.applications import Starlette

from tether.audit.chain import AuditEvent
from tether.clock import Clock, SystemClock
from tether.config import Config
from tether.errors import ConfigError
from tether.federation.follower import FederationFeeds, check_feed_identities
from tether.identity.approvers import ApproverVerifier
from tether.identity.verifier import build_identity_verifier
from tether.identity.x509 import CertificateAuthenticator
from tether.keys.keyring import KeyRing, check_not_older, load_keyring
from tether.keys.sealed import SealError, derive_key, load_master_key
from tether.localstate import LocalState
from tether.metrics import count_epoch_refusal
from tether.monitor.runner import Monitor, build_monitor
from tether.policy.engine import PolicyEngine
from tether.proofs import ProofChecker
from tether.store.errors import StoreError
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.sts.app import create_app
from tether.sts.approval_webhook import ApprovalWebhook
from tether.sts.checkpoints import AuditCheckpoints
from tether.sts.context import StsContext
from tether.sts.effective import effective_settings, override_event, overrides_shown, security_relevant
from tether.sts.settings import StsSettings
from tether.sts.vault_values import VaultValues

__all__ = ["Sts", "build_sts"]

log = logging.getLogger("tether.sts")


class Sts:
    """A configured STS; its ``ctx`` exists once ``start`` has run in the serving loop."""

    def __init__(self, config: Config, *, clock: Clock, master: bytes, policy: PolicyEngine, upkeep: bool,
                 store: Store | None = None) -> None:  # fmt: skip
        self.config = config
        self.clock = clock
        self.master_key = master
        self.policy = policy
        self.settings = StsSettings.from_config(config)
        self._store = store
        self._upkeep = upkeep
        self._ctx: StsContext | None = None
        #: the audit-stream monitor (``[monitor]``), running while the STS serves
        self.monitor: Monitor | None = None
        #: the followers of the ``[[federation]]`` peers' revocation feeds (``ctx.federation``)
        self.federation: FederationFeeds | None = None
        self._http: httpx.AsyncClient | None = None
        #: ``[approvals] webhook_url``: each held request announced with one-time links (``ctx.on_hold``)
        self.approval_webhook: ApprovalWebhook | None = None
        self._recorded_policy: str | None = None
        self._refused_policy: list[str] = []
        self.checkpoints = AuditCheckpoints(every=config.audit.checkpoint_every, seconds=config.audit.checkpoint_seconds,
                                            data_dir=config.data_dir)  # fmt: skip
        #: the newest signing key this STS has used, kept outside the store (``keys.keyring.check_not_older``)
        self.key_state = LocalState(config.data_dir / "keyring.state")
        self.app: Starlette = create_app(self, upkeep=upkeep, max_inflight=config.server.max_inflight)

    @property
    def ctx(self) -> StsContext:
        if self._ctx is None:
            raise RuntimeError("the STS has not started yet")
        return self._ctx

    async def start(self) -> StsContext:
        if self._ctx is not None:
            return self._ctx
        store = self._store or await open_store(self.config)
        try:
            keyring = await self._keyring(store)
        except BaseException:
            await store.aclose()
            raise
        self._http = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(5.0), trust_env=False)
        settings = self.settings
        nonce_key = derive_key(self.master_key, "dpop-nonce")
        proofs = ProofChecker(
            store,
            self.clock,
            nonce_key=nonce_key if settings.nonce else None,
            challenge_key=nonce_key,
            algorithms=settings.dpop_algs,
            max_age=settings.dpop_max_age,
            skew=settings.skew,
            nonce_ttl=settings.nonce_ttl,
        )
        proofs.on_epoch_refusal = count_epoch_refusal
        await proofs.start()
        self._ctx = StsContext(
            settings=settings,
            store=store,
            keyring=keyring,
            identity=build_identity_verifier(self.config, self._http),
            proofs=proofs,
            clock=self.clock,
            policy=self.policy,
            effective=effective_settings(self.config),
            certificates=CertificateAuthenticator.from_config(self.config),
            approval_key=derive_key(self.master_key, "approvals"),
            link_key=derive_key(self.master_key, "approval-links"),
            console_key=derive_key(self.master_key, "console"),
            approvers=ApproverVerifier.from_config(self.config, self._http),
            vault_values=VaultValues(store, self.master_key).values,
            http=self._http,
        )
        if settings.approvals.webhook_url:
            self.approval_webhook = ApprovalWebhook.for_context(self._ctx)
            self.approval_webhook.start()
            self._ctx.on_hold = self.approval_webhook
        await self._record_overrides(store)
        await self.record_policy()
        if self._upkeep and self.config.monitor.enabled:
            self.monitor = build_monitor(self.config, store, self.clock)
            await self.monitor.start()
            self._ctx.risk = self.monitor.risk
        if self._upkeep and self.config.federation:
            self.federation = FederationFeeds.for_config(self.config, self._ctx, self._http, self.master_key)
            self.federation.start()
            self._ctx.federation = self.federation
        return self._ctx

    async def _record_overrides(self, store: Store) -> None:
        """A security-relevant ``TETHER_*`` override is a warning and a ``config.override`` record; others are info."""
        for key, shown in overrides_shown(self.config).items():
            level = logging.WARNING if security_relevant(key) else logging.INFO
            log.log(level, "configuration override: %s sets %s = %r (not what tether.toml says)", shown["env"], key,
                    shown["value"])  # fmt: skip
        event = override_event(self.config)
        if event is not None:
            await store.append_audit(event, now=self.clock.now())

    async def _keyring(self, store: Store) -> KeyRing:
        try:
            ring = await load_keyring(store, self.master_key, now=self.clock.now())
            check_not_older(ring, self.key_state)
            return ring
        except SealError as exc:
            raise ConfigError(
                "master_key",
                f"cannot open the signing keys: {exc} (keys sealed by an older release: run `tether keys upgrade` once)",
            ) from exc
        except LookupError as exc:
            raise ConfigError("keys", f"{exc} (keys sealed by an older release: run `tether keys upgrade` once)") from exc

    async def reload_keys(self) -> None:
        """Pick up a rotation made elsewhere; a keyring that fails its checks leaves the current one in use."""
        ctx = self.ctx
        ring = await load_keyring(ctx.store, self.master_key, now=ctx.now())
        check_not_older(ring, self.key_state)
        ctx.keyring = ring

    async def checkpoint_audit(self) -> None:
        """Sign a checkpoint of the audit chain when one is due (``tether.sts.checkpoints``)."""
        ctx = self.ctx
        await self.checkpoints.tick(ctx.store, ctx.keyring, issuer=ctx.settings.issuer, now=ctx.now())

    async def record_policy(self) -> None:
        """Store and audit each policy set loaded (once per version) and each set refused."""
        ctx = self.ctx
        ctx.policy.refresh()
        current, error = ctx.policy.current, ctx.policy.last_error
        if current is not None and current.version != self._recorded_policy:
            if await ctx.store.record_policy_version(current.version, current.sources, now=ctx.now()):
                detail = {"version": current.version, "policies": len(current.policies), "shadow": list(current.shadow_ids)}
                await ctx.store.append_audit(AuditEvent(kind="policy.loaded", outcome="ok", detail=detail), now=ctx.now())
            self._recorded_policy = current.version
        problems = [str(p) for p in error.problems[:10]] if error is not None else []
        if problems and problems != self._refused_policy:
            detail = {"kept_version": current.version if current else None, "problems": problems}
            await ctx.store.append_audit(
                AuditEvent(kind="policy.refused", outcome="refused", error="invalid_policy", detail=detail), now=ctx.now()
            )
        self._refused_policy = problems

    async def stop(self) -> None:
        if self.federation is not None:
            await self.federation.aclose()
            self.federation = None
        if self.approval_webhook is not None:
            await self.approval_webhook.stop()
            self.approval_webhook = None
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._ctx is not None:
            with contextlib.suppress(StoreError):  # counted refusals of the last interval, best effort
                assert self._ctx.anonymous is not None
                await self._ctx.anonymous.flush(self._ctx.now(), everything=True)
            await self._ctx.store.aclose()
            self._ctx = None


def build_sts(config: Config, *, clock: Clock | None = None, store: Store | None = None, upkeep: bool = True) -> Sts:
    """Check configuration, master key and policy set; the store is opened by ``Sts.start``."""
    master = load_master_key(config.master_key_file)
    try:
        policy = PolicyEngine(config.policy_dir, mode=config.policy.mode)
    except ValueError as exc:
        raise ConfigError("policy.mode", str(exc)) from exc
    check_feed_identities(config)
    if policy.current is None:
        problem = policy.last_error.problems[0] if policy.last_error and policy.last_error.problems else "no policies"
        raise ConfigError("policy.dir", f"no valid policy set: {problem}")
    return Sts(config, clock=clock or SystemClock(), master=master, policy=policy, upkeep=upkeep, store=store)
