"""Small values tether hands out and takes back: ``payload.tag`` under a key derived from the master key.

The payload is RFC 8785 JSON in base64url (RFC 4648 §5, no padding); the tag is HMAC-SHA256
(RFC 2104) over a per-kind label and the payload, so a value of one kind (a console session, a
login link, an approval link) never verifies as another. The tag is checked, in constant time,
before anything in the payload is decoded. Used by ``rules.console_session`` and ``rules.approval_seal``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from tether.rules.tool_call import canonical_json

__all__ = ["b64url", "open_payload", "seal_payload"]


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5, as JOSE writes it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _tag(key: bytes, label: bytes, payload: str) -> str:
    return b64url(hmac.new(key, label + payload.encode(), hashlib.sha256).digest())


def seal_payload(key: bytes, label: bytes, content: Mapping[str, Any]) -> str:
    payload = b64url(canonical_json(dict(content)).encode())
    return f"{payload}.{_tag(key, label, payload)}"


def open_payload(key: bytes, label: bytes, sealed: object, *, max_length: int) -> dict[str, Any] | None:
    """The payload's JSON object when the tag verifies, else ``None`` (malformed, too long, forged)."""
    if not isinstance(sealed, str) or len(sealed) > max_length or not sealed.isascii() or sealed.count(".") != 1:
        return None
    payload, tag = sealed.split(".")
    if not hmac.compare_digest(tag.encode(), _tag(key, label, payload).encode()):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    return data if isinstance(data, dict) else None
