"""``tether serve`` as the operator runs it: ``TETHER_LOGGING_FORMAT=json`` gives redacted JSON lines on stderr,
and ``/metrics`` of the fresh process counts exactly the exchanges made (issue 8).

The STS runs in a subprocess with ``TETHER_LOGGING_LEVEL=debug``; an admin workload
exchanges its JWT-SVID (one nonce challenge, one token), then replays the same SVID
(``invalid_grant``). The counters of a fresh process are exact. Every stderr line must
be a JSON object with ts/level/logger/message, uvicorn's own lines included, and no
SVID, proof or token may appear on stderr or stdout (BCP-13).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from obskit import scrape, value

from helpers import ADMIN, JWT, TOKEN_EXCHANGE, make_deployment
from tether.agent.proof import DPoPKey
from tether.identity.dev_issuer import DevTrustDomain
from tether.keys.sealed import load_master_key

TETHER = str(Path(sys.prefix) / "bin" / "tether")

pytestmark = pytest.mark.slow


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], err: Path) -> None:
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while True:
            assert proc.poll() is None, f"tether serve exited: {err.read_text()}"
            try:
                if http.get(url + "/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"tether serve did not become healthy: {err.read_text()}"
            time.sleep(0.1)


def _exchange(http: httpx.Client, url: str, key: DPoPKey, svid: str, nonce: str | None) -> tuple[httpx.Response, str]:
    proof = key.proof("POST", url + "/token", nonce=nonce, now=time.time())
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": svid, "subject_token_type": JWT}
    return http.post(url + "/token", data=form, headers={"DPoP": proof}), proof


def test_BCP_13_serve_logs_json_to_stderr_redacted_and_counts_exactly(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "deploy")
    assert config.path is not None
    url = config.issuer
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env |= {"TETHER_LOGGING_FORMAT": "json", "TETHER_LOGGING_LEVEL": "debug", "COLUMNS": "200", "NO_COLOR": "1"}
    err, out = tmp_path / "stderr.log", tmp_path / "stdout.log"
    domain = DevTrustDomain.load(config.data_dir, "tether.local", load_master_key(config.master_key_file))
    with err.open("wb") as err_sink, out.open("wb") as out_sink:
        proc = subprocess.Popen([TETHER, "serve", "--config", str(config.path)], stdout=out_sink, stderr=err_sink, env=env)
        try:
            _wait_healthy(url, proc, err)
            key = DPoPKey()
            svid = domain.issue(ADMIN, audience=url, ttl=120, now=int(time.time()))
            with httpx.Client(timeout=10.0, trust_env=False) as http:
                challenged, first_proof = _exchange(http, url, key, svid, None)
                assert challenged.json()["error"] == "use_dpop_nonce"
                issued, second_proof = _exchange(http, url, key, svid, challenged.headers["dpop-nonce"])
                assert issued.status_code == 200, issued.text
                token = issued.json()["access_token"]
                replayed, third_proof = _exchange(http, url, key, svid, issued.headers["dpop-nonce"])
                assert replayed.json()["error"] == "invalid_grant"
            samples = scrape(url)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    assert value(samples, "tether_tokens_issued_total", kind="admin") == 1
    assert value(samples, "tether_refusals_total", endpoint="token", error="use_dpop_nonce") == 1
    assert value(samples, "tether_refusals_total", endpoint="token", error="invalid_grant") == 1
    assert value(samples, "tether_exchange_seconds_count", kind="admin") == 1
    assert value(samples, "tether_exchange_seconds_count", kind="refused") == 2

    stderr = err.read_text(encoding="utf-8")
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records, "tether serve wrote no log line"
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert "uvicorn.error" in {r["logger"] for r in records}  # uvicorn's own lines go through the same handler
    everything = stderr + out.read_text(encoding="utf-8")
    for secret in (svid, token, first_proof, second_proof, third_proof):
        assert secret not in everything
