"""Token controls: lifetimes, key binding (RFC 9449), DPoP nonces and algorithms, task caps, revocation reach."""

from __future__ import annotations

from tether.report.model import AuditFacts, Evidence, Item
from tether.report.outcome import Check, Outcome, Problem, control, fmt, judge, reads_audit, setting
from tether.rules.jws import ASYMMETRIC_ALGS

__all__ = ["TOKEN_CONTROLS"]

#: this module's controls, in report order (each registered by ``@control`` below)
TOKEN_CONTROLS: list[Check] = []

#: ``key`` → (recommended maximum, hard maximum) in seconds; SECURITY §4 "Lifetimes": AT ≤ 5 min
TTL_BOUNDS = {"tokens.session_ttl": (900, 3600), "tokens.hop_ttl": (300, 900), "tokens.admin_ttl": (300, 900)}
#: ``key`` → (recommended maximum, hard maximum)
TASK_BOUNDS = {"tasks.max_duration": (3600, 86_400), "tasks.max_depth": (5, 10), "tasks.max_tokens": (10_000, 1_000_000)}
NONCE_FREE_TTL = 300  # RFC 9449 §11.2: without nonces, no long-lived DPoP-bound tokens
MAX_PROOF_AGE = 300  # RFC 9449 §11.1: "seconds or minutes"
LAG_TARGET = 5.0  # SECURITY §4 "Revocation latency": resource server ≤ 5 s
STALE_TARGET, STALE_LIMIT = 10, 60


def _bounded(evidence: Evidence, bounds: dict[str, tuple[int, int]], unit: str, fix: str) -> list[Problem]:
    problems = []
    for key, (recommended, limit) in bounds.items():
        value = int(evidence.value(key))
        if value > limit:
            problems.append(
                Problem("high", f"{key} = {value}{unit} exceeds {limit}{unit}", fix.format(key=key, n=recommended), fail=True)
            )
        elif value > recommended:
            problems.append(
                Problem(
                    "medium",
                    f"{key} = {value}{unit} is above the recommended {recommended}{unit}",
                    fix.format(key=key, n=recommended),
                )
            )
    return problems


@control(TOKEN_CONTROLS, "TOK-01", "Token lifetimes are short")
def token_lifetimes(evidence: Evidence) -> list[Outcome]:
    problems = _bounded(evidence, TTL_BOUNDS, "s", "Lower {key} to at most {n} seconds.")
    longest = max(int(evidence.value(k)) for k in TTL_BOUNDS)
    items = [setting(evidence, k) for k in TTL_BOUNDS]
    items.append(Item("longest token lifetime", f"{longest}s", "max of the above"))
    return [judge(problems, f"no token lives longer than {longest}s", items)]


@control(TOKEN_CONTROLS, "TOK-02", "Every issued token is key-bound (DPoP or client certificate)")
@reads_audit("the issued-token records")
def key_binding(evidence: Evidence, audit: AuditFacts) -> list[Outcome]:
    items = [
        Item("tokens issued", str(audit.tokens_issued), "audit log, token.issued records"),
        Item("tokens without cnf.jkt or cnf.x5t#S256", str(audit.unbound_tokens), "audit log, token.issued detail.jkt, x5t"),
    ]
    if audit.unbound_examples:
        items.append(Item("unbound token jtis", fmt(audit.unbound_examples), "audit log"))
    problems = []
    if audit.unbound_tokens:
        problems.append(
            Problem(
                "high",
                f"{audit.unbound_tokens} issued token(s) are not bound to a key",
                "Find the issuing path from the jtis in the audit log; every agent token must carry "
                "cnf.jkt (RFC 9449 §6) or cnf.x5t#S256 (RFC 8705 §3) and bearer access goes through a gateway route.",
                fail=True,
            )
        )
    ok = (
        f"all {audit.tokens_issued} issued tokens are key- or certificate-bound"
        if audit.tokens_issued
        else "no tokens issued yet"
    )
    return [judge(problems, ok, items)]


