"""Kit for the console tests: a real STS with the console beside it on loopback, humans logged in.

``running_console`` serves a deployment's STS (``helpers.serving``) and, on its own port, the
console with its own runtime on the same store (as ``tether console`` runs beside ``tether
serve``), so what the console shows and does crosses the store as it does in production. Logging in goes
through the real one-time link flow (GET shows the button, POST spends the link). The session
cookie is ``__Host-`` and ``Secure``: a browser sends it to a loopback ``http`` origin, but
Python's cookie jar never sends a Secure cookie over ``http``, so ``Browser`` carries the
cookie itself, as a browser would.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from helpers import QUIET_MONITOR, RunningSts, ServerThread, free_port, make_deployment, serving
from tether.clock import ManualClock
from tether.config import Config
from tether.console.app import create_console_app
from tether.console.login import mint_link
from tether.console.web import COOKIE
from tether.sts.bootstrap import Sts, build_sts

__all__ = ["Browser", "RunningConsole", "console_for", "csrf_of", "running_console"]

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(html)
    assert found is not None, "page has no form with a CSRF token"
    return found.group(1)


@dataclass
class Browser:
    """An HTTP client that keeps the console's session cookie the way a browser does."""

    console: RunningConsole
    http: httpx.Client
    cookie: str | None = None

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        if self.cookie is not None:
            out["Cookie"] = f"{COOKIE}={self.cookie}"
        return out

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for value in response.headers.get_list("set-cookie"):
            name, _, rest = value.partition("=")
            if name == COOKIE:
                content = rest.split(";", 1)[0]
                self.cookie = content or None
        return response

    def get(self, path: str, **kw: Any) -> httpx.Response:
        headers = self._headers(kw.pop("headers", None))
        return self._keep(self.http.get(self.console.url + path, headers=headers, **kw))

    def post(self, path: str, data: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        headers = self._headers(kw.pop("headers", None))
        return self._keep(self.http.post(self.console.url + path, data=data or {}, headers=headers, **kw))

    def csrf(self, path: str = "/") -> str:
        """The CSRF token on ``path`` (a page with a form: every page has the logout form)."""
        page = self.get(path)
        assert page.status_code == 200, page.text[:300]
        return csrf_of(page.text)


@dataclass
class RunningConsole:
    sts: RunningSts
    runtime: Sts
    thread: ServerThread
    browsers: list[Browser] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.thread.port}"

    @property
    def key(self) -> bytes:
        return self.runtime.ctx.console_key

    def link(self, role: str = "operator", principal: str = "console:ops", *, ttl: int = 300) -> str:
        """A one-time login link, as ``tether console --link`` prints it."""
        return mint_link(self.key, self.url, principal=principal, role=role, now=self.sts.clock.now(), ttl=ttl)

    def browser(self) -> Browser:
        http = httpx.Client(timeout=10.0, trust_env=False, follow_redirects=False)
        browser = Browser(self, http)
        self.browsers.append(browser)
        return browser

    def login(self, role: str = "operator", principal: str = "console:ops") -> Browser:
        """A browser logged in through a fresh one-time link."""
        browser = self.browser()
        link = self.link(role, principal)
        token = link.split("?t=", 1)[1]
        shown = browser.get("/login/link", params={"t": token})
        assert shown.status_code == 200, shown.text[:300]
        done = browser.post("/login/link", {"t": token})
        assert done.status_code == 303 and browser.cookie, done.text[:300]
        return browser


@contextlib.contextmanager
def running_console(directory: Path, *, extra_toml: str = "", clock: ManualClock | None = None) -> Iterator[RunningConsole]:
    """A deployment's STS and its console on two loopback ports."""
    config = make_deployment(directory, extra_toml=QUIET_MONITOR + "\n" + extra_toml)
    with console_for(config, clock or ManualClock()) as console:
        yield console


@contextlib.contextmanager
def console_for(config: Config, clock: ManualClock) -> Iterator[RunningConsole]:
    """An existing deployment's STS (``helpers.serving``) and its console beside it."""
    with serving(config, clock) as sts:
        runtime = build_sts(config, clock=sts.clock, upkeep=False)
        thread = ServerThread(create_console_app(runtime), free_port()).start()
        console = RunningConsole(sts, runtime, thread)
        try:
            yield console
        finally:
            for browser in console.browsers:
                browser.http.close()
            thread.stop()
