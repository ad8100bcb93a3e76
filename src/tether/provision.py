"""``tether init``: a deployment directory with config, master key, signing key and dev trust domain.

Idempotent and safe: an existing ``tether.toml`` is never rewritten, existing keys are
kept unless ``force`` is given, and even then
the master key is never replaced (that would make every sealed key unreadable);
``force`` adds a fresh issuer signing key (the old one stays in the JWKS until its
tokens expire) and a fresh dev trust domain key and bundle.

With ``tls`` (``tether init --tls``) the dev trust domain also gets an X.509 CA (RFC 8705
§2.1 needs a CA that X.509-SVIDs chain to; SPIFFE X.509-SVID §4: the CA certificate is the
domain's X.509 bundle). Its key is sealed under the master key like the JWT-SVID key; the
server certificate for the issuer host is written in the clear (uvicorn loads it) and only
its owner may read the key. The config then names them in ``[tls]`` and the trust domain's
``x509_bundle_file``, and the issuer and gateway URLs are https.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tether.features  # noqa: F401  (the feature tables are registered before a config is loaded)
from tether.config import Config, load_config
from tether.errors import ConfigError
from tether.filemodes import OWNER_DIR, write_private
from tether.identity.dev_approvers import DevApprovers
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.dev_x509 import DevCA, write_secret
from tether.keys.keyring import rotate_signing_key
from tether.keys.sealed import MASTER_KEY_ENV, create_master_key, load_master_key, seal, unseal
from tether.monitor.sample import sample_config
from tether.rules.principal import spiffe_trust_domain
from tether.store.open import open_store
from tether.sts.settings import StsSettings

__all__ = [
    "DEV_TRUST_DOMAIN",
    "InitResult",
    "create_dev_ca",
    "dev_ca_aad",
    "dev_ca_key_path",
    "dev_x509_bundle_path",
    "initialize",
    "install_starter_policies",
    "load_dev_ca",
    "render_config",
    "server_hosts",
    "tls_paths",
]

DEV_TRUST_DOMAIN = "tether.local"
ADMIN_ID = f"spiffe://{DEV_TRUST_DOMAIN}/admin"


def _host_port(url: str) -> tuple[str, str]:
    host, _, port = url.split("://", 1)[1].split("/", maxsplit=1)[0].partition(":")
    return host, port or ("443" if url.startswith("https") else "80")


def render_config(issuer: str, *, tls: bool = False, trust_domain: str = DEV_TRUST_DOMAIN) -> str:
    """The starter ``tether.toml``; ``trust_domain`` names the dev trust domain (two deployments
    that federate each need their own: ``tether init --trust-domain a.example``)."""
    host, port = _host_port(issuer)
    domain, admin = trust_domain, f"spiffe://{trust_domain}/admin"
    x509 = f'x509_bundle_file = ".tether/bundles/{domain}.x509.pem"\n' if tls else ""
    tls_section = (
        "[tls]                         # HTTPS for tether serve / tether gateway (tether init --tls)\n"
        'certificate = ".tether/tls/server.pem"\n'
        'key = ".tether/tls/server.key"\n'
        f'ca_file = ".tether/bundles/{domain}.x509.pem"   # what the CLI and gateway trust for the STS\n'
        "# trusted_proxies = []        # TLS terminators whose Client-Cert header (RFC 9440) is believed\n\n"
        "[gateway]\n"
        'url = "https://127.0.0.1:8710"\n\n'
        if tls
        else ""
    )
    return f"""# tether configuration. Every key is optional unless noted; TETHER_<SECTION>_<KEY> overrides it.
issuer = "{issuer}"
data_dir = ".tether"          # SQLite database, sealed keys, dev trust bundle
store = "sqlite"              # "sqlite" (embedded) or "postgres" (with [postgres] and [redis])

[server]
host = "{host}"
port = {port}

{tls_section}[tokens]
session_ttl = 900             # workload JWT -> session token (never beyond the task or the JWT)
hop_ttl = 300                 # session token -> hop token for one audience
admin_ttl = 300
clock_skew = 10               # accepted clock difference for iat/nbf/exp checks

[dpop]
nonce = true                  # server nonces at the STS (RFC 9449 section 8)
max_age = 60                  # oldest acceptable proof iat, seconds
algorithms = ["ES256", "ES384", "EdDSA", "PS256", "RS256"]

