"""``tether gateway``: the real executable serves the configured routes and warns about expired ones."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from gwkit import KEY, TETHER, Caller, GatewayEnv, tether_cli

from helpers import make_deployment
from tether.web.server import free_port


def test_tether_gateway_serves_the_routes_and_warns_about_expired_ones(gw: GatewayEnv, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update({"TETHER_GATEWAY_URL": url, "NO_COLOR": "1", "COLUMNS": "200"})
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([TETHER, "gateway", "--config", str(gw.config.path), "--port", str(port)],
                                stdout=sink, stderr=sink, env=env)  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            with httpx.Client(trust_env=False, timeout=2.0) as http:
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        health = http.get(url + "/healthz")
                        if health.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            assert health.json() == {"status": "ok"}
            aud = f"{url}/routes/apikey"
            task = gw.task(audiences=[aud])
            caller = Caller(gw, task, [], audiences=[aud])
            gw.closers.append(caller.close)
            before = len(gw.upstream.log)
            response = caller.http.get(aud + "/v1/items")
            assert response.status_code == 200, response.text
            assert gw.upstream.log[before]["headers"]["x-api-key"] == [KEY]
            assert caller.http.get(aud + "/v1/admin").status_code == 403
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    output = log.read_text()
    assert "warning" in output and "`expired`" in output and "2001-01-01" in output
    assert "`apikey`" not in output.split("listening")[0]  # positive control: a current route is not warned about
    assert KEY not in output


def test_tether_gateway_without_routes_exits_2(tmp_path: Path) -> None:
    config = make_deployment(tmp_path / "plain")
    result = tether_cli("gateway", "--config", str(config.path))
    assert result.returncode == 2 and b"no [[gateway.routes]]" in result.stderr + result.stdout


def test_healthz_answers_the_status_and_no_route_names(gw: GatewayEnv) -> None:
    """Issue 12 finding 11: ``/healthz`` is unauthenticated; route names say which legacy
    systems sit behind the gateway."""
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        health = http.get(gw.url + "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    for name in gw.gateway.routes:
        assert name not in health.text, f"/healthz names the route `{name}`"
    assert gw.caller("apikey").get("apikey", "/v1/items").status_code == 200  # positive control: the routes serve


@pytest.mark.parametrize("args", [("--help",)])
def test_tether_gateway_help(args: tuple[str, ...]) -> None:
    result = tether_cli("gateway", *args)
    assert result.returncode == 0 and b"--port" in result.stdout
