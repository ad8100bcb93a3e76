"""``[console]`` and ``[console.oidc]``: typed, defaulted, overridable, and refused with the key named."""

from __future__ import annotations

from typing import Any

import pytest

import tether.features  # noqa: F401 - registers the feature tables a config needs
from tether.config import parse_config
from tether.errors import ConfigError


def _parse(data: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_config(data, path=None, env=env or {})


def test_defaults_nested_table_and_environment_override() -> None:
    cfg = _parse({"console": {"enabled": True, "operators": ["user:o@x"], "oidc": {"issuer": "https://idp", "client_id": "c"}}},
                 env={"TETHER_CONSOLE_OIDC_GROUP_CLAIM": "roles", "TETHER_CONSOLE_PORT": "9001"})  # fmt: skip
    assert cfg.console.enabled and cfg.console.port == 9001 and cfg.console.operators == ("user:o@x",)
    assert cfg.console_oidc.issuer == "https://idp" and cfg.console_oidc.group_claim == "roles"
    assert cfg.sources["console.oidc.group_claim"] == "env TETHER_CONSOLE_OIDC_GROUP_CLAIM"
    assert cfg.values["console.oidc"]["scopes"] == ["openid", "email", "profile"]
    assert _parse({}).console.session_idle == 1800


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"console": {"bogus": 1}}, "console.bogus"),
        ({"console": {"oidc": {"bogus": 1}}}, "console.oidc.bogus"),
        ({"console": {"port": 0}}, "console.port"),
        ({"console": {"session_idle": 100, "session_max": 50}}, "console.session_idle"),
        ({"console": {"link_ttl": 7200}}, "console.link_ttl"),
        ({"console": {"page_size": 0}}, "console.page_size"),
        ({"console": {"public_url": "ftp://x"}}, "console.public_url"),
        ({"console": {"oidc": {"issuer": "https://idp"}}}, "console.oidc.client_id"),
        ({"console": {"oidc": {"issuer": "https://idp", "client_id": "c", "scopes": ["email"]}}}, "console.oidc.scopes"),
        ({"console": {"oidc": {"issuer": "https://idp", "client_id": "c", "principal": "user"}}}, "console.oidc.principal"),
        ({"console": {"oidc": {"algorithms": ["HS256"]}}}, "console.oidc.algorithms"),
        ({"console": {"oidc": {"issuer": "idp", "client_id": "c"}}}, "console.oidc.issuer"),
        ({"console": {"viewers": "user:v@x"}}, "console.viewers"),
        ({"console": {"oidc": "x"}}, "console.oidc"),
    ],
)
def test_bad_console_settings_name_their_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _parse(data)
    assert str(raised.value).startswith(key + ":"), str(raised.value)