[tasks]
max_duration = 900            # hard cap on any task, seconds
max_depth = 5
max_tokens = 10000
default_max_depth = 3
default_max_tokens = 100

[identity]
max_lifetime = 3600           # refuse workload JWTs valid for longer than this

[admin]
principals = ["{admin}"]
scope = "tether:admin"

[dev]
trust_domain = "{domain}"   # local JWT-SVID issuer for `tether identity issue`

[policy]
dir = "policies"              # Cedar policies (*.cedar), validated against the tether schema, hot-reloaded
mode = "enforce"              # or "shadow": evaluate and audit, never deny

[approvals]                   # requests a Cedar @approval("group") permit holds for a human's yes
ttl = 300                     # seconds a held request waits for a decision
# the dev approvers' provider (`tether identity approver EMAIL --group G`): use your organisation's
# OIDC provider in production (issuer, audience, principal = "user:{{/email}}", group_claim)
issuer = "{DevApprovers.issuer_for(issuer)}"
jwks_file = ".tether/bundles/approvers.json"
# webhook_url = "https://hooks.example/approvals"   # one-time approve/deny links per approver

# [[approver_groups]]
# name = "finance"
# members = ["user:alice@example.com"]   # and/or idp_groups = ["finance"] from the provider's group claim

# [console]                   # the operator console: `tether console` (prints a one-time login link),
# enabled = false             # or served by `tether serve` on its own port when true
# port = 8701
# operators = []              # principals who may end tasks and block agents (viewers, approvers likewise)
# [console.oidc]              # humans log in with your organisation's provider (code flow + PKCE)
# issuer = "https://login.example.com"
# client_id = "tether-console"  # redirect URI: http://127.0.0.1:8701/login/callback (or public_url's)
# operator_groups = ["platform-oncall"]   # roles from the provider's `groups` claim

# [audit]                     # signed checkpoints of the audit chain (`tether audit verify FILE --jwks`)
# checkpoint_every = 1000     # sign after this many new records
# checkpoint_seconds = 60     # or after this many seconds with at least one new record

{sample_config()}
[[trust_domains]]
name = "{domain}"
bundle_file = ".tether/bundles/{domain}.json"
{x509}
# [[trust_domains]]           # a SPIRE trust domain, bundle served over HTTPS
# name = "prod.example.org"
# bundle_url = "https://spire.example.org/bundle"

# [[trust_domains]]           # another trust domain's SPIFFE bundle endpoint (https_web), refreshed per its
# name = "b.example"          # spiffe_refresh_hint; a tether serves its own at /spiffe/bundle
# bundle_endpoint = "https://sts.b.example/spiffe/bundle"
# bundle_ca_file = "b-ca.pem" # only that CA is trusted for the endpoint (a private one); default: the Web PKI

# [[federation]]              # agents of another tether trust domain, within a ceiling (README: federation)
# name = "a"                  # their principals are fed:a/<principal> here
# issuer = "https://sts.a.example"
# bundle_endpoint = "https://sts.a.example/federation/bundle"   # A's token keys; or jwks_uri / jwks_file
# agents = ["spiffe://a.example/agent/*"]
# audiences = ["https://tools.example.org"]
# scopes = ["wiki:read"]      # the ceiling: beyond it refused, never narrowed
# max_depth = 2               # max_ttl = 900, max_tokens = 100
# feed_principal = "spiffe://{domain}/feed"   # who this STS is at A's revocation feed (A lists it)
# stale_after = 10            # A's feed silent this long: A's agents are refused (fail closed)

# [[oidc_issuers]]            # Kubernetes projected service-account tokens of one cluster
# issuer = "https://kubernetes.default.svc.cluster.local"
# principal = "k8s-prod:{{/kubernetes.io/namespace}}/{{/kubernetes.io/serviceaccount/name}}"
#                             # each identity source owns its prefix: give every cluster its own
#                             # ("k8s-prod:", "k8s-dev:"); overlapping prefixes are refused

# [[resources]]               # services that may act on behalf of a token's subject
# uri = "https://tools.example.org"
# principals = ["spiffe://{domain}/tools"]
# tags = ["wiki"]             # visible to policies as resource.tags

