"""``tether.logs``: the JSON and text line formats, and redaction of tokens, proofs, headers and secrets (BCP-13).

Records go through a real handler carrying ``RedactionFilter`` into a string buffer,
the way ``configure_logging`` wires stderr. Every redaction case has a control that
an ordinary message passes untouched, so a filter that blanked everything would fail.
The last test applies ``logging_config`` in a fresh interpreter and shows uvicorn's
loggers reaching the same handler.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tether.agent.proof import DPoPKey
from tether.gateway.redact import SecretRedactor
from tether.logs import REDACTED, JsonFormatter, RedactionFilter, TextFormatter, add_secret_source, redact

PROOF = DPoPKey().proof("POST", "https://sts.example/token", access_token="at", now=1_700_000_000)
TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJzcGlmZmU6Ly90In0.c2lnbmF0dXJlLWJ5dGVz"
SECRET = "sk_live/Q7+zX=legacy9Key!b42"


class Capture:
    """A logger whose records go through one redacting handler into a buffer."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(formatter)
        self.handler.addFilter(RedactionFilter())
        self.logger = logging.getLogger(f"tether.test.capture.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)


@pytest.fixture
def json_log() -> Iterator[Capture]:
    capture = Capture(JsonFormatter())
    yield capture
    capture.close()


def test_json_line_has_rfc3339_utc_ts_level_logger_message_and_extras(json_log: Capture) -> None:
    json_log.logger.info("task %s ended", "t-1", extra={"route": "apikey", "status": 200})
    [line] = json_log.lines()
    record = json.loads(line)
    assert record["message"] == "task t-1 ended"
    assert record["level"] == "info" and record["logger"] == json_log.logger.name
    assert record["route"] == "apikey" and record["status"] == 200
    assert str(record["ts"]).endswith("Z")
    parsed = dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    assert abs(parsed.timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 3600  # a real clock reading, in UTC


def test_an_extra_cannot_overwrite_the_standard_fields(json_log: Capture) -> None:
    json_log.logger.warning("real", extra={"level": "debug", "logger": "spoofed", "ts": "yesterday"})
    [record] = json_log.records()
    assert record["level"] == "warning" and record["logger"] == json_log.logger.name and record["ts"] != "yesterday"


def test_a_multiline_message_stays_one_json_line(json_log: Capture) -> None:
    json_log.logger.error("first\nsecond\u2028third")
    [record] = json_log.records()
    assert record["message"] == "first\nsecond\u2028third"


def _raise(message: str) -> None:
    raise ValueError(message)


def test_exception_is_one_line_without_traceback_at_info(json_log: Capture) -> None:
    try:
        _raise("store went away\nretry later")
    except ValueError:
        json_log.logger.exception("upkeep failed")
    [line] = json_log.lines()
    record = json.loads(line)
    assert record["exc_type"] == "ValueError"
    assert record["exc_message"] == "store went away retry later"
    assert "traceback" not in record and "Traceback" not in line


def test_exception_carries_a_redacted_traceback_at_debug() -> None:
    capture = Capture(JsonFormatter(debug=True))
    try:
        try:
            _raise(f"bad subject token {TOKEN}")
        except ValueError:
            capture.logger.exception("exchange failed")
        [record] = capture.records()
    finally:
        capture.close()
    assert "Traceback (most recent call last)" in str(record["traceback"]) and "_raise" in str(record["traceback"])
    assert TOKEN not in json.dumps(record)
    assert record["exc_message"] == f"bad subject token {REDACTED}"


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        (f"subject_token={TOKEN}&task=t1", TOKEN),
        (f"proof {PROOF} rejected", PROOF),
        (f"Authorization: DPoP {TOKEN}", TOKEN),
        ("authorization: Bearer opaque-value-0123456789abcdef", "opaque-value-0123456789abcdef"),
        (f"DPoP: {PROOF}", PROOF),
        ("headers [(b'authorization', b'Basic c3ZjLXVzZXI6cGFzcw=='), (b'accept', b'*/*')]", "c3ZjLXVzZXI6cGFzcw=="),
        ("{'dpop': 'not-a-jwt-but-a-proof', 'host': 'x'}", "not-a-jwt-but-a-proof"),
        ('{"Cookie": "session=abc123def"}', "session=abc123def"),
        ("X-Api-Key: key-4711-abc", "key-4711-abc"),
        ("GET /search?q=1&access_token=opaque4711 HTTP/1.1", "opaque4711"),
        ("grant_type=x&client_assertion=assert-4711&actor_token=act-4711", "assert-4711"),
        ("grant_type=x&client_assertion=assert-4711&actor_token=act-4711", "act-4711"),
        ("upstream said Bearer AbCdEfGhIjKlMnOpQrStUvWxYz012345", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ],
)
def test_BCP_13_tokens_proofs_and_credential_headers_are_redacted(json_log: Capture, message: str, secret: str) -> None:
    json_log.logger.info(message)
    [record] = json_log.records()
    assert secret not in json_log.buffer.getvalue()
    assert REDACTED in str(record["message"])


@pytest.mark.parametrize(
    "message",
    [
        "bearer exception: route `crm` (owner team-crm) expires in 3 days (2030-01-01)",
        "invalid_dpop_proof: dpop proof has already been used",
        "use_dpop_nonce; DPoP-Nonce: abc; token_type DPoP",
        "task 9f2c suspended by the gateway: 3 refused calls within 60s",
        'HTTP Request: GET http://127.0.0.1:8700/revocations/stream?after=12&heartbeat=0.66 "HTTP/1.1 200 OK"',
        "max_tokens=100 reached for spiffe://tether.local/agent/research",
    ],
)
def test_ordinary_messages_pass_untouched(json_log: Capture, message: str) -> None:
    json_log.logger.info(message)
    [record] = json_log.records()
    assert record["message"] == message


def test_BCP_13_registered_gateway_secrets_are_redacted_in_every_encoding(json_log: Capture) -> None:
    redactor = SecretRedactor()
    redactor.register(SECRET)
    add_secret_source(redactor)
    url_encoded = "sk_live%2FQ7%2BzX%3Dlegacy9Key%21b42"
    json_log.logger.warning("upstream %s echoed %s", f"https://legacy.example/v1?k={SECRET}", url_encoded)
    json_log.logger.warning("no secret here")
    text = json_log.buffer.getvalue()
    assert SECRET not in text and url_encoded not in text
    first, second = json_log.records()
    assert str(first["message"]).count(REDACTED) == 2
    assert second["message"] == "no secret here"


def test_BCP_13_extras_are_redacted_too(json_log: Capture) -> None:
    json_log.logger.info("call", extra={"request": {"headers": {"authorization": f"DPoP {TOKEN}"}, "path": "/v1"}})
    [record] = json_log.records()
    assert TOKEN not in json_log.buffer.getvalue()
    assert record["request"] == {"headers": {"authorization": f"DPoP {REDACTED}"}, "path": "/v1"}


def test_BCP_13_text_format_is_redacted_and_one_line_per_record() -> None:
    capture = Capture(TextFormatter())
    try:
        capture.logger.warning("refused Authorization: DPoP %s\nforged line", TOKEN)
        try:
            _raise(f"token {TOKEN}")
        except ValueError:
            capture.logger.exception("failed")
        lines = capture.lines()
    finally:
        capture.close()
    assert len(lines) == 2
    assert TOKEN not in "\n".join(lines)
    assert " WARNING tether.test.capture." in lines[0] and lines[0].endswith(f"Authorization: {REDACTED}\\nforged line")
    assert lines[1].endswith(f"failed (ValueError: token {REDACTED})")


def test_redact_is_idempotent_and_leaves_plain_text_alone() -> None:
    once = redact(f"Authorization: DPoP {TOKEN}")
    assert redact(once) == once
    assert redact("nothing to see") == "nothing to see"


_CHILD = r"""
import logging, sys
from tether.logs import logging_config
logging.config.dictConfig(logging_config("json", "info"))
logging.getLogger("uvicorn.error").warning("Invalid HTTP request received. Authorization: Bearer %s", sys.argv[1])
access = ("127.0.0.1:5", "GET", "/x?access_token=" + sys.argv[1], "1.1", 401)
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', *access)
logging.getLogger("httpx").debug("below the level: dropped")
logging.getLogger("tether.sts").info("served")
"""


def test_logging_config_routes_uvicorn_and_library_loggers_through_the_redacting_handler() -> None:
    opaque = "opaque-credential-0123456789abcdef"
    result = subprocess.run([sys.executable, "-c", _CHILD, opaque], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["logger"] for r in records] == ["uvicorn.error", "uvicorn.access", "tether.sts"]
    assert opaque not in result.stderr
    assert records[1]["message"] == f'127.0.0.1:5 - "GET /x?access_token={REDACTED} HTTP/1.1" 401'
