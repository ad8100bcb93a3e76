"""Issue 14 item 3: a PostgreSQL outage fails fast and heals by itself.

An STS on PostgreSQL (a fresh schema, reached through ``tests/faults.py``'s TCP proxy) and the
shared Redis. While the proxy refuses connections, ``/token`` and ``/healthz`` answer 503
``temporarily_unavailable`` with ``Retry-After`` — each at once, not after the pool's 5 s
timeout as before the circuit breaker, so twenty of each finish well inside a bound those 5 s
would blow — and nothing is granted. The edge logs the outage once, not once per refusal, and
``/healthz`` not at all above debug level. When the proxy forwards again, the same STS process
serves a good exchange by itself, and the audit chain still verifies.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faults import TcpProxy, tcp_proxy
from helpers import QUIET_MONITOR, RunningSts, admin_token, create_task, serving
from services import PG_HOST, PG_PORT, REDIS_URL, drop_schema, new_schema, require_postgres_and_redis, schema_dsn
from tether.clock import ManualClock
from tether.config import Config, load_config
from tether.provision import initialize, render_config
from tether.web import errors
from tether.web.server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

AUDIENCE = "http://127.0.0.1:9001"
#: twenty refusals of each kind; with the old 5 s pool timeout one alone took 5 s
REQUESTS = 20
OUTCOME_BOUND = 5.0
#: how long the database stays away: long enough for the background loops to retry many times
OUTAGE = 3.0


def _deployment(directory: Path, dsn: str, prefix: str) -> Config:
    issuer = f"http://127.0.0.1:{free_port()}"
    directory.mkdir(parents=True, exist_ok=True)
    text = render_config(issuer).replace('store = "sqlite"', 'store = "postgres"')
    text += f'\n[postgres]\ndsn = "{dsn}"\n\n[redis]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n\n{QUIET_MONITOR}\n'
    (directory / "tether.toml").write_text(text, encoding="utf-8")
    initialize(directory, issuer=issuer)
    return load_config(directory / "tether.toml")


@pytest.fixture
def outage_sts(tmp_path: Path) -> Iterator[tuple[RunningSts, TcpProxy]]:
    require_postgres_and_redis()
    schema = new_schema()
    try:
        with tcp_proxy((PG_HOST, PG_PORT)) as proxy:
            config = _deployment(tmp_path / "sts", schema_dsn(schema, port=proxy.port), schema)
            with serving(config, ManualClock()) as sts:
                yield sts, proxy
    finally:
        drop_schema(schema)


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers.get("retry-after") == "1"
    assert "access_token" not in response.text


def _circuit_gauge(http: httpx.Client, sts: RunningSts) -> str:
    lines = [line for line in http.get(sts.url + "/metrics").text.splitlines() if line.startswith("tether_store_circuit_open")]
    assert len(lines) == 1, lines
    return str(float(lines[0].split()[-1]))


def _wait_for_health(http: httpx.Client, sts: RunningSts, status: int) -> None:
    """``/healthz`` reuses its last outcome for a second: wait (bounded) until it reports ``status``."""
    deadline = time.monotonic() + 10
    while http.get(sts.url + "/healthz").status_code != status:
        assert time.monotonic() < deadline, f"/healthz never answered {status}"
        time.sleep(0.05)


def test_postgres_refusing_connections_answers_503_at_once_and_recovers_by_itself(
    outage_sts: tuple[RunningSts, TcpProxy], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sts, proxy = outage_sts
    monkeypatch.setattr(errors, "_outage_logs", {})  # this process's earlier tests' refusals do not count
    task = create_task(sts, audiences=[AUDIENCE])
    client, _ = admin_token(sts)
    session = client.session(task["id"])
    assert session.status_code == 200, session.text
    subject = session.json()["access_token"]
    assert client.hop(subject, AUDIENCE).status_code == 200, "positive control before the outage"
    http = httpx.Client(timeout=30.0, trust_env=False)
    try:
        assert http.get(sts.url + "/healthz").status_code == 200
        assert _circuit_gauge(http, sts) == "0.0"

        caplog.set_level(logging.INFO, logger="tether")
        proxy.refuse()
        started = time.monotonic()
        hops = [client.hop(subject, AUDIENCE) for _ in range(REQUESTS)]
        elapsed = time.monotonic() - started
        _wait_for_health(http, sts, 503)  # the 200 from before the fault may be reused for a second
        health_started = time.monotonic()
        health = [http.get(sts.url + "/healthz") for _ in range(REQUESTS)]
        elapsed += time.monotonic() - health_started
        for response in hops + health:
            _assert_refused(response)
        assert elapsed < OUTCOME_BOUND, f"{2 * REQUESTS} refusals took {elapsed:.1f} s: they waited on a dead pool"
        assert _circuit_gauge(http, sts) == "1.0"
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))  # the background loops keep failing meanwhile
        edge = [r.getMessage() for r in caplog.records if r.name == "tether.web" and r.levelno >= logging.WARNING]
        assert len(edge) == 1, edge  # the first refusal; not the other hops nor any /healthz
        assert "failing closed" in edge[0]
        during = [r for r in caplog.records if r.name != "tether.web"]

        proxy.forward()  # the same STS process, not restarted
        deadline = time.monotonic() + 30
        while (response := client.hop(subject, AUDIENCE)).status_code != 200:
            _assert_refused(response)
            assert time.monotonic() < deadline, "the STS did not recover by itself"
            time.sleep(0.05)
        assert response.json()["access_token"]
        _wait_for_health(http, sts, 200)
        assert _circuit_gauge(http, sts) == "0.0"
    finally:
        http.close()
    # the feed poller (every 0.25 s), the upkeep jobs (every 1 s) and the monitor each said so once
    repeated = {m: n for m, n in Counter(f"{r.name}: {r.getMessage()}" for r in during).items() if n > 1}
    assert repeated == {}, "a background loop logged every attempt during the outage"
    assert any("revocation feed poll failed" in r.getMessage() for r in during)
    store_lines = [r.getMessage() for r in caplog.records if r.name == "tether.store"]
    assert sum("unreachable" in line for line in store_lines) == 1, store_lines
    assert sum("answers again after" in line for line in store_lines) == 1, store_lines
    _assert_chain_verifies(sts)


def _assert_chain_verifies(sts: RunningSts) -> None:
    """``tether audit verify`` on the deployment: the outage left the chain intact."""
    verify = subprocess.run(
        [sys.executable, "-c", "from tether.cli import main; main()", "audit", "verify", "--config", str(sts.config.path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout
