"""What of an upstream's tool result reaches the agent: the vaulted secret scrubbed out, the size capped.

An HTTP upstream is called with a vaulted secret; one that echoes it (an error message, a
debug field, a base64 blob inside ``structuredContent``) must not hand it to the agent. The
result is JSON, so every string in it — object keys included — is scrubbed of every form of
the secret (``inject.encodings``: raw, URL-, base64- and JSON-escaped) after JSON decoding:
a replacement can never break the result's structure, and an escaped form nested in a string
(JSON inside a text block) is still caught. The size is that of the result's JSON, checked
after scrubbing; a result over ``max_result_bytes`` is refused whole, never trimmed (a cut
result can change meaning, and the agent is told clearly instead).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tether.errors import OAuthError
from tether.gateway.scrub import REDACTED

__all__ = ["ResultTooLarge", "result_size", "scrub_json"]

_MARK = REDACTED.decode()


class ResultTooLarge(OAuthError):
    error = "result_too_large"
    status = 502


def _scrub_text(text: str, needles: Sequence[str]) -> tuple[str, int]:
    hits = 0
    for needle in needles:
        if needle in text:
            hits += text.count(needle)
            text = text.replace(needle, _MARK)
    return text, hits


def scrub_json(value: Any, needles: Sequence[bytes]) -> tuple[Any, int]:
    """``value`` with every needle replaced by ``[REDACTED]`` in every string, and how many were."""
    texts = sorted({n.decode("utf-8", errors="replace") for n in needles if n}, key=len, reverse=True)
    if not texts:
        return value, 0
    total = 0

    def walk(item: Any) -> Any:
        nonlocal total
        if isinstance(item, str):
            clean, hits = _scrub_text(item, texts)
            total += hits
            return clean
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        return item

    return walk(value), total


def result_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (what the agent would receive, give or take the envelope)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())
