"""Starlette's ``JSONResponse`` with its encoder built once.

``json.dumps`` with any non-default argument builds a new ``JSONEncoder`` on every call;
the token endpoint answers with JSON on every exchange. The bytes are exactly Starlette's:
compact separators, UTF-8, no NaN.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["CompactJSONResponse"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


class CompactJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content).encode("utf-8")
