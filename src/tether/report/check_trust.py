"""Trust controls: keys at rest, issuer key rotation, workload identity sources, admins, transport."""

from __future__ import annotations

import stat
from urllib.parse import urlsplit

from tether.keys.keyring import SIGNING_ALGS
from tether.report.model import Evidence, FileFacts, Item
from tether.report.outcome import Check, Outcome, Problem, age_days, control, fmt, iso, judge, setting, unavailable

__all__ = ["TRUST_CONTROLS"]

#: this module's controls, in report order (each registered by ``@control`` below)
TRUST_CONTROLS: list[Check] = []

KEY_ROTATE_DAYS, KEY_MAX_DAYS = 90, 365
IDENTITY_MAX_LIFETIME = 3600  # SPIFFE JWT-SVIDs are bearer tokens: keep them short
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OWNER_ONLY = stat.S_IRWXG | stat.S_IRWXO


def _mode(facts: FileFacts) -> str:
    return "missing" if facts.mode is None else oct(facts.mode & 0o777)


@control(TRUST_CONTROLS, "KEY-01", "The master key and data are owner-only")
def secrets_at_rest(evidence: Evidence) -> list[Outcome]:
    problems = []
    master = evidence.master_key
    if master is None:
        items = [Item("master key", "from TETHER_MASTER_KEY", "environment (value not shown)")]
    else:
        items = [Item("master key file", f"{master.path} ({_mode(master)})", "stat")]
        if master.mode is None:
            problems.append(
                Problem(
                    "high",
                    f"the master key file {master.path} does not exist",
                    "Run tether init or set TETHER_MASTER_KEY.",
                    fail=True,
                )
            )
        elif master.mode & OWNER_ONLY:
            problems.append(
                Problem(
                    "high",
                    f"the master key file is {_mode(master)}: group or others can read it",
                    f"chmod 600 {master.path}",
                    fail=True,
                )
            )
    data = evidence.data_dir
    items.append(Item("data directory", f"{data.path} ({_mode(data)})", "stat"))
    if data.mode is not None and data.mode & OWNER_ONLY:
        problems.append(
            Problem(
                "medium",
                f"the data directory is {_mode(data)}: it holds the database and sealed keys",
                f"chmod 700 {data.path}",
            )
        )
    return [judge(problems, "the master key and the data directory are owner-only", items)]


@control(TRUST_CONTROLS, "KEY-02", "The issuer signing key is rotated")
def signing_keys(evidence: Evidence) -> list[Outcome]:
    store = evidence.store
    if store.error:
        return [unavailable("the signing keys", store.error)]
    items = [
        Item(
            k.kid,
            f"{k.alg}, created {iso(k.created_at)}" + (f", retired {iso(k.retired_at)}" if k.retired_at else ", current"),
            "store signing_keys",
        )
        for k in store.signing_keys
    ]
    current = [k for k in store.signing_keys if k.retired_at is None]
    if not current:
        problem = Problem(
            "critical", "there is no current signing key: the STS cannot issue tokens", "tether keys rotate", fail=True
        )
        return [judge([problem], "", items or [Item("signing keys", "0", "store signing_keys")])]
    key = current[0]
    age = age_days(evidence.now, key.created_at)
    items.append(Item("current key age", f"{age} days", f"now - created_at of {key.kid}"))
    problems = []
    if key.alg not in SIGNING_ALGS:
        problems.append(Problem("high", f"the current key uses {key.alg}", "tether keys rotate --alg ES256", fail=True))
    if age > KEY_MAX_DAYS:
        problems.append(
            Problem(
                "high", f"the signing key is {age} days old", f"tether keys rotate (every {KEY_ROTATE_DAYS} days).", fail=True
            )
        )
    elif age > KEY_ROTATE_DAYS:
        problems.append(
            Problem("medium", f"the signing key is {age} days old", f"tether keys rotate (every {KEY_ROTATE_DAYS} days).")
        )
    return [judge(problems, f"the signing key ({key.alg}) is {age} days old", items)]


def _insecure(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") not in LOOPBACK


@control(TRUST_CONTROLS, "ID-01", "Workload identity sources are trusted safely")
def identity_sources(evidence: Evidence) -> list[Outcome]:
    dev = str(evidence.value("dev.trust_domain"))
    items = [Item(f"{s.kind} {s.name}", s.location, "tether.toml") for s in evidence.trust_sources]
    items += [setting(evidence, "identity.max_lifetime"), setting(evidence, "dev.trust_domain")]
    problems = []
    if not evidence.trust_sources:
        problems.append(
            Problem(
                "medium",
                "no trust domain or OIDC issuer: no workload can authenticate",
                "Add a [[trust_domains]] or [[oidc_issuers]] table.",
            )
        )
    for source in evidence.trust_sources:
        if _insecure(source.location) or (source.kind == "oidc" and _insecure(source.name)):
            problems.append(
                Problem(
                    "medium",
                    f"{source.kind} {source.name} keys are fetched over plain http",
                    "Serve bundles, discovery and JWKS over https.",
                )
            )
        if source.kind == "spiffe" and dev and source.name == dev:
            problems.append(
                Problem(
                    "low",
                    f"the dev trust domain {dev} is trusted: its key sits on this machine and "
                    "anyone with the master key can mint its identities",
                    "In production, trust your SPIRE trust domain and clear [dev] trust_domain.",
                )
            )
    lifetime = int(evidence.value("identity.max_lifetime"))
    if lifetime > IDENTITY_MAX_LIFETIME:
        problems.append(
            Problem(
                "low",
                f"workload JWTs valid for up to {lifetime}s are accepted",
                f"Lower identity.max_lifetime to at most {IDENTITY_MAX_LIFETIME}.",
            )
        )
    return [judge(problems, f"{len(evidence.trust_sources)} identity source(s), all fetched securely", items)]


@control(TRUST_CONTROLS, "ADM-01", "Admin principals are few and not locally mintable")
def admins(evidence: Evidence) -> list[Outcome]:
    principals = [str(p) for p in evidence.value("admin.principals")]
    dev = str(evidence.value("dev.trust_domain"))
    trusted_dev = bool(dev) and any(s.kind == "spiffe" and s.name == dev for s in evidence.trust_sources)
    items = [setting(evidence, "admin.principals"), setting(evidence, "admin.scope")]
    problems = []
    if not principals:
        problems.append(
            Problem("low", "no admin principal: nobody can create tasks", "List the orchestrator in admin.principals.")
        )
    local = [p for p in principals if trusted_dev and p.startswith(f"spiffe://{dev}/")]
    if local:
        problems.append(
            Problem(
                "medium",
                f"admin principal(s) {fmt(local)} can be minted on this machine (dev trust domain)",
                "Use admin workloads from your production trust domain.",
            )
        )
    return [judge(problems, f"{len(principals)} admin principal(s), none from a local dev identity", items)]


@control(TRUST_CONTROLS, "NET-01", "Endpoints are served over TLS")
def transport(evidence: Evidence) -> list[Outcome]:
    urls = [("issuer", str(evidence.value("issuer")))]
    if evidence.routes:
        urls.append(("gateway.url", str(evidence.value("gateway.url"))))
    items = [setting(evidence, name) for name, _ in urls]
    problems = [
        Problem(
            "high",
            f"{name} {url} is plain http on a non-loopback address: tokens and proofs travel in clear",
            "Serve it over https (a TLS terminator in front is fine).",
            fail=True,
        )
        for name, url in urls
        if _insecure(url)
    ]
    plain = any(urlsplit(url).scheme == "http" for _, url in urls)
    return [judge(problems, "plain http on loopback only (development)" if plain else "served over https", items)]
