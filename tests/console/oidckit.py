"""Kit for the console's OIDC login tests: a real OpenID Provider (node ``oidc-provider``) on loopback.

``OpenIdProvider`` runs ``tests/interop/oidc_op.mjs`` (installed from npm by ``npmkit``) with one
client whose redirect URI is the console's callback, and accounts with ``email``,
``email_verified`` and ``groups``. ``oidc_console`` starts it and a console configured to log in
with it (``[console] public_url`` fixed first, so the redirect URI is exact). ``OidcBrowser``
keeps the console's two ``__Host-`` cookies (session and login in flight) as a browser would
(Python's jar never sends a Secure cookie over ``http``) and, separately, the provider's cookies;
``login`` drives the provider's own login and consent forms (``devInteractions``).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from consolekit import Browser, RunningConsole

from helpers import QUIET_MONITOR, ServerThread, free_port, make_deployment, serving
from npmkit import interop_dir, stop_node
from tether.clock import ManualClock
from tether.console.app import create_console_app
from tether.console.oidc import LOGIN_COOKIE
from tether.console.web import COOKIE
from tether.sts.bootstrap import build_sts

__all__ = ["CLIENT_ID", "SECRET_ENV", "OidcBrowser", "OidcConsole", "OpenIdProvider", "oidc_console"]

CLIENT_ID = "tether-console"
SECRET_ENV = "TETHER_TEST_CONSOLE_OIDC_SECRET"
_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')
_PROMPT = re.compile(r'name="prompt" value="([a-z]+)"')


@dataclass
class OpenIdProvider:
    """A running ``oidc-provider`` process."""

    process: subprocess.Popen[str]
    issuer: str

    @classmethod
    @contextlib.contextmanager
    def run(cls, *, port: int, clients: list[dict[str, Any]], accounts: dict[str, dict[str, Any]],
            log: Path) -> Iterator[OpenIdProvider]:  # fmt: skip
        """The provider on ``port`` until the block ends; its stderr goes to ``log`` (shown if it fails to start)."""
        directory = interop_dir()
        config = json.dumps({"port": port, "clients": clients, "accounts": accounts})
        with log.open("w") as errors:
            process = subprocess.Popen(["node", str(directory / "oidc_op.mjs"), config], cwd=directory, text=True,
                                       stdout=subprocess.PIPE, stderr=errors)  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # blocks until "ready <issuer>" or the process dies
            if not line.startswith("ready "):
                raise AssertionError(f"oidc_op.mjs did not start: {log.read_text()[-2000:]}")
            yield cls(process, line.split()[1])
        finally:
            stop_node(process)


@dataclass
class OidcBrowser(Browser):
    """A browser that keeps the console's session and login cookies, and the provider's in its own jar."""

    login_cookie: str | None = None
    op: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0, trust_env=False, follow_redirects=False))

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        jar = [f"{name}={value}" for name, value in ((COOKIE, self.cookie), (LOGIN_COOKIE, self.login_cookie)) if value]
        if jar:
            out["Cookie"] = "; ".join(jar)
        return out

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for value in response.headers.get_list("set-cookie"):
            name, _, rest = value.partition("=")
            content = rest.split(";", 1)[0].strip('"') or None
            if "max-age=0" in value.lower() or "expires=thu, 01 jan 1970" in value.lower():
                content = None
            if name == COOKIE:
                self.cookie = content
            elif name == LOGIN_COOKIE:
                self.login_cookie = content
        return response

    def start(self, next_path: str = "/") -> str:
        """GET ``/login/oidc``: the authorization URL the console redirects to."""
        response = self.get("/login/oidc", params={"next": next_path})
        assert response.status_code == 303 and self.login_cookie, response.text[:300]
        return response.headers["location"]

    def authorize(self, url: str, account: str) -> str:
        """Log in at the provider as ``account`` (its login form, then its consent form); the callback URL."""
        callback = self.console.url + "/login/callback"
        for _ in range(16):
            response = self.op.get(url)
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                if url.startswith(callback):
                    return url
                continue
            assert response.status_code == 200, response.text[:500]
            action, prompt = _ACTION.search(response.text), _PROMPT.search(response.text)
            assert action is not None and prompt is not None, response.text[:500]
            form = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                form |= {"login": account, "password": "any"}
            posted = self.op.post(urljoin(url, action.group(1)), data=form)
            assert posted.is_redirect, posted.text[:500]
            url = urljoin(url, posted.headers["location"])
            if url.startswith(callback):
                return url
        raise AssertionError("the provider never redirected back to the console")

    def finish(self, callback_url: str) -> httpx.Response:
        """GET the callback URL the provider sent the browser to."""
        return self.get(callback_url.removeprefix(self.console.url))

    def login(self, account: str, next_path: str = "/") -> httpx.Response:
        """A whole login; the console's answer to the callback."""
        return self.finish(self.authorize(self.start(next_path), account))


@dataclass
class OidcConsole:
    console: RunningConsole
    op: OpenIdProvider
    browsers: list[OidcBrowser] = field(default_factory=list)

    def browser(self) -> OidcBrowser:
        http = httpx.Client(timeout=10.0, trust_env=False, follow_redirects=False)
        browser = OidcBrowser(self.console, http)
        self.browsers.append(browser)
        return browser


@contextlib.contextmanager
def oidc_console(directory: Path, *, accounts: dict[str, dict[str, Any]], secret: str | None, console_toml: str,
                 oidc_toml: str) -> Iterator[OidcConsole]:  # fmt: skip
    """A provider and a deployment whose console logs in with it (one client: confidential when ``secret``)."""
    op_port, console_port = free_port(), free_port()
    base = f"http://127.0.0.1:{console_port}"
    client: dict[str, Any] = {"client_id": CLIENT_ID, "redirect_uris": [base + "/login/callback"]}
    if secret:
        client["client_secret"] = secret
    with OpenIdProvider.run(port=op_port, clients=[client], accounts=accounts, log=directory / "op.log") as op:
        toml = (f'[audit]\nrefusal_interval = 0\n[console]\nport = {console_port}\npublic_url = "{base}"\n{console_toml}\n'
                f'[console.oidc]\nissuer = "{op.issuer}"\nclient_id = "{CLIENT_ID}"\n'
                f'client_secret_env = "{SECRET_ENV if secret else ""}"\n{oidc_toml}\n')  # fmt: skip
        config = make_deployment(directory, extra_toml=QUIET_MONITOR + "\n" + toml)
        with serving(config, ManualClock()) as sts:
            runtime = build_sts(config, clock=sts.clock, upkeep=False)
            thread = ServerThread(create_console_app(runtime), console_port).start()
            running = OidcConsole(RunningConsole(sts, runtime, thread), op)
            try:
                yield running
            finally:
                for browser in running.browsers:
                    browser.http.close()
                    browser.op.close()
                thread.stop()
