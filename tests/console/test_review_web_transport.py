"""Review: the console never hands a session cookie or a login link over plain HTTP off loopback (WEB-01).

The console has no TLS of its own: it serves ``http``. On loopback that is the "loopback dev"
exception of WEB-01. On any other address a network observer reads the login link in the
request and the session cookie in the ``Set-Cookie`` answer (a browser keeps a ``Secure`` cookie
from a plain-HTTP page to itself, but the bytes crossed the wire all the same, and ``curl``
replays them). So a console bound off loopback needs a TLS front and an ``https`` public URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_deployment
from tether.errors import ConfigError


@pytest.mark.parametrize("public_url", ["", "http://console.example.com"])
def test_web01_console_on_a_network_address_over_plain_http_is_refused(tmp_path: Path, public_url: str) -> None:
    toml = f'[console]\nenabled = true\nhost = "0.0.0.0"\npublic_url = "{public_url}"\n'
    with pytest.raises(ConfigError) as refused:
        make_deployment(tmp_path / "plain", extra_toml=toml)
    assert "https" in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_web01_console_on_loopback_may_be_plain_http(tmp_path: Path, host: str) -> None:
    cfg = make_deployment(tmp_path / host.replace(":", "_"), extra_toml=f'[console]\nhost = "{host}"\n')
    assert cfg.console.host == host


def test_web01_console_on_a_network_address_behind_https_is_accepted(tmp_path: Path) -> None:
    toml = '[console]\nhost = "0.0.0.0"\npublic_url = "https://console.example.com"\n'
    assert make_deployment(tmp_path, extra_toml=toml).console.public_url == "https://console.example.com"
