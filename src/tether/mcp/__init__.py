"""MCP upstreams: live client connections, the pinned tool catalogue and how it drifts.

``upstream`` talks to an MCP server on the official SDK (an optional extra, imported lazily);
``catalogue`` is pure (digests and drift); ``pins`` keeps the operator-approved catalogue per
route in a MAC'd file.
"""