@control(TOKEN_CONTROLS, "DPOP-01", "DPoP server nonces are on")
def dpop_nonce(evidence: Evidence) -> list[Outcome]:
    nonce, max_age = bool(evidence.value("dpop.nonce")), int(evidence.value("dpop.max_age"))
    longest = max(int(evidence.value(k)) for k in TTL_BOUNDS)
    problems = []
    if not nonce:
        severity = "high" if longest > NONCE_FREE_TTL else "medium"
        problems.append(
            Problem(
                severity,
                f"server nonces are off while tokens live up to {longest}s",
                "Set [dpop] nonce = true (RFC 9449 §8) so pre-generated proofs are refused.",
                fail=True,
            )
        )
    if max_age > MAX_PROOF_AGE:
        problems.append(
            Problem(
                "low",
                f"proofs up to {max_age}s old are accepted",
                f"Lower dpop.max_age to at most {MAX_PROOF_AGE} seconds (RFC 9449 §11.1).",
            )
        )
    items = [setting(evidence, "dpop.nonce"), setting(evidence, "dpop.nonce_ttl"), setting(evidence, "dpop.max_age")]
    return [judge(problems, "server-issued nonces are required in every proof", items)]


@control(TOKEN_CONTROLS, "DPOP-02", "Only asymmetric proof and identity algorithms")
def dpop_algorithms(evidence: Evidence) -> list[Outcome]:
    algs = [str(a) for a in evidence.value("dpop.algorithms")]
    problems = []
    bad = [a for a in algs if a not in ASYMMETRIC_ALGS]
    if bad:
        problems.append(
            Problem(
                "critical",
                f"non-asymmetric algorithm(s) allowed for proofs: {fmt(bad)}",
                "Remove them from dpop.algorithms (RFC 9449 §4.3 step 5).",
                fail=True,
            )
        )
    if not algs:
        problems.append(
            Problem("low", "no proof algorithm is allowed: every proof is refused", "List ES256 in dpop.algorithms.")
        )
    items = [setting(evidence, "dpop.algorithms")]
    for source in evidence.trust_sources:
        if source.kind == "oidc":
            weak = [a for a in source.algorithms if a not in ASYMMETRIC_ALGS]
            items.append(Item(f"oidc issuer {source.name}", fmt(source.algorithms), "tether.toml [[oidc_issuers]]"))
            if weak:
                problems.append(
                    Problem(
                        "critical",
                        f"OIDC issuer {source.name} allows {fmt(weak)}",
                        "Allow only asymmetric algorithms for the issuer.",
                        fail=True,
                    )
                )
    return [judge(problems, "only asymmetric signature algorithms are accepted", items)]


@control(TOKEN_CONTROLS, "TASK-01", "Task caps bound duration, depth and token count")
def task_caps(evidence: Evidence) -> list[Outcome]:
    problems = _bounded(evidence, TASK_BOUNDS, "", "Lower {key} to at most {n}.")
    keys = [*TASK_BOUNDS, "tasks.default_max_depth", "tasks.default_max_tokens"]
    return [
        judge(
            problems, "every task has a hard cap on duration, delegation depth and tokens", [setting(evidence, k) for k in keys]
        )
    ]


@control(TOKEN_CONTROLS, "REV-01", "Revocations propagate quickly")
def revocation_reach(evidence: Evidence) -> list[Outcome]:
    stale = int(evidence.value("gateway.stale_after"))
    heartbeat = min(2.0, stale / 3)
    items = [
        setting(evidence, "gateway.stale_after", "gateway refuses after no word from the feed for"),
        Item("feed heartbeat asked for", f"{heartbeat:g}s", "min(2, stale_after / 3), tether.resource.revocations"),
        setting(evidence, "tokens.hop_ttl", "longest exposure of a hop token at a non-subscribing service"),
    ]
    problems = []
    if stale > STALE_LIMIT:
        problems.append(
            Problem(
                "medium",
                f"a disconnected gateway trusts its revocation view for {stale}s",
                f"Lower gateway.stale_after to at most {STALE_TARGET} seconds.",
            )
        )
    elif stale > STALE_TARGET:
        problems.append(
            Problem(
                "low",
                f"a disconnected gateway trusts its revocation view for {stale}s",
                f"Lower gateway.stale_after to at most {STALE_TARGET} seconds.",
            )
        )
    lag = evidence.lag
    if lag is not None and lag.seconds is not None:
        items.append(Item("measured revocation lag", f"{lag.seconds:.3f}s", "tether report --measure (task cancel → feed)"))
        if lag.seconds > LAG_TARGET:
            problems.append(
                Problem(
                    "medium",
                    f"revocation took {lag.seconds:.1f}s to reach a subscriber",
                    "Check the STS and store load and the network path to the feed.",
                )
            )
    elif lag is not None:
        items.append(Item("measured revocation lag", "not measured", lag.error or "unknown error"))
        problems.append(
            Problem(
                "low",
                f"the revocation lag could not be measured: {lag.error}",
                "Run tether report --measure while the STS is reachable.",
            )
        )
    return [judge(problems, f"revocations reach subscribers within {stale}s at worst", items)]
