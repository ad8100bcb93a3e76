"""Each feature's own ``tether.toml`` tables, registered with ``tether.config`` (which imports no feature).

``[[gateway.routes]]``, ``[[gateway.mcp]]`` and ``[monitor.detectors.*]`` are parsed by the gateway and the
monitor. Every entry point that loads a config imports this module first; loading a
config before it has run is refused, never done without validating these tables.
"""

from tether.config import register_table
from tether.gateway.mcp_routes import parse_mcp_routes
from tether.gateway.routes import parse_routes
from tether.monitor.settings import parse_detectors

__all__: list[str] = []

register_table("gateway.routes", parse_routes)
register_table("gateway.mcp", parse_mcp_routes)
register_table("monitor.detectors", parse_detectors)
