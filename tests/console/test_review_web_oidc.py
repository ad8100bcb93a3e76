"""Review of the console's OIDC login against a real provider (SECURITY WEB-04, WEB-05).

An ID token whose ``email`` the provider never said it verified must not log anyone in as that
address: OIDC Core §5.1 makes ``email_verified`` the provider's statement that it checked the
address; without it, the address is whatever the account's owner typed (the "nOAuth" pattern:
register ``ceo@example.com`` at a provider that does not verify it and become the operator
listed by that address). The console's own contract says a principal read from ``email`` needs
``email_verified`` true, so a missing claim is a refusal, not a pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from oidckit import OidcConsole, oidc_console

from helpers import ServerThread, free_port
from tether.console.app import create_console_app
from tether.console.web import COOKIE

ACCOUNTS: dict[str, dict[str, Any]] = {
    # claims the address but the provider says nothing about verifying it
    "mallet": {"email": "olga@example.com", "name": "Mallet", "groups": []},
    "olga": {"email": "olga@example.com", "email_verified": True, "name": "Olga", "groups": []},
}


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcConsole]:
    with oidc_console(tmp_path_factory.mktemp("review-oidc"), accounts=ACCOUNTS, secret=None,
                      console_toml='operators = ["user:olga@example.com"]', oidc_toml="") as running:  # fmt: skip
        yield running


def test_web04_email_without_email_verified_does_not_log_in_as_that_address(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    refused = browser.login("mallet")
    assert refused.status_code == 403 and "not verified" in refused.text, refused.text[:300]
    assert browser.cookie is None
    record = oidc.console.sts.last_audit("console.login")
    assert record.outcome == "refused" and record.principal is None


def test_web04_verified_email_still_logs_in(oidc: OidcConsole) -> None:
    browser = oidc.browser()
    done = browser.login("olga")
    assert done.status_code == 303 and browser.cookie, done.text[:300]


def test_web04_a_session_from_a_provider_no_longer_configured_is_refused(oidc: OidcConsole) -> None:
    """Sessions are cookies that outlive a restart: after ``[console.oidc] issuer`` names another
    provider, a session the old provider vouched for must not be read as the new one's (its
    principal and groups are the old provider's word; ``approver_of`` would trust it for approvals)."""
    browser = oidc.browser()
    assert browser.login("olga").status_code == 303 and browser.cookie
    assert browser.get("/").status_code == 200
    cfg = oidc.console.runtime.config
    moved = dataclasses.replace(cfg, console_oidc=dataclasses.replace(cfg.console_oidc, issuer="https://idp.example.org"))
    runtime = SimpleNamespace(config=moved, ctx=oidc.console.runtime.ctx)  # the same store and keys, reconfigured
    thread = ServerThread(create_console_app(runtime, lifespan=False), free_port()).start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{thread.port}/", headers={"Cookie": f"{COOKIE}={browser.cookie}"},
                           timeout=10.0, trust_env=False)  # fmt: skip
    finally:
        thread.stop()
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
