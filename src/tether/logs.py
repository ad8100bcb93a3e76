"""Process logging for ``tether serve`` and ``tether gateway``: one line per record, text or JSON, always redacted.

Every record (tether's, uvicorn's, httpx's, httpcore's, aiohttp's) ends at one handler on the
root logger that carries the redaction filter, so redaction covers libraries that print
headers or URLs and is not a format option. Access tokens are never logged (RFC 9700 §4.9.2,
RFC 6750 §5.3), nor are proofs, workload JWTs or vaulted secrets: anything shaped like a
compact JWS/JWE, credential headers and parameters, and every secret a registered source knows
become ``[REDACTED]``. Tracebacks appear only at ``debug``, except with ``extra=WITH_TRACEBACK``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import re
import threading
import traceback
import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tether.config import Config

__all__ = [
    "REDACTED",
    "WITH_TRACEBACK",
    "JsonFormatter",
    "RedactionFilter",
    "SecretSource",
    "TextFormatter",
    "add_secret_source",
    "configure_logging",
    "logging_config",
    "redact",
]

REDACTED = "[REDACTED]"

_TRACEBACK = "_tether_traceback"
#: ``extra=`` for a record whose traceback is printed at every level, not only at debug.
WITH_TRACEBACK: Mapping[str, object] = MappingProxyType({_TRACEBACK: True})

#: loggers uvicorn gives their own handlers; they are sent to the root handler instead
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_JWS = re.compile(r"eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2,4}")
_HEADER = re.compile(
    r"""(?ix)
    (?<![\w-])((?:proxy-)?authorization|dpop|set-cookie|cookie|x-api-key)  # a credential-carrying header
    ((?:["']?\s*[:=]\s*|["']\s*,\s*)b?["']?)                               # `: `  `=`  `': '`  `', b'`
    ([^"'\r\n]+)                                                             # its value, to a quote or line end
    """
)
_SCHEME = re.compile(r"\b(Bearer|DPoP)\s+[A-Za-z0-9._~+/-]{20,}=*")
_PARAM = re.compile(
    r"(?i)(?<![\w-])((?:access_|refresh_|id_|subject_|actor_)?token|client_assertion|assertion|api_?key|password)"
    r"=[^&\s\"'#]+"
)


class SecretSource(Protocol):
    """Something that knows secret values and removes them from text (``SecretRedactor``)."""

    def redact(self, text: str) -> str: ...


_SOURCES: weakref.WeakSet[Any] = weakref.WeakSet()
_SOURCES_LOCK = threading.Lock()  # records are written from every server thread


def add_secret_source(source: SecretSource) -> None:
    """Redact ``source``'s secrets from every log record for as long as it lives."""
    with _SOURCES_LOCK:
        _SOURCES.add(source)


def redact(text: str) -> str:
    """``text`` with tokens, proofs, credential headers and registered secrets replaced by ``[REDACTED]``."""
    with _SOURCES_LOCK:
        sources = list(_SOURCES)
    for source in sources:
        text = source.redact(text)
    if "eyJ" in text:
        text = _JWS.sub(REDACTED, text)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _SCHEME.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return _PARAM.sub(lambda m: m.group(1) + "=" + REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


#: attributes every LogRecord has; anything else on a record came in through ``extra``
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class RedactionFilter(logging.Filter):
    """On the root handler: rewrite the message and ``extra`` fields of every record before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in _extras(record).items():
            setattr(record, key, _redact_value(value))
        return True


def _rfc3339(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception(record: logging.LogRecord, *, debug: bool) -> dict[str, str]:
    """The exception as one line (type and message); the traceback too at level debug or when the record
    asks for it (``WITH_TRACEBACK``) — always redacted."""
    out: dict[str, str] = {}
    if record.exc_info and record.exc_info[0] is not None:
        kind, value, tb = record.exc_info
        out["exc_type"] = kind.__name__
        out["exc_message"] = redact(" ".join(str(value).split()))[:1000]
        if debug or getattr(record, _TRACEBACK, False) is True:
            out["traceback"] = redact("".join(traceback.format_exception(kind, value, tb)))
    if debug and record.stack_info:
        out["stack"] = redact(record.stack_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line (ASCII-escaped, so no reader can split it)."""

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            **_extras(record),
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_exception(record, debug=self.debug),
        }
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message``, one line per record (newlines escaped) but for a debug traceback."""

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        line = f"{_rfc3339(record.created)} {record.levelname} {record.name}: {message}"
        exc = _exception(record, debug=self.debug)
        if "exc_type" in exc:
            line += f" ({exc['exc_type']}: {exc['exc_message']})"
        if "traceback" in exc:
            trace = exc["traceback"].rstrip("\n")
            # multi-line only at debug: otherwise the exception text inside it cannot forge log lines
            line += "\n" + trace if self.debug else " | " + trace.replace("\r", "\\r").replace("\n", "\\n")
        if "stack" in exc:
            line += "\n" + exc["stack"]
        return line


def logging_config(fmt: str = "text", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: root → one redacted stderr handler; uvicorn's loggers routed to it.

    Also handed to uvicorn as ``log_config``, so each ``--workers`` process (spawned,
    not forked) sets up the same handler.
    """
    formatter = "tether.logs.JsonFormatter" if fmt == "json" else "tether.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "tether.logs.RedactionFilter"}},
        "formatters": {"tether": {"()": formatter, "debug": level == "debug"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "tether",
                "filters": ["redact"],
                "level": level.upper(),
            }
        },
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }


def configure_logging(config: Config) -> dict[str, Any]:
    """Apply ``[logging] format/level`` (``TETHER_LOGGING_*`` override them); returns the dictConfig for uvicorn."""
    document = logging_config(config.logging.format, config.logging.level)
    logging.config.dictConfig(document)
    logging.captureWarnings(True)
    return document
