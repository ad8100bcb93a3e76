"""``tether.toml`` + ``TETHER_*`` → ``Config``; every problem is a one-line ``ConfigError`` naming its key.

STYLE rule 8: an unknown config key is a ``ConfigError``. Environments are always
passed explicitly (``env={...}``) so the test process's own environment never leaks in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.config import Config, load_config, parse_config
from tether.errors import ConfigError

OIDC = "https://oidc.example"
GOOD_OIDC = {"issuer": OIDC, "principal": "k8s:{/sub}"}
GOOD_TD = {"name": "td.example", "bundle_file": "bundles/td.json"}
GOOD_CLIENT = {"client_id": "client:agent-1", "jwks": {"keys": []}}


def _ids(value: object) -> str | None:
    return value if isinstance(value, str) else "case"


def parse(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(data, path=None, env=env or {})


def config_error(data: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, env)
    err = info.value
    assert "\n" not in str(err) and "\r" not in str(err)
    assert str(err) == f"{err.key}: {err.problem}"
    return err


def write(tmp_path: Path, text: str | bytes, name: str = "tether.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- defaults -----------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse({})
    assert cfg.issuer == "http://127.0.0.1:8700"
    assert cfg.store == "sqlite"
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8700
    assert cfg.tokens.session_ttl == 900
    assert cfg.tokens.hop_ttl == 300
    assert cfg.tokens.admin_ttl == 300
    assert cfg.tokens.clock_skew == 10
    assert cfg.dpop.max_age == 60
    assert cfg.dpop.nonce is True
    assert cfg.dpop.nonce_ttl == 120
    assert cfg.dpop.algorithms
    assert cfg.tasks.max_duration == 900
    assert cfg.tasks.max_depth == 5
    assert cfg.tasks.max_tokens == 10_000
    assert cfg.identity.max_lifetime == 3600
    assert cfg.identity.refresh == 300
    assert cfg.admin.principals == ("spiffe://tether.local/admin",)
    assert cfg.admin_scope == "tether:admin"
    assert cfg.data_dir == Path.cwd() / ".tether"
    assert cfg.master_key_file == Path.cwd() / ".tether" / "master.key"
    assert (cfg.trust_domains, cfg.oidc_issuers, cfg.clients, cfg.resources) == ((), (), (), ())


def test_defaults_ignore_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_STORE", "postgres")
    monkeypatch.setenv("TETHER_TOKENS_HOP_TTL", "1")
    cfg = parse({})
    assert cfg.store == "sqlite"
    assert cfg.tokens.hop_ttl == 300


def test_tables_parsed(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "issuer": "https://sts.example",
            "trust_domains": [GOOD_TD, {"name": "remote.example", "bundle_url": "https://spire.example/bundle"}],
            "oidc_issuers": [{**GOOD_OIDC, "jwks_file": "oidc.json", "algorithms": ["ES256"]}],
            "clients": [GOOD_CLIENT],
            "resources": [{"uri": "https://api.example", "principals": ["spiffe://td.example/api"]}],
        },
        path=tmp_path / "tether.toml",
        env={},
    )
    assert cfg.trust_domains[0].bundle_file == tmp_path / "bundles" / "td.json"
    assert cfg.trust_domains[1].bundle_url == "https://spire.example/bundle"
    assert cfg.trust_domains[1].bundle_file is None
    issuer = cfg.oidc_issuers[0]
    assert (issuer.issuer, issuer.audience, issuer.algorithms) == (OIDC, "https://sts.example", ("ES256",))
    assert issuer.jwks_file == tmp_path / "oidc.json"
    assert cfg.clients[0].jwks == {"keys": []}
    assert cfg.resources[0].principals == ("spiffe://td.example/api",)


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"Issuer": "https://x.example"}, "Issuer"),
        ({"tokens": {"hop_tll": 60}}, "tokens.hop_tll"),
        ({"server": {"issuer": "https://x.example"}}, "server.issuer"),
        ({"dev": {"trust_domain": "dev.example", "key": "x"}}, "dev.key"),
        ({"trust_domains": [{**GOOD_TD, "extra": 1}]}, "trust_domains[0].extra"),
        (
            {"trust_domains": [GOOD_TD, {"name": "b.example", "bundle_file": "b.json", "colour": "red"}]},
            "trust_domains[1].colour",
        ),
        ({"oidc_issuers": [{**GOOD_OIDC, "jwks_url": "https://x/jwks"}]}, "oidc_issuers[0].jwks_url"),
        ({"clients": [{**GOOD_CLIENT, "secret": "s3cr3t"}]}, "clients[0].secret"),
        ({"resources": [{"uri": "https://api.example", "principals": [], "scopes": []}]}, "resources[0].scopes"),
    ],
    ids=_ids,
)
def test_unknown_key_refused(data: dict[str, Any], key: str) -> None:
    err = config_error(data)
    assert err.key == key
    assert err.problem == "unknown key"


def test_empty_top_level_key_refused(tmp_path: Path) -> None:
    """``"" = 1`` is an unknown key like any other (the empty name is not a section)."""
    assert load_config(write(tmp_path, "store = 'sqlite'\n"), env={}).store == "sqlite"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '"" = 1\n'), env={})
    assert info.value.problem == "unknown key"
    with pytest.raises(ConfigError):
        parse({"": {"issuer": "https://x.example"}})


def test_unknown_key_in_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[[trust_domains]]\nname = "td.example"\nbundle_file = "x.json"\nbundle = 1\n'), env={})
    assert info.value.key == "trust_domains[0].bundle"


# --- wrong types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"tokens": {"hop_ttl": "300"}}, "tokens.hop_ttl"),  # string for int
        ({"server": {"port": True}}, "server.port"),  # bool for int
        ({"tokens": {"clock_skew": False}}, "tokens.clock_skew"),
        ({"tokens": {"hop_ttl": 300.0}}, "tokens.hop_ttl"),  # float for int
        ({"dpop": {"nonce": 1}}, "dpop.nonce"),  # int for bool
        ({"dpop": {"nonce": "true"}}, "dpop.nonce"),
        ({"issuer": 5}, "issuer"),
        ({"store": ["sqlite"]}, "store"),
        ({"dpop": {"algorithms": "ES256"}}, "dpop.algorithms"),
        ({"dpop": {"algorithms": ["ES256", 1]}}, "dpop.algorithms"),
        ({"admin": {"principals": "spiffe://tether.local/admin"}}, "admin.principals"),
        ({"tokens": 5}, "tokens"),
        ({"tokens": [1]}, "tokens"),
        ({"trust_domains": {"name": "td.example"}}, "trust_domains"),
        ({"trust_domains": ["td.example"]}, "trust_domains[0]"),
        ({"trust_domains": [{"name": 5, "bundle_file": "x"}]}, "trust_domains[0].name"),
        ({"trust_domains": [{"name": "td.example", "bundle_file": 5}]}, "trust_domains[0].bundle_file"),
        ({"trust_domains": [{"name": "td.example", "bundle_url": 5}]}, "trust_domains[0].bundle_url"),
        ({"oidc_issuers": [{**GOOD_OIDC, "issuer": 5}]}, "oidc_issuers[0].issuer"),
        ({"oidc_issuers": [{**GOOD_OIDC, "principal": 5}]}, "oidc_issuers[0].principal"),
        ({"oidc_issuers": [{**GOOD_OIDC, "audience": 5}]}, "oidc_issuers[0].audience"),
        ({"oidc_issuers": [{**GOOD_OIDC, "algorithms": "RS256"}]}, "oidc_issuers[0].algorithms"),
        ({"oidc_issuers": [{**GOOD_OIDC, "jwks_file": True}]}, "oidc_issuers[0].jwks_file"),
        ({"clients": [{**GOOD_CLIENT, "client_id": 5}]}, "clients[0].client_id"),
        ({"clients": [{"client_id": "client:a", "jwks_file": 5}]}, "clients[0].jwks_file"),
        ({"resources": [{"uri": 5, "principals": []}]}, "resources[0].uri"),
        ({"resources": [{"uri": "https://api.example", "principals": "spiffe://td.example/api"}]}, "resources[0].principals"),
    ],
    ids=_ids,
)
def test_wrong_type_refused(data: dict[str, Any], key: str) -> None:
    assert config_error(data).key == key


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"oidc_issuers": [{**GOOD_OIDC, "jwks_uri": 5}]}, "oidc_issuers[0].jwks_uri"),
        ({"oidc_issuers": [{**GOOD_OIDC, "jwks_uri": ["https://x/jwks"]}]}, "oidc_issuers[0].jwks_uri"),
        ({"clients": [{**GOOD_CLIENT, "jwks": "not a key set"}]}, "clients[0].jwks"),
        ({"clients": [{**GOOD_CLIENT, "jwks": {"keys": 5}}]}, "clients[0].jwks"),
    ],
    ids=_ids,
)
def test_wrong_type_in_key_source_refused(data: dict[str, Any], key: str) -> None:
    """``jwks_uri`` and inline ``jwks`` are typed keys too; a bad value must fail at load, naming the key."""
    assert parse({"oidc_issuers": [{**GOOD_OIDC, "jwks_uri": "https://oidc.example/jwks"}], "clients": [GOOD_CLIENT]})
    assert config_error(data).key == key


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "gopher://x/jwks", "oidc.example/jwks"])
def test_oidc_jwks_uri_must_be_http_url(uri: str) -> None:
    """Like ``bundle_url``, a pinned ``jwks_uri`` must be an http(s) URL (MCP-08: no other fetch schemes)."""
    assert config_error({"trust_domains": [{"name": "td.example", "bundle_url": uri}]}).key == "trust_domains[0].bundle_url"
    assert config_error({"oidc_issuers": [{**GOOD_OIDC, "jwks_uri": uri}]}).key == "oidc_issuers[0].jwks_uri"


@pytest.mark.parametrize(
    "issuer", ["oidc.example", "ftp://oidc.example", "https://oidc.example/?x=1", "https://oidc.example#f"]
)
def test_oidc_issuer_must_be_http_url(issuer: str) -> None:
    """Discovery is built as ``issuer + "/.well-known/openid-configuration"``; a non-URL issuer cannot be pinned."""
    assert parse({"oidc_issuers": [GOOD_OIDC]}).oidc_issuers[0].issuer == OIDC
    assert config_error({"oidc_issuers": [{**GOOD_OIDC, "issuer": issuer}]}).key == "oidc_issuers[0].issuer"


# --- ranges and cross-checks ----------------------------------------------------------------------


def test_hop_ttl_greater_than_max_duration_refused() -> None:
    assert parse({"tokens": {"hop_ttl": 900}}).tokens.hop_ttl == 900
    err = config_error({"tokens": {"hop_ttl": 901}})
    assert err.key == "tokens.hop_ttl"
    assert "max_duration" in err.problem
    assert parse({"tokens": {"hop_ttl": 901}, "tasks": {"max_duration": 901}}).tokens.hop_ttl == 901
    assert config_error({"tasks": {"max_duration": 299}}).key == "tokens.hop_ttl"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"tokens": {"hop_ttl": 0}}, "tokens.hop_ttl"),
        ({"tokens": {"session_ttl": -1}}, "tokens.session_ttl"),
        ({"identity": {"max_lifetime": 0}}, "identity.max_lifetime"),
        ({"tokens": {"clock_skew": 121}}, "tokens.clock_skew"),
        ({"tokens": {"clock_skew": -1}}, "tokens.clock_skew"),
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"port": 65536}}, "server.port"),
        ({"store": "mysql"}, "store"),
        ({"dpop": {"algorithms": ["HS256"]}}, "dpop.algorithms"),
        ({"dpop": {"algorithms": ["none"]}}, "dpop.algorithms"),
        ({"admin": {"principals": ["not a principal"]}}, "admin.principals"),
        ({"admin": {"principals": ["spiffe://TD/admin"]}}, "admin.principals"),
        ({"admin": {"scope": "a\\b"}}, "admin.scope"),
        ({"trust_domains": [{"name": "TD.example", "bundle_file": "x"}]}, "trust_domains[0].name"),
        ({"trust_domains": [{"name": "td.example"}]}, "trust_domains[0]"),
        ({"trust_domains": [{"name": "td.example", "bundle_file": "x", "bundle_url": "https://x"}]}, "trust_domains[0]"),
        ({"trust_domains": [{"bundle_file": "x"}]}, "trust_domains[0].name"),
        ({"oidc_issuers": [{**GOOD_OIDC, "algorithms": ["HS256"]}]}, "oidc_issuers[0].algorithms"),
        ({"oidc_issuers": [{**GOOD_OIDC, "algorithms": []}]}, "oidc_issuers[0].algorithms"),
        ({"oidc_issuers": [{"issuer": OIDC}]}, "oidc_issuers[0].principal"),
        ({"clients": [{"client_id": "not a principal", "jwks": {"keys": []}}]}, "clients[0].client_id"),
        ({"clients": [{"client_id": "client:a"}]}, "clients[0]"),
        ({"resources": [{"uri": "https://api.example#frag", "principals": []}]}, "resources[0].uri"),
    ],
    ids=_ids,
)
def test_out_of_range_refused(data: dict[str, Any], key: str) -> None:
    assert config_error(data).key == key


@pytest.mark.parametrize(
    "issuer",
    ["https://sts.example/", "https://sts.example?x=1", "https://sts.example#top", "sts.example", "ftp://sts.example", ""],
)
def test_bad_issuer_refused(issuer: str) -> None:
    assert parse({"issuer": "https://sts.example"}).issuer == "https://sts.example"
    assert config_error({"issuer": issuer}).key == "issuer"


@pytest.mark.parametrize("issuer", ["https://sts.example", "http://127.0.0.1:8700", "https://sts.example/tenant-a"])
def test_good_issuer_accepted(issuer: str) -> None:
    assert parse({"issuer": issuer}).issuer == issuer


@pytest.mark.parametrize("issuer", ["https://sts .example", "https://sts.example\n", "https://sts.example\tx"], ids=repr)
def test_issuer_with_whitespace_refused(issuer: str) -> None:
    """The issuer goes into ``iss``, metadata and ``WWW-Authenticate``; whitespace is never part of a URL."""
    assert config_error({"issuer": issuer}).key == "issuer"


# --- environment overrides ---------------------------------------------------------------------


def test_env_overrides_file_values() -> None:
    data = {"tokens": {"hop_ttl": 120}, "dpop": {"nonce": True}}
    assert parse(data).tokens.hop_ttl == 120
    cfg = parse(data, env={"TETHER_TOKENS_HOP_TTL": "60", "TETHER_STORE": "postgres", "TETHER_DPOP_NONCE": "false"})
    assert cfg.tokens.hop_ttl == 60
    assert cfg.store == "postgres"
    assert cfg.dpop.nonce is False


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("TRUE", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("False", False),
    ],
)
def test_env_dpop_nonce_values(raw: str, value: bool) -> None:
    assert parse({}, env={"TETHER_DPOP_NONCE": raw}).dpop.nonce is value


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TETHER_TOKENS_HOP_TTL": "abc"}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": ""}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": "1.5"}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": "60s"}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": "0"}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": "-5"}, "tokens.hop_ttl"),
        ({"TETHER_TOKENS_HOP_TTL": "100000"}, "tokens.hop_ttl"),  # > tasks.max_duration
        ({"TETHER_DPOP_NONCE": "maybe"}, "dpop.nonce"),
        ({"TETHER_DPOP_NONCE": ""}, "dpop.nonce"),
        ({"TETHER_DPOP_NONCE": "2"}, "dpop.nonce"),
        ({"TETHER_STORE": "mysql"}, "store"),
        ({"TETHER_STORE": ""}, "store"),
        ({"TETHER_STORE": "SQLITE"}, "store"),
        ({"TETHER_ISSUER": "https://sts.example/"}, "issuer"),
        ({"TETHER_SERVER_PORT": "http"}, "server.port"),
        ({"TETHER_DPOP_ALGORITHMS": "ES256,HS256"}, "dpop.algorithms"),
    ],
    ids=_ids,
)
def test_env_invalid_value_refused(env: dict[str, str], key: str) -> None:
    assert parse({})  # positive control: the same document without the override
    assert config_error({}, env=env).key == key


def test_env_list_override() -> None:
    cfg = parse({}, env={"TETHER_DPOP_ALGORITHMS": "ES256, EdDSA"})
    assert cfg.dpop.algorithms == ("ES256", "EdDSA")


# --- OIDC principal templates --------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["spiffe://td.example/{/sub}", "SPIFFE://td.example/{/sub}", "Spiffe:{/sub}", "spiffe:{/sub}", "{/sub}", "k8s:fixed"],
)
def test_oidc_principal_template_refused(template: str) -> None:
    assert parse({"oidc_issuers": [GOOD_OIDC]}).oidc_issuers[0].principal == "k8s:{/sub}"
    err = config_error({"oidc_issuers": [{**GOOD_OIDC, "principal": template}]})
    assert err.key == "oidc_issuers[0].principal"


def test_oidc_defaults() -> None:
    issuer = parse({"issuer": "https://sts.example", "oidc_issuers": [GOOD_OIDC]}).oidc_issuers[0]
    assert issuer.audience == "https://sts.example"
    assert issuer.algorithms == ("RS256", "ES256")
    assert issuer.jwks_file is None and issuer.jwks_uri is None


# --- load_config: files ---------------------------------------------------------------------------


def test_load_config_reads_toml_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'issuer = "https://sts.example"\ndata_dir = "state"\n[tokens]\nhop_ttl = 60\n'
        '[[trust_domains]]\nname = "td.example"\nbundle_file = "bundles/td.json"\n',
    )
    cfg = load_config(path, env={})
    assert cfg.path == path.resolve()
    assert cfg.tokens.hop_ttl == 60
    assert cfg.data_dir == tmp_path.resolve() / "state"
    assert cfg.trust_domains[0].bundle_file == tmp_path.resolve() / "bundles" / "td.json"


def test_load_config_from_tether_config_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'store = "postgres"\n', name="custom.toml")
    assert load_config(None, env={"TETHER_CONFIG": str(path)}).store == "postgres"


def test_load_config_env_override(tmp_path: Path) -> None:
    path = write(tmp_path, "[tokens]\nhop_ttl = 60\n")
    assert load_config(path, env={"TETHER_TOKENS_HOP_TTL": "30"}).tokens.hop_ttl == 30


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml", env={})
    assert info.value.key == "config"
    assert "not found" in info.value.problem
    assert "\n" not in str(info.value)


def test_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.key == "config"


@pytest.mark.parametrize(
    "text",
    ["issuer = ", "[tokens\nhop_ttl = 1", "a = 1\na = 2", "[tokens]\n[tokens]", "x = 'unterminated", "= 1"],
    ids=repr,
)
def test_invalid_toml_is_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert info.value.key == "config"
    assert "not valid TOML" in info.value.problem
    assert "\n" not in str(info.value)


def test_non_utf8_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, b'issuer = "https://sts.example"\n# \xff\xfe\n'), env={})
    assert info.value.key == "config"


# --- str(ConfigError) is one line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"bad\\nkey" = 1',  # a quoted TOML key may contain a newline escape
        '[tokens]\n"hop\\r\\nttl" = 1',
        '[admin]\nprincipals = ["spiffe://x/a\\nforged: line"]',
        '[dpop]\nalgorithms = ["ES256\\nHS256"]',
        '[[oidc_issuers]]\nissuer = "https://oidc.example"\nprincipal = "k8s:{/sub}"\n"x\\ny" = 1',
    ],
    ids=repr,
)
def test_config_error_is_one_line_even_with_newlines_in_input(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message


def test_config_error_format() -> None:
    err = ConfigError("tokens.hop_ttl", "must be an integer")
    assert err.key == "tokens.hop_ttl"
    assert err.problem == "must be an integer"
    assert str(err) == "tokens.hop_ttl: must be an integer"


def test_a_client_id_in_a_configured_trust_domain_is_refused() -> None:
    """A client's RFC 7523 assertion must never pass for a JWT-SVID: its client_id may not be
    a SPIFFE ID of a trust domain tether verifies."""
    err = config_error({"trust_domains": [GOOD_TD], "clients": [{**GOOD_CLIENT, "client_id": "spiffe://td.example/x"}]})
    assert err.key == "clients[0].client_id" and "overlaps the principals of trust_domains[0]" in err.problem
    # positive control: a SPIFFE ID of a domain tether does not verify is an ordinary client id
    cfg = parse({"trust_domains": [GOOD_TD], "clients": [{**GOOD_CLIENT, "client_id": "spiffe://elsewhere.example/x"}]})
    assert cfg.clients[0].client_id == "spiffe://elsewhere.example/x"


# -- identity sources own disjoint namespaces (issue 21 finding 2) ------------------------------------
PROD, DEV = "https://prod.k8s.example", "https://dev.k8s.example"


@pytest.mark.parametrize(
    ("templates", "clients"),
    [
        (["k8s:{/sub}", "k8s:{/sub}"], []),  # the README's old example, twice: every name in both
        (["k8s:{/sub}", "k8s:prod/{/sub}"], []),  # one prefix inside the other
        (["k8s", "k8s-dev:{/sub}"], []),  # a template with no placeholder is its own prefix
        (["k8s-prod:{/sub}"], ["k8s-prod:orchestrator"]),  # a registered client inside an issuer's prefix
        (["spif{/sub}"], []),  # would render spiffe://… names  (refused earlier: no spiffe-like prefix)
    ],
)
def test_overlapping_identity_sources_are_refused(templates: list[str], clients: list[str]) -> None:
    issuers = [{**GOOD_OIDC, "issuer": iss, "principal": t} for iss, t in zip([PROD, DEV], templates, strict=False)]
    err = config_error({"trust_domains": [GOOD_TD], "oidc_issuers": issuers,
                        "clients": [{**GOOD_CLIENT, "client_id": c} for c in clients]})  # fmt: skip
    assert err.key.startswith(("oidc_issuers[", "clients[")), err
    assert "overlaps the principals of" in err.problem or "literal prefix" in err.problem, err


def test_disjoint_identity_sources_are_accepted_and_each_principal_has_one_source() -> None:
    """Positive control: a prefix per source (note the delimiters), a client outside all of them."""
    from tether.rules.namespace import source_of

    cfg = parse({"trust_domains": [GOOD_TD], "clients": [GOOD_CLIENT],
                 "oidc_issuers": [{**GOOD_OIDC, "issuer": PROD, "principal": "k8s-prod:{/sub}"},
                                  {**GOOD_OIDC, "issuer": DEV, "principal": "k8s-dev:{/sub}"}]})  # fmt: skip
    kinds = {p: (s.kind, s.issuer) if (s := source_of(p, cfg.namespaces)) else None
             for p in ("k8s-prod:agents/research", "k8s-dev:agents/research", "client:agent-1",
                       "spiffe://td.example/agent", "k8s:agents/research")}  # fmt: skip
    assert kinds == {
        "k8s-prod:agents/research": ("oidc", PROD),
        "k8s-dev:agents/research": ("oidc", DEV),
        "client:agent-1": ("client", "client:agent-1"),
        "spiffe://td.example/agent": ("spiffe", "spiffe://td.example"),
        "k8s:agents/research": None,
    }


# -- a typed Config; the feature tables come through a registration seam ---------------------------


def test_sections_are_typed_and_values_is_the_same_settings_as_a_mapping() -> None:
    cfg = parse({"tokens": {"hop_ttl": 60}, "admin": {"principals": ["spiffe://td.example/ops"]}},
                env={"TETHER_DPOP_NONCE": "false"})  # fmt: skip
    assert (cfg.tokens.hop_ttl, cfg.dpop.nonce, cfg.admin.principals) == (60, False, ("spiffe://td.example/ops",))
    values = cfg.values
    assert values["tokens"]["hop_ttl"] == 60 and values["dpop"]["nonce"] is False
    assert values["admin"]["principals"] == ["spiffe://td.example/ops"]  # lists, as in tether.toml
    assert values[""] == {"issuer": cfg.issuer, "data_dir": ".tether", "store": "sqlite", "master_key_file": ""}
    assert set(values) == {"", *(k.rsplit(".", 1)[0] for k in cfg.sources if "." in k)}  # console.oidc: a nested table
    assert sum(len(keys) for keys in values.values()) == len(cfg.sources)  # every scalar, each with its source
    values["tokens"]["hop_ttl"] = 1  # a copy: the frozen Config is unchanged
    assert cfg.tokens.hop_ttl == 60 and cfg.values["tokens"]["hop_ttl"] == 60


def test_feature_tables_are_validated_on_load(tmp_path: Path) -> None:
    """``[[gateway.routes]]`` and ``[monitor.detectors.*]`` are parsed by their features, whenever a config loads."""
    cfg = load_config(write(tmp_path, "[monitor.detectors.new_audience]\nlearn = 5\n"), env={})
    assert {d.name: d.param("learn") for d in cfg.detectors if d.name == "new_audience"} == {"new_audience": 5.0}
    assert cfg.routes == ()
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[monitor.detectors.no_such_detector]\n"), env={})
    assert info.value.key == "monitor.detectors.no_such_detector"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[[gateway.routes]]\nname = "crm"\n'), env={})
    assert info.value.key == "gateway.routes[0].upstream"


def test_register_table_takes_only_a_declared_feature_table() -> None:
    from tether.config import FEATURE_TABLES, register_table

    assert FEATURE_TABLES == ("gateway.routes", "gateway.mcp", "monitor.detectors")
    with pytest.raises(ValueError, match="not a feature table"):
        register_table("tokens.extra", lambda raw: ())


_UNREGISTERED = """
import sys
from tether.config import parse_config
try:
    parse_config({}, path=None, env={})
