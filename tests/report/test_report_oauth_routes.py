"""BEARER-01 for a gateway OAuth route: every vault entry it reads is checked, and no empty name is reported.

An OAuth route has no ``secret``; it reads its client secret, private key or refresh token
(``[gateway.routes.oauth]``). ``tether report`` checks those entries exist, naming each missing one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from snapshots import healthy, only, route

from tether.config import parse_config
from tether.report.controls import run_controls
from tether.report.evidence import _routes

OAUTH_ROUTE = {
    "name": "crm", "upstream": "https://crm.example", "allow": ["GET /contacts/*"], "owner": "team-crm",
    "justification": "the vendor issues OAuth tokens", "expires": dt.date(2099, 1, 1),
    "oauth": {"grant": "client_credentials", "token_endpoint": "https://as.example/token", "client_id": "gw",
              "client_auth": "private_key_jwt", "private_key": "crm-jwk", "scopes": ["contacts.read"]},
}  # fmt: skip


def test_evidence_names_an_oauth_routes_vault_entries() -> None:
    config = parse_config({"gateway": {"routes": [OAUTH_ROUTE]}}, path=None, env={})
    [facts] = _routes(config)
    assert facts.secret == "" and facts.vault_entries == ("crm-jwk",)


def test_fed04_a_missing_oauth_vault_entry_fails_naming_it() -> None:
    oauth = dataclasses.replace(route(vault_name=""), vault_entries=("crm-key", "crm-refresh"))
    found = only(run_controls(healthy(routes=(oauth,))), "BEARER-01", None)
    assert found.status == "fail" and "vault entry `crm-refresh`" in found.summary
    assert "``" not in found.summary


def test_an_oauth_route_with_its_entries_present_passes() -> None:
    oauth = dataclasses.replace(route(vault_name=""), vault_entries=("crm-key",))
    found = only(run_controls(healthy(routes=(oauth,))), "BEARER-01", None)
    assert found.status == "pass", found.summary
