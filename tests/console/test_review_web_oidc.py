"""Review of the console's OIDC login against a real provider (SECURITY WEB-04, WEB-05).

An ID token whose ``email`` the provider never said it verified must not log anyone in as that
address: OIDC Core §5.1 makes ``email_verified`` the provider's statement that it checked the
address; without it, the address is whatever the account's owner typed (the "nOAuth" pattern:
register ``ceo@example.com`` at a provider that does not verify it and become the operator
listed by that address). The console's own contract says a principal read from ``email`` needs
``email_verified`` true, so a missing claim is a refusal, not a pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from oidckit import OidcConsole, oidc_console

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