# [revocations]               # the revocation feed and /policies: admins and [[resources]] principals
# subscribers = []            # may read them, and these principals too (workload JWT as client assertion)
# max_streams = 1000          # open feed streams per STS process (over it: 429 too_many_requests)
# max_streams_per_caller = 20 # per authenticated principal (raise it for a service with many replicas)
# stream_seconds = 300        # a stream ends after this; the subscriber resumes with Last-Event-ID

# [metrics]
# enabled = true              # GET /metrics (Prometheus text) on the STS and the gateway, unauthenticated;
#                             # labels are kinds, endpoints, error codes, routes, statuses - never principals

# [logging]                   # tether serve / tether gateway, on stderr
# format = "text"             # or "json": one object per line (ts, level, logger, message, extras)
# level = "info"              # debug (adds tracebacks), info, warning, error; tokens, proofs and secrets
#                             # are redacted in every format and level
"""


def install_starter_policies(directory: Path) -> None:
    """Copy the commented starter policy set (never over existing files)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, OWNER_DIR)  # explicit modes, never the umask's: policies decide everything
    for entry in resources.files("tether.policy").joinpath("starter").iterdir():
        if entry.name.endswith((".cedar", ".yaml")) and not (directory / entry.name).exists():
            write_private(directory / entry.name, entry.read_text(encoding="utf-8"))


def dev_ca_aad(name: str) -> bytes:
    """The AES-GCM associated data sealing a dev trust domain's X.509 CA key: its name."""
    return b"dev-x509-ca\x00" + name.encode()


def dev_ca_key_path(data_dir: Path, name: str) -> Path:
    return data_dir / "dev" / f"{name}.ca.key.sealed"


def dev_x509_bundle_path(data_dir: Path, name: str) -> Path:
    """The domain's X.509 bundle: the dev CA's certificate (PEM)."""
    return data_dir / "bundles" / f"{name}.x509.pem"


def tls_paths(data_dir: Path) -> tuple[Path, Path]:
    """The server certificate (PEM, leaf then CA) and its key (0600)."""
    return data_dir / "tls" / "server.pem", data_dir / "tls" / "server.key"


def create_dev_ca(data_dir: Path, name: str, master: bytes) -> DevCA:
    """A fresh dev CA: its key sealed under the master key, its certificate as the X.509 bundle."""
    ca = DevCA.create(name)
    key_path = dev_ca_key_path(data_dir, name)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(key_path, seal(master, ca.key_pem, aad=dev_ca_aad(name)))
    bundle = dev_x509_bundle_path(data_dir, name)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(ca.bundle_pem)
    return ca


def load_dev_ca(data_dir: Path, name: str, master: bytes) -> DevCA:
    """The dev CA of ``name`` (``SealError`` if the master key does not open it)."""
    key_pem = unseal(master, dev_ca_key_path(data_dir, name).read_bytes(), aad=dev_ca_aad(name))
    return DevCA.load(name, dev_x509_bundle_path(data_dir, name).read_bytes(), key_pem)


def server_hosts(*urls: str) -> list[str]:
    """The server certificate's names: each URL's host, then loopback (127.0.0.1, localhost)."""
    hosts: list[str] = []
    for host in [*(_host_port(url)[0].strip("[]") for url in urls), "127.0.0.1", "localhost"]:
        if host and host not in hosts:
            hosts.append(host)
    return hosts


@dataclass
class InitResult:
    config_path: Path
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: what the operator must still do by hand (an existing tether.toml is never rewritten)
    todo: list[str] = field(default_factory=list)


def _https(url: str) -> str:
    return "https://" + url.split("://", 1)[1] if url.startswith("http://") else url


