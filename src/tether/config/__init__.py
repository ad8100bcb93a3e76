"""``tether.toml`` plus ``TETHER_*`` overrides → one frozen, typed ``Config``; problems are one-line ``ConfigError``.

``sections`` declares every scalar key (one frozen dataclass per section), ``scalars``
reads and checks them, ``identities`` parses the identity and resource tables, ``load``
assembles a ``Config`` (``model``).
This package imports no feature: a feature's own tables come through ``register_table``.
"""

from tether.config.identities import ClientConfig, OidcIssuerConfig, ResourceConfig, TrustDomainConfig
from tether.config.load import FEATURE_TABLES, TableParser, load_config, parse_config, register_table
from tether.config.model import Config

__all__ = [
    "FEATURE_TABLES",
    "ClientConfig",
    "Config",
    "OidcIssuerConfig",
    "ResourceConfig",
    "TableParser",
    "TrustDomainConfig",
    "load_config",
    "parse_config",
    "register_table",
]
