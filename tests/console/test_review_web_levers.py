"""Review: what a stranger's request costs the console (SECURITY WEB-04; unauthenticated levers are bounded).

``GET /login/oidc`` and ``GET /login/callback`` need no login. Each built a new ``httpx`` client,
and a client builds a TLS context that loads the whole CA bundle (tens of milliseconds of CPU),
even when the provider's discovery document is cached or the callback is refused before any
fetch: a few dozen requests a second from anyone kept a core busy. The TLS context is now built
once per process; these tests count how many are built (the real ``ssl`` module, only counted).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from consolekit import RunningConsole, running_console

from helpers import free_port


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    # a provider that does not answer: discovery fails, which is when a stranger's request should cost least
    toml = f'[console.oidc]\nissuer = "http://127.0.0.1:{free_port()}"\nclient_id = "tether-console"\n'
    with running_console(tmp_path_factory.mktemp("review-levers"), extra_toml=toml) as running:
        yield running


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built = [0]
    real: Callable[..., ssl.SSLContext] = ssl.create_default_context

    def counted(*args: Any, **kw: Any) -> ssl.SSLContext:
        built[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    return built


def test_web04_strangers_starting_logins_do_not_each_build_a_tls_context(
    console: RunningConsole, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = console.browser()  # its own client is built before the counting starts
    stranger.get("/login/oidc")  # the first request may build the process's one context
    built = _counting(monkeypatch)
    for _ in range(10):
        assert stranger.get("/login/oidc").status_code == 503  # the provider is not answering
    for _ in range(10):
        assert stranger.get("/login/callback", params={"code": "x", "state": "y"}).status_code == 403
    assert built[0] == 0, f"{built[0]} TLS contexts built for 20 unauthenticated requests"
