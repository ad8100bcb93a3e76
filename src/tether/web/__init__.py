"""Shared ASGI plumbing: the one error map, strict form parsing, DPoP request headers."""
