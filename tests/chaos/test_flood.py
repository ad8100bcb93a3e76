"""A flood of malformed and anonymous requests (issue 14, chaos suite).

16 clients send a few thousand requests nobody authenticated: garbage bodies, unknown
grants, junk and oversized DPoP headers, workload JWTs signed by nobody, bearer tokens
that are not tokens, unknown paths. The STS (a ``tether serve`` process on SQLite, with the
default ``[audit] refusal_interval``) answers every one with a 4xx, never a 5xx; an agent's
good exchange is served in the middle of it; the audit log grows by a bounded number of
records (the first refusal per source, kind and error is written, the rest are counted,
``tether.audit.anonymous``) instead of one per request; and the server's resident memory
stays near its baseline (a generous bound: a leak per request would show, allocator
noise does not). The run ends with ``tether audit verify`` and a positive control.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hopload import WORKERS, audit_records, audit_verify, positive_control, sqlite_cluster
from scalekit import AGENT, JWT, TOKEN_EXCHANGE, Cluster

from tether.agent.proof import DPoPKey

pytestmark = [pytest.mark.slow]

FLOOD = 1_600
#: records the flood may add: a first record per (source, kind, error, markers) key, plus the good exchange's
#: (measured: none at all, as the warm-up wrote each key's first record in the same interval; with
#: ``refusal_interval = 0`` a 2,400-request flood adds about 2,100)
AUDIT_BOUND = 40
#: resident memory after the flood, against the baseline after warm-up
RSS_GROWTH_MIB = 32


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged_jwt() -> str:
    header = b64url_encode(b'{"alg":"ES256","kid":"nobody","typ":"JWT"}')
    claims = b64url_encode(b'{"sub":"spiffe://tether.local/agent/research","aud":["x"],"exp":9999999999}')
    return f"{header}.{claims}.{b64url_encode(b'x' * 64)}"


Request = Callable[[httpx.Client, str, DPoPKey], httpx.Response]


def _requests(issuer: str) -> list[Request]:
    token_url = issuer + "/token"
    exchange = {"grant_type": TOKEN_EXCHANGE, "subject_token": _forged_jwt(), "subject_token_type": JWT}

    def proof(key: DPoPKey, method: str = "POST", url: str = token_url) -> str:
        return key.proof(method, url)

    form = {"content-type": "application/x-www-form-urlencoded"}
    forged_bearer = "DPoP " + _forged_jwt()
    tasks_url = issuer + "/tasks"

    return [
        lambda h, u, k: h.post(u + "/token"),
        lambda h, u, k: h.post(u + "/token", content=b"\xff\xfe\x00garbage=%%%", headers=form),
        lambda h, u, k: h.post(u + "/token", json={"grant_type": TOKEN_EXCHANGE}),
        lambda h, u, k: h.post(u + "/token", data={"grant_type": "password", "username": "a"}, headers={"DPoP": proof(k)}),
        lambda h, u, k: h.post(u + "/token", data=exchange, headers={"DPoP": "not.a.proof"}),
        lambda h, u, k: h.post(u + "/token", data=exchange, headers={"DPoP": "x" * 9000}),
        lambda h, u, k: h.post(u + "/token", data=exchange, headers={"DPoP": proof(k)}),
        lambda h, u, k: h.post(u + "/token", data={**exchange, "subject_token": "a" * 70_000}, headers={"DPoP": proof(k)}),
        lambda h, u, k: h.post(u + "/token", content=b"a=" + b"b" * 200_000, headers=form),
        lambda h, u, k: h.get(u + "/tasks", headers={"Authorization": forged_bearer, "DPoP": proof(k, "GET", tasks_url)}),
        lambda h, u, k: h.post(u + "/tasks", content=b"{", headers={"Authorization": "Bearer nope"}),
        lambda h, u, k: h.post(u + "/introspect", data={"token": "x", "client_assertion": "y", "client_assertion_type": "z"}),
        lambda h, u, k: h.post(u + "/revoke", data={"token": _forged_jwt()}),
        lambda h, u, k: h.get(u + "/revocations", params={"after": "-1"}),
        lambda h, u, k: h.post(u + "/principals/block", json={"agent": AGENT}),
        lambda h, u, k: h.get(u + "/no/such/path/" + "a" * 500),
    ]  # fmt: skip


def _flood(c: Cluster, total: int) -> Counter[int]:
    url = c.replicas[0].url
    kinds = _requests(c.issuer)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        key = DPoPKey()
        with httpx.Client(trust_env=False, timeout=30.0) as http:
            for n in range(index, total, WORKERS):
                status = kinds[n % len(kinds)](http, url, key).status_code
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    return statuses


def test_flood_of_malformed_and_anonymous_requests(tmp_path: Path) -> None:
    with sqlite_cluster(tmp_path) as c:
        pid = c.replicas[0].process.pid
        _flood(c, 320)  # warm-up: code paths, caches and the allocator reach their working size
        positive_control(c)
        baseline = _rss_mib(pid)
        before = len(audit_records(c.config))

        statuses: Counter[int] = Counter()
        flooding = threading.Thread(target=lambda: statuses.update(_flood(c, FLOOD)), daemon=True)
        flooding.start()
        try:
            positive_control(c)  # a good exchange is served in the middle of the flood
        finally:
            flooding.join(timeout=300)
        assert sum(statuses.values()) == FLOOD
        assert all(400 <= s < 500 for s in statuses), statuses

        added = audit_records(c.config)[before:]
        assert len(added) <= AUDIT_BOUND, Counter((r.kind, r.error) for r in added)
        assert _rss_mib(pid) <= baseline + RSS_GROWTH_MIB
        audit_verify(c.config)
        positive_control(c)
