"""``tether console`` and ``tether serve`` with ``[console] enabled``: the real executable, real HTTP (WEB-04)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
from cli_support import TETHER, _env, serving, tether

from helpers import free_port, make_deployment

_LINK = re.compile(r"(http://\S+/login/link\?t=\S+)")


def _log_in(http: httpx.Client, link: str) -> httpx.Response:
    base, token = link.split("/login/link?t=", 1)
    shown = http.get(link)
    assert shown.status_code == 200 and "works once" in shown.text
    return http.post(base + "/login/link", data={"t": token})


def test_console_serves_and_its_printed_link_logs_in_once(tmp_path: Path) -> None:
    cfg = make_deployment(tmp_path)
    assert cfg.path is not None
    port = free_port()
    log = tmp_path / "console.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([TETHER, "console", "-c", str(cfg.path), "--port", str(port), "--role", "viewer"],
                                stdout=sink, stderr=sink, env=_env())  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not _LINK.search(log.read_text()) and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            found = _LINK.search(log.read_text())
            assert found is not None, log.read_text()
            link = found.group(1)
            assert link.startswith(f"http://127.0.0.1:{port}/")
            with httpx.Client(timeout=5, trust_env=False) as http:
                first = _log_in(http, link)
                assert first.status_code == 303 and "__Host-tether-session=" in first.headers["set-cookie"]
                reused = http.post(link.split("/login/link?t=")[0] + "/login/link", data={"t": link.split("?t=")[1]})
                assert reused.status_code == 403 and "used already" in reused.text
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


def test_console_link_only_prints_a_link_and_refuses_a_bad_role(tmp_path: Path) -> None:
    cfg = make_deployment(tmp_path)
    assert cfg.path is not None
    printed = tether("console", "-c", str(cfg.path), "--link", "--as", "console:olga")
    assert printed.returncode == 0 and _LINK.search(printed.stdout), printed.stdout + printed.stderr
    bad = tether("console", "-c", str(cfg.path), "--link", "--role", "root")
    assert bad.returncode == 2 and "--role" in bad.stderr


def test_serve_with_console_enabled_serves_both_ports(tmp_path: Path) -> None:
    console_port = free_port()
    cfg = make_deployment(tmp_path, extra_toml=f"[console]\nenabled = true\nport = {console_port}\n")
    assert cfg.path is not None
    with serving(cfg.path, cfg.issuer, log=tmp_path / "serve.log"):
        printed = tether("console", "-c", str(cfg.path), "--link")
        link = _LINK.search(printed.stdout)
        assert link is not None and f":{console_port}/" in link.group(1)
        with httpx.Client(timeout=5, trust_env=False) as http:
            assert _log_in(http, link.group(1)).status_code == 303
            assert http.get(cfg.issuer + "/healthz").status_code == 200
