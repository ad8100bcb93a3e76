"""``[gateway.routes.oauth]``: an OAuth route's credentials, checked at load naming the key (FED-04).

A route has exactly one of ``secret`` and ``oauth``; each grant and client authentication
names exactly the vault entries it uses; endpoints are http(s) (https off loopback); the
redirect is a loopback IP literal (RFC 8252 §7.3, §8.3); ``call_scopes`` maps the route's
own allow rules to scopes within ``scopes``, and a call gets the narrowest that matches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from tether.config import parse_config
from tether.errors import ConfigError
from tether.gateway.allowlist import parse_rule
from tether.gateway.routes import GatewayRoute

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

OAUTH: dict[str, Any] = {
    "grant": "client_credentials",
    "token_endpoint": "http://127.0.0.1:9200/token",
    "revocation_endpoint": "http://127.0.0.1:9200/token/revocation",
    "client_id": "tether-gateway",
    "client_auth": "client_secret_basic",
    "client_secret": "crm-client-secret",
    "scopes": ["contacts.read", "notes.write"],
    "resource": "http://127.0.0.1:9100",
    "call_scopes": {"GET /contacts/*": ["contacts.read"], "POST /notes": ["notes.write"]},
}
REFRESH: dict[str, Any] = {
    **{k: v for k, v in OAUTH.items() if k != "grant"},
    "grant": "refresh_token",
    "authorization_endpoint": "http://127.0.0.1:9200/auth",
    "redirect_uri": "http://127.0.0.1:8765/callback",
    "refresh_token": "crm-refresh-token",
}
ROW: dict[str, Any] = {
    "name": "crm",
    "upstream": "http://127.0.0.1:9100",
    "allow": ["GET /contacts/*", "POST /notes", "GET /me"],
    "owner": "team-crm",
    "justification": "the vendor issues OAuth tokens only",
    "expires": dt.date(2099, 1, 1),
}


def route(table: dict[str, Any] | None = None, **changes: Any) -> GatewayRoute:
    row = {**ROW, "oauth": OAUTH if table is None else table, **changes}
    for key in [k for k, v in row.items() if v is None]:
        del row[key]
    [parsed] = parse_config({"gateway": {"routes": [row]}}, path=None, env={}).routes
    return parsed


def oauth(**changes: Any) -> dict[str, Any]:
    row = {**OAUTH, **changes}
    return {k: v for k, v in row.items() if v is not None}


def refresh(**changes: Any) -> dict[str, Any]:
    row = {**REFRESH, **changes}
    return {k: v for k, v in row.items() if v is not None}


def test_fed04_a_client_credentials_route_loads_typed_and_frozen() -> None:
    parsed = route()
    creds = parsed.oauth
    assert creds is not None and parsed.secret == ""
    assert (creds.grant, creds.client_auth, creds.client_id) == ("client_credentials", "client_secret_basic", "tether-gateway")
    assert creds.scopes == ("contacts.read", "notes.write") and creds.vault_entries() == ("crm-client-secret",)
    assert creds.revocation_endpoint.endswith("/token/revocation") and creds.resource == "http://127.0.0.1:9100"
    assert parsed.injection.template == "Bearer {secret}"  # the access token goes through the usual injection
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.grant = "refresh_token"  # type: ignore[misc]


def test_a_static_secret_route_has_no_oauth() -> None:
    parsed = route(secret="crm-key", oauth=None)
    assert parsed.oauth is None and parsed.secret == "crm-key"


def test_fed04_a_call_gets_its_rules_scopes_else_the_routes() -> None:
    creds = route().oauth
    assert creds is not None
    assert creds.scopes_for("GET", ("contacts", "42")) == ("contacts.read",)
    assert creds.scopes_for("POST", ("notes",)) == ("notes.write",)
    assert creds.scopes_for("GET", ("me",)) == ("contacts.read", "notes.write")  # a rule without call_scopes


def test_fed04_of_several_matching_rules_the_narrowest_wins() -> None:
    scopes = {"GET /contacts/*": ["contacts.read", "notes.write"], "GET /contacts/**": ["contacts.read"]}
    creds = route(oauth(call_scopes=scopes), allow=["GET /contacts/*", "GET /contacts/**"]).oauth
    assert creds is not None
    assert creds.scopes_for("GET", ("contacts", "1")) == ("contacts.read",)
    assert creds.call_scopes[0][0] == parse_rule("GET /contacts/*")  # kept in allowlist order


def test_refresh_token_and_token_exchange_routes_load() -> None:
    creds = route(refresh(client_auth="none", client_secret=None)).oauth
    assert creds is not None and creds.refresh_token == "crm-refresh-token"
    assert creds.redirect_uri == "http://127.0.0.1:8765/callback" and creds.vault_entries() == ("crm-refresh-token",)
    exchange = route(oauth(grant="token_exchange", private_key="crm-key")).oauth
    assert exchange is not None and exchange.vault_entries() == ("crm-client-secret", "crm-key")
    jwt = route(oauth(client_auth="private_key_jwt", client_secret=None, private_key="crm-key")).oauth
    assert jwt is not None and jwt.vault_entries() == ("crm-key",)


def test_fed04_revocation_is_on_by_default_except_for_refresh_token_routes() -> None:
    """RFC 7009 §2.1 lets a server revoke the refresh token with an access token of its grant."""
    creds = route().oauth
    assert creds is not None and creds.revoke_access_tokens is True
    no_endpoint = route(oauth(revocation_endpoint=None)).oauth
    assert no_endpoint is not None and no_endpoint.revoke_access_tokens is False
    refreshing = route(refresh()).oauth
    assert refreshing is not None and refreshing.revoke_access_tokens is False
    opted_in = route(refresh(revoke_access_tokens=True)).oauth
    assert opted_in is not None and opted_in.revoke_access_tokens is True


def test_https_endpoints_load_off_loopback() -> None:
    creds = route(oauth(token_endpoint="https://as.example/oauth/token", resource="https://api.example/")).oauth
    assert creds is not None and creds.token_endpoint == "https://as.example/oauth/token"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"secret": "crm-key"}, "gateway.routes[0].oauth"),  # one credential per route
        ({"oauth": None}, "gateway.routes[0].secret"),
        ({"oauth": "yes"}, "gateway.routes[0].oauth"),
    ],
)
def test_a_route_has_exactly_one_of_secret_and_oauth(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        route(**changes)
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("table", "key"),
    [
        (oauth(grant="password"), "grant"),
        (oauth(grant=None), "grant"),
        (oauth(token_endpoint=None), "token_endpoint"),
        (oauth(client_id=None), "client_id"),
        (oauth(client_id=""), "client_id"),
        (oauth(unknown=1), "unknown"),
        (oauth(token_endpoint="http://as.example/token"), "token_endpoint"),  # plain http off loopback
        (oauth(token_endpoint="ftp://127.0.0.1/token"), "token_endpoint"),
        (oauth(token_endpoint="http://127.0.0.1:9200/token#x"), "token_endpoint"),
        (oauth(token_endpoint="http://user:pw@127.0.0.1/token"), "token_endpoint"),
        (oauth(token_endpoint="http://127.0.0.1:99999/token"), "token_endpoint"),
        (oauth(revocation_endpoint="http://10.0.0.1/revoke"), "revocation_endpoint"),
        (oauth(resource="urn:crm"), "resource"),
        (oauth(client_auth="tls_client_auth"), "client_auth"),
        (oauth(client_auth="none", client_secret=None), "client_auth"),  # client_credentials needs a client
        (oauth(client_secret=None), "client_secret"),
        (oauth(client_secret="crm key"), "client_secret"),  # a vault entry name, not a value
        (oauth(client_secret="../x"), "client_secret"),
        (oauth(client_auth="private_key_jwt"), "client_secret"),  # named but never used
        (oauth(client_auth="private_key_jwt", client_secret=None), "private_key"),
        (oauth(private_key="crm-key"), "private_key"),  # client_secret_basic + client_credentials: unused
        (oauth(grant="token_exchange"), "private_key"),  # the subject token is signed with it
        (oauth(refresh_token="crm-rt"), "refresh_token"),  # only for grant = refresh_token
        (oauth(redirect_uri="http://127.0.0.1:8765/cb"), "redirect_uri"),
        (refresh(refresh_token=None), "refresh_token"),
        (refresh(authorization_endpoint=None), "authorization_endpoint"),
        (refresh(redirect_uri=None), "redirect_uri"),
        (refresh(redirect_uri="https://app.example/callback"), "redirect_uri"),  # RFC 8252 §7.3: loopback
        (refresh(redirect_uri="http://localhost:8765/callback"), "redirect_uri"),  # RFC 8252 §8.3: an IP literal
        (oauth(revoke_access_tokens="yes"), "revoke_access_tokens"),
        (oauth(revoke_access_tokens=True, revocation_endpoint=None), "revoke_access_tokens"),
        (oauth(scopes="contacts.read"), "scopes"),
        (oauth(scopes=["a b"]), "scopes"),
        (oauth(scopes=["a", "a"]), "scopes"),
        (oauth(call_scopes=["GET /contacts/*"]), "call_scopes"),
        (oauth(call_scopes={"DELETE /contacts/*": ["contacts.read"]}), "call_scopes.DELETE /contacts/*"),
        (oauth(call_scopes={"GET /contacts/../x": ["contacts.read"]}), "call_scopes.GET /contacts/../x"),
        (oauth(call_scopes={"GET /contacts/*": ["contacts.write"]}), "call_scopes.GET /contacts/*"),  # ⊄ scopes
        (oauth(call_scopes={"GET /contacts/*": ["contacts.read"], "GET  /contacts/*": []}), "call_scopes"),
    ],
)
def test_fed04_a_bad_oauth_table_is_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        route(table)
    assert caught.value.key.startswith(f"gateway.routes[0].oauth.{key}"), caught.value
