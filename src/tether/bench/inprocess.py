"""In-process rows: resource-server verification, the JWS gate's two paths, and Cedar decisions.

Verification is what every protected call pays (the token's signature and claims, RFC 9068 §4;
the proof and its replay check, RFC 9449 §4.3; the revocation view); its floor is the two raw
ES256 verifications. Proofs are unique and signed before the clock starts, and one hop token
serves several calls, as in practice. ``verify_compact`` on DPoP proofs and ``sign_compact`` on
access-token claims are timed on the joserfc path and the fast path in alternating rounds, beside
the raw pyca/cryptography operation timed in the same rounds. Cedar is timed on the starter set,
cold and cached.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.jwk import ECKey

from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.bench.harness import percentile
from tether.bench.report import Row, SignatureCosts
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.jwks_cache import KeySet, StaticKeySource
from tether.keys.keyring import public_jwk
from tether.model import Task
from tether.policy.engine import PolicyEngine
from tether.policy.entities import ExchangeQuestion, call_request, exchange_request
from tether.provision import install_starter_policies
from tether.resource.revocations import RevocationFeed
from tether.resource.verifier import ResourceSettings, Verifier
from tether.rules.claims import Grant, build_claims
from tether.rules.dpop import MAX_PROOF_LENGTH, parse_public_jwk
from tether.rules.jws import sign_compact, sign_compact_joserfc, verify_compact, verify_compact_joserfc

__all__ = ["cedar_rows", "verify_rows"]

ISSUER = "http://127.0.0.1:8700"
RESOURCE = "https://b.bench.example"
AGENT = "spiffe://tether.local/agent/bench"
SERVICE = "spiffe://tether.local/svc/bench"


def _access_claims(jkt: str, now: int) -> dict[str, Any]:
    grant = Grant(
        sub=AGENT,
        aud=RESOURCE,
        scope=frozenset({"read"}),
        exp=now + 300,
        client_id=AGENT,
        agent=AGENT,
        jkt=jkt,
        txn="task-bench",
    )
    return build_claims(grant, issuer=ISSUER, jti=secrets.token_urlsafe(16), now=now)


def _issued_token(issuer_key: ECKey, kid: str, jkt: str, now: int) -> str:
    claims = _access_claims(jkt, now)
    return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": kid}, claims, issuer_key, "ES256")


def _verifier(issuer_key: ECKey, policy: PolicyEngine | None) -> Verifier:
    jwk = public_jwk(issuer_key, "ES256")
    keys = StaticKeySource(KeySet([ECKey.import_key(jwk)]))
    # nothing is fetched: the keys are static and the feed, never started, is marked as just heard from
    http = httpx.AsyncClient(trust_env=False)
    identity = DevIdentity(DevTrustDomain("tether.local", ECKey.generate_key("P-256", private=True)), SERVICE)
    feed = RevocationFeed(ISSUER, http, identity=identity, stale_after=3600)
    feed.last_heard = time.time()
    settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE)
    return Verifier(settings, http=http, keys=keys, feed=feed, policy=policy)


async def _time_verifies(verifier: Verifier, calls: list[tuple[str, str]], path: str) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    for token, proof in calls:
        t0 = time.perf_counter()
        await verifier.verify(
            method="GET",
            path=path,
            headers={"authorization": f"DPoP {token}", "dpop": proof},
            client="127.0.0.1",
        )
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies


_VARIANTS = (
    ("a new token every call", False, False),
    ("one token reused, new proof per call", True, False),
    ("one token reused + starter Cedar call policy", True, True),
)


def verify_rows(workdir: Path, costs: SignatureCosts, *, duration: float) -> list[Row]:
    """Token + DPoP proof verification in-process: fresh tokens, a reused token, and with Cedar."""
    issuer_key = ECKey.generate_key("P-256", private=True)
    kid = public_jwk(issuer_key, "ES256")["kid"]
    agent = DPoPKey()
    n = max(2000, int(duration * 3000))
    policy_dir = workdir / "policies"
    install_starter_policies(policy_dir)
    path = "/search"
    rows: list[Row] = []
    for label, reuse, with_policy in _VARIANTS:
        now = int(time.time())
        tokens = [_issued_token(issuer_key, kid, agent.jkt, now)] * n if reuse else None
        tokens = tokens or [_issued_token(issuer_key, kid, agent.jkt, now) for _ in range(n)]
        calls = [(t, agent.proof("GET", RESOURCE + path, access_token=t, now=now)) for t in tokens]
        verifier = _verifier(issuer_key, PolicyEngine(policy_dir) if with_policy else None)

        async def run(v: Verifier = verifier, c: list[tuple[str, str]] = calls) -> tuple[float, list[float]]:
            await _time_verifies(v, c[:200], path)  # warm-up: key parse, caches
            try:
                return await _time_verifies(v, c[200:], path)
            finally:
                await v.aclose()

        elapsed, latencies = asyncio.run(run())
        rows.append(
            Row(
                f"resource-server verify, in-process: {label}",
                len(latencies) / elapsed,
                "ops/s",
                costs.floor_rate(verifies=2, signs=0),
                "ops/s (2 raw ES256 verifies: token + proof)",
                "" if with_policy else "≥ 70 % of floor",
                {
                    "p50_us": round(percentile(latencies, 0.5) * 1e6, 1),
                    "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
                    "ops": len(latencies),
                    "token_signature_verified": "once, then cached" if reuse else "every call",
                },
            )
        )
    return rows + jws_rows(duration=duration)


#: the DPoP proof header names ``rules.dpop`` allows, and its resolver: the proof's own ``jwk``
_PROOF_HEADERS = frozenset({"typ", "alg", "jwk", "kid"})
_ES256 = ec.ECDSA(hashes.SHA256())


def _time_paths(paths: Mapping[str, Callable[[int], object]], n: int, rounds: int = 10) -> dict[str, tuple[list[float], float]]:
    """Each path over ``n`` inputs in ``rounds`` alternating slices (so drift on a shared machine
    falls on every path alike): per-op wall latencies and CPU seconds per op."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
    for fn in paths.values():  # warm-up: key parse, header memo, registries
        for i in range(min(100, n)):
            fn(i)
    step = max(1, n // rounds)
    for start in range(0, n, step):
        for name, fn in paths.items():
            c0 = time.process_time()
            for i in range(start, min(n, start + step)):
                t0 = time.perf_counter()
                fn(i)
                samples[name].append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - c0
    return {name: (samples[name], cpu[name] / len(samples[name])) for name in paths}


def _jws_row(name: str, latencies: list[float], cpu_s: float, floor: tuple[list[float], float], what: str) -> Row:
    """Rated per CPU second (a shared machine preempts wall time, not CPU time), beside the raw
    operation rated the same way in the same rounds; wall-clock p50/p99 per operation in the notes."""
    floor_latencies, floor_cpu_s = floor
    return Row(
        name,
        1 / cpu_s,
        "ops/CPU-s",
        1 / floor_cpu_s,
        f"ops/CPU-s ({what})",
        notes={
            "cpu_us_per_op": round(cpu_s * 1e6, 1),
            "floor_cpu_us_per_op": round(floor_cpu_s * 1e6, 1),
            "over_floor_cpu_us": round((cpu_s - floor_cpu_s) * 1e6, 1),
            "p50_us": round(percentile(latencies, 0.5) * 1e6, 1),
            "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
            "floor_p50_us": round(percentile(floor_latencies, 0.5) * 1e6, 1),
            "ops": len(latencies),
        },
    )


def jws_rows(*, duration: float) -> list[Row]:
    """``verify_compact`` on DPoP proofs (ES256, embedded ``jwk``, resolved as ``rules.dpop`` does)
    and ``sign_compact`` on access-token claims: joserfc path, fast path, raw pyca/cryptography."""
    agent = DPoPKey()
    private = ec.generate_private_key(ec.SECP256R1())
    issuer_key = ECKey.import_key(private)
    kid = public_jwk(issuer_key, "ES256")["kid"]
    now = int(time.time())
    n = max(1000, int(duration * 600))
    proofs = [agent.proof("GET", RESOURCE + "/search", access_token="t" * 400, now=now) for _ in range(n)]
    header = {"typ": "at+jwt", "alg": "ES256", "kid": kid}
    claims = [_access_claims(agent.jkt, now) for _ in range(n)]

    def resolve(header: Mapping[str, Any]) -> Any:
        return parse_public_jwk(header.get("jwk"))

    def verifier(verify: Callable[..., object]) -> Callable[[int], object]:
        def run(i: int) -> object:
            return verify(
                proofs[i],
                algorithms=("ES256",),
                allowed_headers=_PROOF_HEADERS,
                resolve_key=resolve,
                max_length=MAX_PROOF_LENGTH,
                self_asserted_key=True,
            )

        return run

    raw_public = ECKey.import_key(agent.public_jwk).public_key
    raw_inputs = [(p.rsplit(".", 1)[0].encode("ascii"), _raw_signature(p)) for p in proofs]

    def raw_verify(i: int) -> None:
        message, (r, s) = raw_inputs[i]
        raw_public.verify(encode_dss_signature(r, s), message, _ES256)

    signing_input = [sign_compact(header, c, issuer_key, "ES256").rsplit(".", 1)[0].encode("ascii") for c in claims]
    verified = _time_paths(
        {"raw": raw_verify, "joserfc": verifier(verify_compact_joserfc), "fast": verifier(verify_compact)}, n
    )
    signed = _time_paths(
        {
            "raw": lambda i: private.sign(signing_input[i], _ES256),
            "joserfc": lambda i: sign_compact_joserfc(header, claims[i], issuer_key, "ES256"),
            "fast": lambda i: sign_compact(header, claims[i], issuer_key, "ES256"),
        },
        n,
    )
    rows = []
    for path in ("joserfc", "fast"):
        rows.append(
            _jws_row(
                f"JWS verify_compact, DPoP proof ES256 + jwk: {path} path", *verified[path], verified["raw"], "raw ES256 verify"
            )
        )
    for path in ("joserfc", "fast"):
        rows.append(
            _jws_row(
                f"JWS sign_compact, access-token claims ES256: {path} path", *signed[path], signed["raw"], "raw ES256 sign"
            )
        )
    return rows


def _raw_signature(token: str) -> tuple[int, int]:
    raw = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _task(i: int, now: int) -> Task:
    return Task(
        id=f"task-{i}",
        agent=AGENT,
        audiences=(RESOURCE, "https://c.bench.example"),
        scopes=frozenset({"read", "write"}),
        created_at=now - 5,
        expires_at=now + 600,
        max_depth=3,
        max_tokens=1000,
        purpose="bench",
    )


def cedar_rows(workdir: Path, *, n: int = 2000) -> list[Row]:
    """Starter policy set: ``exchange`` and ``call`` decisions, cold and from the decision cache."""
    policy_dir = workdir / "cedar-policies"
    install_starter_policies(policy_dir)
    engine = PolicyEngine(policy_dir)
    now = int(time.time())
    exchanges = [
        exchange_request(
            ExchangeQuestion(
                kind="hop",
                principal=AGENT,
                principal_kind="spiffe",
                audience=RESOURCE,
                task=_task(i, now),
                scopes=("read",),
                actors=(),
                subject=AGENT,
                now=now,
                client="127.0.0.1",
                admins=("spiffe://tether.local/admin",),
                tags={},
            )
        )
        for i in range(n)
    ]
    calls = [
        call_request(
            caller=AGENT,
            service=RESOURCE,
            method="GET",
            path=f"/search/{i}",
            scopes=("read",),
            actors=(),
            subject=AGENT,
            agent=AGENT,
            task=f"task-{i}",
            purpose="bench",
            token_age=3,
            now=now,
            client="127.0.0.1",
            tags={},
        )
        for i in range(n)
    ]
    rows: list[Row] = []
    for action, requests in (("exchange", exchanges), ("call", calls)):
        for label, batch in (("cold", requests), ("cached", [requests[0]] * n)):
            latencies: list[float] = []
            allowed = 0
            for request in batch:
                t0 = time.perf_counter()
                decision = engine.authorize(request)
                latencies.append(time.perf_counter() - t0)
                allowed += decision.allowed
            rows.append(
                Row(
                    f"Cedar decision, starter policies, {action} ({label})",
                    percentile(latencies, 0.5) * 1e6,
                    "µs p50",
                    target="",
                    notes={
                        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
                        "policies": len(engine.current.policies) if engine.current else 0,
                        "allowed": f"{allowed}/{len(batch)}",
                    },
                )
            )
    return rows