except RuntimeError as exc:
    print("refused:", exc)
import tether.sts.asgi  # an entry point (the --workers ASGI factory): registers the feature tables
from tether.errors import ConfigError
try:
    parse_config({"monitor": {"detectors": {"nope": {}}}}, path=None, env={})
except ConfigError as exc:
    print("validated:", exc.key)
from tether.monitor.settings import DEFAULTS
print("every detector:", len(parse_config({}, path=None, env={}).detectors) == len(DEFAULTS))
"""


def test_a_config_is_never_loaded_without_its_feature_tables() -> None:
    """Loading a config before any feature registered its tables is refused (the detectors' defaults would be
    lost silently); once an entry point is imported, the same call validates them (positive control)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _UNREGISTERED], capture_output=True, text=True, timeout=60, check=True)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("refused: no parser registered for `gateway.routes`"), run.stdout
    assert lines[1:] == ["validated: monitor.detectors.nope", "every detector: True"], run.stdout


@pytest.mark.parametrize("entry", ["proxy.lan", "10.0.0.0/33", "", "127.0.0.1/32 "])
def test_MTLS_03_trusted_proxies_must_be_addresses_or_cidrs(entry: str) -> None:
    """Refused at load for every process (the STS answered 500 on each request before)."""
    err = config_error({"tls": {"trusted_proxies": ["10.0.0.5/32", entry]}})
    assert err.key == "tls.trusted_proxies"
    env_err = config_error({}, env={"TETHER_TLS_TRUSTED_PROXIES": f'["{entry}"]'})
    assert env_err.key == "tls.trusted_proxies"


def test_MTLS_03_trusted_proxies_accepts_addresses_and_networks() -> None:
    cfg = parse({"tls": {"trusted_proxies": ["10.0.0.5", "10.0.0.0/8", "::1/128"]}})
    assert cfg.tls.trusted_proxies == ("10.0.0.5", "10.0.0.0/8", "::1/128")
