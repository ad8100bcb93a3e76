"""RFC 8707 §2 ``resource`` and RFC 8693 §2.1 ``audience``: exactly one target per token.

tether issues one audience per token, so a request naming several targets is refused with
``invalid_target`` rather than served with a token usable at several services.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from tether.errors import InvalidTarget

__all__ = ["MAX_URI_LENGTH", "check_resource_uri", "select_audience"]

MAX_URI_LENGTH = 2048


def check_resource_uri(value: str) -> str:
    """An absolute URI without a fragment (RFC 8707 §2), printable ASCII only."""
    if not value or len(value) > MAX_URI_LENGTH or not value.isascii() or not value.isprintable() or " " in value:
        raise InvalidTarget("resource must be an absolute uri")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise InvalidTarget("resource must be an absolute uri") from exc
    if not parts.scheme or "#" in value:
        raise InvalidTarget("resource must be an absolute uri without a fragment")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise InvalidTarget("resource must be an absolute uri")
    return value


def select_audience(resources: Sequence[str], audiences: Sequence[str]) -> str | None:
    """The single requested target, or ``None`` when none was named.

    ``resource`` values must be absolute URIs; ``audience`` values are logical names
    (RFC 8693 §2.1) but tether's audiences are resource identifiers, so both are held
    to the same form. Naming the same target in both is accepted.
    """
    targets = {check_resource_uri(v) for v in resources} | {check_resource_uri(v) for v in audiences}
    if len(targets) > 1:
        raise InvalidTarget("exactly one resource or audience may be requested")
    return next(iter(targets), None)
