"""Wire a running STS from configuration: store, master key, keyring, identity, proofs."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.applications import Starlette

from tether.clock import Clock, SystemClock
from tether.config import Config
from tether.errors import ConfigError
from tether.identity.verifier import build_identity_verifier
from tether.keys.keyring import load_keyring
from tether.keys.sealed import SealError, derive_key, load_master_key
from tether.policy.engine import PolicyEngine
from tether.proofs import ProofChecker
from tether.store.open import open_store
from tether.store.protocol import Store
from tether.sts.app import create_app
from tether.sts.context import StsContext
from tether.sts.settings import StsSettings

__all__ = ["Sts", "build_sts"]


@dataclass
class Sts:
    ctx: StsContext
    app: Starlette
    http: httpx.AsyncClient


async def build_sts(config: Config, *, clock: Clock | None = None, store: Store | None = None, upkeep: bool = True) -> Sts:
    """Everything the STS needs, checked before it serves (a bad key or config fails here)."""
    clock = clock or SystemClock()
    master = load_master_key(config.master_key_file)
    store = store or open_store(config)
    settings = StsSettings.from_config(config)
    try:
        keyring = await load_keyring(store, master, now=clock.now())
    except SealError as exc:
        raise ConfigError("master_key", f"cannot open the signing keys: {exc}") from exc
    except LookupError as exc:
        raise ConfigError("keys", str(exc)) from exc
    try:
        policy = PolicyEngine(config.policy_dir, mode=config.values["policy"]["mode"])
    except ValueError as exc:
        raise ConfigError("policy.mode", str(exc)) from exc
    if policy.current is None:
        problem = policy.last_error.problems[0] if policy.last_error and policy.last_error.problems else "no policies"
        raise ConfigError("policy.dir", f"no valid policy set: {problem}")
    http = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(5.0), trust_env=False)
    proofs = ProofChecker(
        store,
        clock,
        nonce_key=derive_key(master, "dpop-nonce") if settings.nonce else None,
        algorithms=settings.dpop_algs,
        max_age=settings.dpop_max_age,
        skew=settings.skew,
        nonce_ttl=settings.nonce_ttl,
    )
    ctx = StsContext(
        settings=settings,
        store=store,
        keyring=keyring,
        identity=build_identity_verifier(config, http),
        proofs=proofs,
        clock=clock,
        policy=policy,
    )

    async def shutdown() -> None:
        await http.aclose()
        await store.aclose()

    app = create_app(ctx, master_key=master, upkeep=upkeep, on_shutdown=shutdown)
    return Sts(ctx=ctx, app=app, http=http)
