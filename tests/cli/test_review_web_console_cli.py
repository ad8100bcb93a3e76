"""Review: ``tether console --host`` off loopback needs an https ``public_url`` (SECURITY WEB-01).

See ``tests/console/test_review_web_transport.py``: the console serves plain HTTP, so off loopback
its login link and session cookie would cross the network in the clear.
"""

from __future__ import annotations

from pathlib import Path

from cli_support import tether

from helpers import make_deployment


def test_web01_tether_console_host_flag_off_loopback_without_https_is_refused(tmp_path: Path) -> None:
    cfg = make_deployment(tmp_path)
    assert cfg.path is not None
    refused = tether("console", "-c", str(cfg.path), "--host", "0.0.0.0", timeout=20)
    assert refused.returncode == 2 and "https" in refused.stderr, refused.stdout + refused.stderr
