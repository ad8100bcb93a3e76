"""Shared CLI plumbing: load config (errors → exit 2), act as the local admin workload."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tether.cli.output import fail

if TYPE_CHECKING:
    import ssl

    from tether.client import StsClient
    from tether.config import Config
    from tether.identity.dev_approvers import DevApprovers
    from tether.identity.dev_issuer import DevTrustDomain
    from tether.identity.dev_x509 import DevCA
    from tether.store.protocol import Store

T = TypeVar("T")

__all__ = [
    "admin_client",
    "config_or_exit",
    "dev_ca",
    "dev_domain",
    "dev_domain_name",
    "errors_to_exit",
    "sts_trust",
    "with_store",
]


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Configuration problems exit 2 with one line; STS refusals exit 1 with the RFC error.

    The error classes are imported here, when a command runs, not when the CLI starts:
    ``tether --help`` and every other command's start import only what they use."""
    import httpx

    from tether.client import StsError
    from tether.errors import ConfigError
    from tether.keys.sealed import SealError
    from tether.store.errors import StoreUnavailable

    try:
        yield
    except ConfigError as exc:
        fail(str(exc), code=2)
    except SealError as exc:
        fail(f"master_key: {exc}", code=2)
    except StsError as exc:
        fail(f"the STS refused: {exc.error}: {exc.description}")
    except httpx.TransportError as exc:
        fail(f"cannot reach the STS: {exc}")
    except StoreUnavailable as exc:
        fail(f"store unavailable: {exc}")
    except OSError as exc:
        fail(f"{exc.strerror or exc}")


def config_or_exit(path: Path | None) -> Config:
    import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
    from tether.config import load_config

    with errors_to_exit():
        return load_config(path)
    raise AssertionError("unreachable")


def dev_domain_name(config: Config) -> str:
    from tether.provision import DEV_TRUST_DOMAIN

    return config.dev.trust_domain or DEV_TRUST_DOMAIN


def dev_domain(config: Config) -> DevTrustDomain:
    from tether.errors import ConfigError
    from tether.identity.dev_issuer import DevTrustDomain
    from tether.keys.sealed import load_master_key

    name = dev_domain_name(config)
    master = load_master_key(config.master_key_file)
    path = DevTrustDomain.key_path(config.data_dir, name)
    if not path.exists():
        raise ConfigError("dev.trust_domain", f"no dev trust domain key at `{path}`; run tether init")
    return DevTrustDomain.load(config.data_dir, name, master)


def dev_approvers(config: Config) -> DevApprovers:
    """The dev approvers' provider (``tether init``), when ``[approvals] issuer`` is it."""
    from tether.errors import ConfigError
    from tether.identity.dev_approvers import DevApprovers
    from tether.keys.sealed import load_master_key

    issuer = DevApprovers.issuer_for(config.issuer)
    if config.approvals.issuer != issuer:
        raise ConfigError(
            "approvals.issuer", f"approvers come from `{config.approvals.issuer or 'nowhere'}`, not the dev provider"
        )
    if not DevApprovers.key_path(config.data_dir).exists():
        raise ConfigError("approvals.issuer", "no dev approvers' key; run tether init")
    return DevApprovers.load(config.data_dir, issuer, load_master_key(config.master_key_file))


def dev_ca(config: Config) -> DevCA:
    """The dev trust domain's X.509 CA (``tether init --tls``), its key unsealed with the master key."""
    from tether.errors import ConfigError
    from tether.keys.sealed import load_master_key
    from tether.provision import dev_ca_key_path, dev_x509_bundle_path, load_dev_ca

    name = dev_domain_name(config)
    key, bundle = dev_ca_key_path(config.data_dir, name), dev_x509_bundle_path(config.data_dir, name)
    if not key.exists() or not bundle.exists():
        raise ConfigError("dev.trust_domain", f"no dev X.509 CA for `{name}` at `{key}`; run tether init --tls")
    master = load_master_key(config.master_key_file)
    return load_dev_ca(config.data_dir, name, master)


def sts_trust(config: Config) -> ssl.SSLContext | bool:
    """How the CLI checks the STS's server certificate: the system's CAs, and ``[tls] ca_file``
    (``tether init --tls`` names the dev CA there), or the dev CA when the dev trust domain has one."""
    from tether.provision import dev_x509_bundle_path
    from tether.web.tls import client_trust

    if config.tls.ca_file:
        return client_trust(config.resolve(config.tls.ca_file))
    bundle = dev_x509_bundle_path(config.data_dir, dev_domain_name(config))
    return client_trust(bundle if bundle.is_file() else None)


def admin_client(config: Config, url: str | None, identity_file: Path | None) -> StsClient:
    import httpx

    from tether.agent.identity import DevIdentity, FileIdentity, IdentitySource
    from tether.client import StsClient

    identity: IdentitySource
    if identity_file is not None:
        identity = FileIdentity(identity_file)
    else:
        identity = DevIdentity(dev_domain(config), config.admin.principals[0], ttl=120)
    http = httpx.Client(timeout=10.0, trust_env=False, verify=sts_trust(config))
    return StsClient(url or config.issuer, identity, http=http)


def with_store(cfg: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` with the deployment's store open, closing it whatever happens (one command's store use)."""
    import asyncio

    from tether.store.open import open_store

    async def run() -> T:
        store = await open_store(cfg)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(run())
