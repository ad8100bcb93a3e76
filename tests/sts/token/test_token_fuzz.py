"""Junk at ``POST /token``: never a 5xx, always an RFC 6749 §5.2 JSON error (SECURITY "Reject" legend).

A table of known-bad shapes (content types, sizes, repeated parameters, non-UTF-8,
junk DPoP headers, junk tokens) and hypothesis-generated bodies and headers. The
fuzzer asserts only the error contract; the table also asserts the specific code.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenkit import SERVICE_B, STANDARD_ERRORS, audit_mark, nonce_for, ok, refused, session_form

from helpers import ACCESS, JWT, TOKEN_EXCHANGE, Client, RunningSts, create_task

FORM = "application/x-www-form-urlencoded"
FIELDS = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "resource",
    "audience",
    "scope",
    "requested_token_type",
    "task",
    "client_id",
    "client_assertion",
    "client_assertion_type",
]
JUNK_TOKENS = [
    "a.b.c",
    "...",
    "eyJhbGciOiJub25lIn0.e30.",
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",
    '{"protected":"e30","payload":"e30","signature":""}',
    "e30." * 3,
    "x" * 20_000,
    "eyJ" + "A" * 9000 + ".e30.e30",
    "\u00e9\u00e9.\u00e9.\u00e9",
]


def _contract(response: httpx.Response) -> dict[str, Any]:
    """The error contract every refusal keeps: 4xx, JSON object, a standard ``error`` code, no-store."""
    assert response.status_code < 500, response.text
    assert response.status_code in (400, 401, 403), response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body, dict) and body.get("error") in STANDARD_ERRORS, body
    assert isinstance(body.get("error_description", ""), str)
    assert response.headers.get("cache-control") == "no-store"
    return body


@pytest.fixture(scope="module")
def raw_http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        yield http


@pytest.fixture
def valid(shared_sts: RunningSts) -> dict[str, str]:
    """A well-formed exchange body for a real task, with an SVID that only the positive control redeems."""
    task = create_task(shared_sts)
    return session_form(task["id"], shared_sts.svid())


@pytest.fixture(scope="module")
def fuzz_base(shared_sts: RunningSts) -> dict[str, str]:
    """A well-formed body whose subject token is junk, so no fuzzed request can redeem anything."""
    task = create_task(shared_sts)
    return session_form(task["id"], "a.b.c")


@pytest.fixture(scope="module")
def fuzz_client(shared_sts: RunningSts) -> Client:
    """A client holding a server nonce, so fuzzed requests with a good proof reach the token checks."""
    client = Client(shared_sts)
    nonce_for(client)
    return client


def _control(sts: RunningSts, valid: dict[str, str]) -> None:
    """Positive control: the very request the junk was derived from still succeeds."""
    ok(Client(sts).post_token(valid))


# -- the table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [None, "application/json", "text/plain", "multipart/form-data; boundary=x", "application/x-www-form", "form"],
)
def test_BCP_13_wrong_content_type_refused(
    shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str], ctype: str | None
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    response = raw_http.post(shared_sts.token_url, content=urlencode(valid).encode(), headers=headers)
    assert _contract(response)["error"] == "invalid_request"
    _control(shared_sts, valid)


def test_BCP_13_form_content_type_with_charset_accepted(shared_sts: RunningSts) -> None:
    task = create_task(shared_sts)
    client = Client(shared_sts)
    nonce_for(client)
    response = client.http.post(
        shared_sts.token_url,
        content=urlencode(session_form(task["id"], shared_sts.svid())).encode(),
        headers={"content-type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8", "DPoP": client.proof()},
    )
    ok(response)


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024])
def test_BCP_13_oversized_body_refused(
    shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str], size: int
) -> None:
    body = urlencode(valid).encode() + b"&pad=" + b"a" * size
    response = raw_http.post(shared_sts.token_url, content=body, headers={"content-type": FORM})
    assert _contract(response)["error"] == "invalid_request"
    _control(shared_sts, valid)


def test_BCP_13_oversized_chunked_body_refused(shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield urlencode(valid).encode() + b"&pad="
        for _ in range(40):
            yield b"a" * 4096

    response = raw_http.post(shared_sts.token_url, content=chunks(), headers={"content-type": FORM})
    assert "content-length" not in response.request.headers
    assert _contract(response)["error"] == "invalid_request"
    _control(shared_sts, valid)


@pytest.mark.parametrize(
    "name",
    ["grant_type", "subject_token", "subject_token_type", "task", "scope", "client_id", "actor_token", "requested_token_type"],
)
def test_BCP_13_repeated_parameter_refused(
    shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str], name: str
) -> None:
    pairs = [*valid.items(), (name, valid.get(name, "x")), (name, "other")]
    response = raw_http.post(shared_sts.token_url, content=urlencode(pairs).encode(), headers={"content-type": FORM})
    assert _contract(response)["error"] == "invalid_request"
    _control(shared_sts, valid)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=\xff\xfe",
        b"\xc3\x28=1",
        b"grant_type=" + "\u00e9".encode("latin-1"),
        b"%ff%fe=%c3%28",
        b"grant_type=" + TOKEN_EXCHANGE.encode() + b"&subject_token=%80",
        b"&&&",
        b"=",
        b"a=b=c&&d",
        b"\x00\x01\x02",
        b"grant_type",
        b"&".join(b"f%d=1" % i for i in range(100)),
    ],
)
def test_JWT_07_non_utf8_or_malformed_form_refused(
    shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str], body: bytes
) -> None:
    response = raw_http.post(shared_sts.token_url, content=body, headers={"content-type": FORM})
    assert _contract(response)["error"] == "invalid_request"
    _control(shared_sts, valid)


@pytest.mark.parametrize(
    "dpop",
    ["", "a" * 20_000, "x.y.z", "Bearer abc", "DPoP abc", "\u00e9\u00e0", "a,b", "e30.e30.e30", "..", "null"],
)
def test_DPOP_02_junk_dpop_header_refused(
    shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str], dpop: str
) -> None:
    headers = [(b"content-type", FORM.encode()), (b"DPoP", dpop.encode("latin-1"))]
    response = raw_http.post(shared_sts.token_url, content=urlencode(valid).encode(), headers=headers)
    assert _contract(response)["error"] == "invalid_dpop_proof"
    _control(shared_sts, valid)


@pytest.mark.parametrize("junk", JUNK_TOKENS)
@pytest.mark.parametrize("as_type", [JWT, ACCESS])
def test_A_01_junk_subject_token_refused(shared_sts: RunningSts, valid: dict[str, str], junk: str, as_type: str) -> None:
    client = Client(shared_sts)
    form = {**valid, "subject_token": junk, "subject_token_type": as_type}
    if as_type == ACCESS:
        form.pop("task")
        form["resource"] = SERVICE_B
    body = _contract(client.post_token(form))
    assert body["error"] in ("invalid_grant", "invalid_request")
    _control(shared_sts, valid)


@pytest.mark.parametrize("junk", JUNK_TOKENS[:5])
def test_A_01_junk_actor_token_refused(shared_sts: RunningSts, junk: str) -> None:
    task = create_task(shared_sts)
    agent = Client(shared_sts)
    session = ok(agent.session(task["id"]))["access_token"]
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": session,
        "subject_token_type": ACCESS,
        "actor_token": junk,
        "actor_token_type": JWT,
        "resource": SERVICE_B,
    }
    assert _contract(Client(shared_sts).post_token(form))["error"] in ("invalid_grant", "invalid_request")
    ok(agent.hop(session, SERVICE_B))


@pytest.mark.parametrize(
    "grant",
    [
        "client_credentials",
        "password",
        "authorization_code",
        "refresh_token",
        TOKEN_EXCHANGE.upper(),
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ],
)
def test_BCP_09_other_grant_types_refused(shared_sts: RunningSts, valid: dict[str, str], grant: str) -> None:
    client = Client(shared_sts)
    since = audit_mark(shared_sts)
    response = client.post_token({**valid, "grant_type": grant})
    refused(shared_sts, response, since=since, status=400, error="unsupported_grant_type", secrets=[valid["subject_token"]])
    _control(shared_sts, valid)


def test_BCP_13_other_methods_get_json_errors(shared_sts: RunningSts, raw_http: httpx.Client, valid: dict[str, str]) -> None:
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = raw_http.request(method, shared_sts.token_url)
        assert response.status_code == 405, response.text
        assert response.json()["error"] == "method_not_allowed"
    _control(shared_sts, valid)


def test_TX_04_malformed_request_refusals_are_audited(shared_sts: RunningSts, valid: dict[str, str]) -> None:
    """DESIGN "Every refusal ... is audited": also those decided while parsing the request."""
    sts = shared_sts
    client = Client(sts)
    cases: dict[str, dict[str, Any]] = {
        "repeated grant_type": {**valid, "grant_type": [TOKEN_EXCHANGE, TOKEN_EXCHANGE]},
        "missing subject_token": {k: v for k, v in valid.items() if k != "subject_token"},
        "malformed scope": {**valid, "scope": "wiki:read  wiki:write"},
        "two resources": {**valid, "resource": [SERVICE_B, SERVICE_B + "/x"]},
    }
    unaudited = []
    for name, form in cases.items():
        since = audit_mark(sts)
        response = client.post_token(form)
        _contract(response)
        if not [r for r in sts.audit() if r.seq > since and r.kind == "token.refused"]:
            unaudited.append(f"{name} ({response.json()['error']})")
    assert not unaudited, f"refusals without an audit record: {unaudited}"
    ok(client.post_token(valid))


# -- the fuzzer -----------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=120)
_values = st.one_of(
    _text,
    st.sampled_from([TOKEN_EXCHANGE, JWT, ACCESS, SERVICE_B, "http://127.0.0.1:9001#f", "wiki:read", *JUNK_TOKENS[:6]]),
)
_names = st.one_of(st.sampled_from(FIELDS), st.text(string.ascii_letters + "_[]", max_size=15))
_ctypes = st.sampled_from(
    [FORM, FORM + "; charset=utf-8", "APPLICATION/X-WWW-FORM-URLENCODED", "application/json", "text/plain", None]
)
#: Header values that HTTP/1.1 can carry (RFC 9110 §5.5: VCHAR, obs-text, inner SP/HTAB); anything else is
#: refused by the HTTP layer (h11) before the application sees it.
_header_bytes = st.binary(max_size=100).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip())
_dpop = st.one_of(
    st.none(),
    st.just("<valid>"),
    st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=300),
    _header_bytes.map(lambda b: b.decode("latin-1")),
    st.sampled_from(JUNK_TOKENS[:6]),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(_names, _values), max_size=14), ctype=_ctypes, dpop=_dpop, valid_base=st.booleans())
def test_BCP_13_fuzzed_forms_never_5xx(
    shared_sts: RunningSts,
    raw_http: httpx.Client,
    fuzz_base: dict[str, str],
    fuzz_client: Client,
    pairs: list[tuple[str, str]],
    ctype: str | None,
    dpop: str | None,
    valid_base: bool,
) -> None:
    if valid_base:
        pairs = list(fuzz_base.items()) + pairs
    headers: list[tuple[bytes, bytes]] = []
    if ctype:
        headers.append((b"content-type", ctype.encode()))
    if dpop == "<valid>":
        dpop = fuzz_client.proof()
    if dpop is not None:
        headers.append((b"DPoP", dpop.strip().encode("latin-1", errors="replace")))
    body = urlencode(pairs).encode()
    _contract(raw_http.post(shared_sts.token_url, content=body, headers=headers))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2000), ctype=_ctypes)
def test_BCP_13_fuzzed_raw_bodies_never_5xx(
    shared_sts: RunningSts, raw_http: httpx.Client, body: bytes, ctype: str | None
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    _contract(raw_http.post(shared_sts.token_url, content=body, headers=headers))


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture(scope="module")
def session_and_hop(shared_sts: RunningSts, fuzz_client: Client) -> tuple[str, str]:
    task = create_task(shared_sts)
    session = ok(fuzz_client.session(task["id"]))["access_token"]
    return session, ok(fuzz_client.hop(session, "http://127.0.0.1:9001"))["access_token"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(["session", "hop"]), as_type=st.sampled_from([ACCESS, JWT]))
def test_A_01_mutated_real_tokens_never_5xx(
    shared_sts: RunningSts,
    fuzz_client: Client,
    session_and_hop: tuple[str, str],
    data: st.DataObject,
    which: str,
    as_type: str,
) -> None:
    token = session_and_hop[0] if which == "session" else session_and_hop[1]
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(st.sampled_from(["", "A", "_", "-", ".", "=", "+", "/", "%", "é", token[position] * 2]))
    mutated = token[:position] + replacement + token[position + 1 :]
    if data.draw(st.booleans(), label="truncate"):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)), label="length")]
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": mutated, "subject_token_type": as_type, "resource": SERVICE_B}
    response = fuzz_client.post_token(form)
    if response.status_code == 200:
        # Only the same JWS may pass: an unchanged session token, or a spelling whose base64url
        # decodes to the same bytes (unused trailing bits; K-03 says key on jti, not the string).
        assert which == "session" and as_type == ACCESS, response.text
        assert [_b64(p) for p in mutated.split(".")] == [_b64(p) for p in token.split(".")], mutated
        return
    body = _contract(response)
    assert body["error"] in ("invalid_grant", "invalid_request", "invalid_dpop_proof"), body


def test_BCP_13_server_still_serves_after_fuzzing(shared_sts: RunningSts, valid: dict[str, str]) -> None:
    """Positive control for the fuzzers above: the same server still issues tokens."""
    _control(shared_sts, valid)