def initialize(
    directory: Path, *, issuer: str, force: bool = False, tls: bool = False, trust_domain: str | None = None
) -> InitResult:
    if trust_domain is not None and spiffe_trust_domain(f"spiffe://{trust_domain}/x") != trust_domain:
        raise ConfigError("--trust-domain", f"`{trust_domain}` is not a lower-case trust domain name")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "tether.toml"
    result = InitResult(config_path=config_path)
    if config_path.exists():
        result.kept.append(str(config_path))
    else:
        text = render_config(_https(issuer) if tls else issuer, tls=tls, trust_domain=trust_domain or DEV_TRUST_DOMAIN)
        write_private(config_path, text)
        result.created.append(str(config_path))
    config = load_config(config_path)
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if os.environ.get(MASTER_KEY_ENV):
        master = load_master_key(config.master_key_file)
        result.kept.append(f"master key from {MASTER_KEY_ENV}")
    elif config.master_key_file.exists():
        master = load_master_key(config.master_key_file)
        result.kept.append(str(config.master_key_file))
    else:
        master = create_master_key(config.master_key_file)
        result.created.append(str(config.master_key_file))
    settings = StsSettings.from_config(config)

    async def keys() -> bool:
        store = await open_store(config, migrate=True)
        try:
            if await store.signing_keys(now=time.time()) and not force:
                return False
            await rotate_signing_key(
                store, master, alg="ES256", now=int(time.time()), max_token_lifetime=settings.max_token_lifetime
            )
            return True
        finally:
            await store.aclose()

    if asyncio.run(keys()):
        result.created.append("issuer signing key (ES256)")
    else:
        result.kept.append("issuer signing key")
    policy_dir = config.policy_dir
    if policy_dir.exists():
        result.kept.append(f"policies in {policy_dir}")
    else:
        install_starter_policies(policy_dir)
        result.created.append(f"starter policies in {policy_dir}")
    domain = config.dev.trust_domain or DEV_TRUST_DOMAIN
    if trust_domain is not None and trust_domain != domain:
        result.todo.append(f'[dev] trust_domain = "{trust_domain}" (it names `{domain}`; keys were made for that one)')
    if DevTrustDomain.key_path(data_dir, domain).exists() and not force:
        result.kept.append(f"dev trust domain spiffe://{domain}")
    else:
        DevTrustDomain.create(data_dir, domain, master)
        result.created.append(f"dev trust domain spiffe://{domain} and its bundle")
    _init_approvers(config, master, force=force, result=result)
    if tls:
        _init_tls(config, master, domain, force=force, result=result)
    return result


def _init_approvers(config: Config, master: bytes, *, force: bool, result: InitResult) -> None:
    """The dev approvers' provider, when tether.toml points ``[approvals]`` at it."""
    data_dir = config.data_dir
    dev_issuer = DevApprovers.issuer_for(config.issuer)
    if config.approvals.issuer != dev_issuer:
        return
    if DevApprovers.key_path(data_dir).exists() and not force:
        result.kept.append("dev approvers' provider")
    else:
        DevApprovers.create(data_dir, dev_issuer, master)
        result.created.append(f"dev approvers' provider {dev_issuer}")


def _init_tls(config: Config, master: bytes, domain: str, *, force: bool, result: InitResult) -> None:
    """The dev CA, the server certificate, and what tether.toml must say about them."""
    data_dir = config.data_dir
    fresh_ca = force or not dev_ca_key_path(data_dir, domain).exists()
    if fresh_ca:
        ca = create_dev_ca(data_dir, domain, master)
        result.created.append(f"dev X.509 CA for spiffe://{domain} (bundle {dev_x509_bundle_path(data_dir, domain)})")
    else:
        ca = load_dev_ca(data_dir, domain, master)
        result.kept.append(f"dev X.509 CA for spiffe://{domain}")
    cert_path, key_path = tls_paths(data_dir)
    hosts = server_hosts(config.issuer, config.gateway.url)
    if fresh_ca or not cert_path.exists() or not key_path.exists():
        server = ca.issue_server(hosts)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(cert_path.parent, OWNER_DIR)
        write_secret(key_path, server.key_pem)
        cert_path.write_bytes(server.cert_pem + ca.bundle_pem)
        result.created.append(f"server certificate {cert_path} for {', '.join(hosts)}")
    else:
        result.kept.append(f"server certificate {cert_path}")
    # an existing tether.toml is never rewritten: say what it is missing
    if not (config.tls.certificate and config.tls.key):
        result.todo.append(f'[tls] certificate = "{cert_path}" and key = "{key_path}"')
    entry = next((td for td in config.trust_domains if td.name == domain), None)
    bundle = dev_x509_bundle_path(data_dir, domain)
    if entry is not None and entry.x509_bundle_file is None:
        result.todo.append(f'x509_bundle_file = "{bundle}" in the [[trust_domains]] entry named "{domain}"')
    if not config.issuer.startswith("https://"):
        result.todo.append(f'issuer = "{_https(config.issuer)}"')
