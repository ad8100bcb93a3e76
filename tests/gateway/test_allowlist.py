"""``tether.gateway.allowlist``: rule parsing, the unambiguous-path check and matching (pure, no I/O).

``*`` is exactly one segment, a final ``**`` one or more; the path is checked in the form
it is forwarded in, and every spelling that an upstream could decode to something else
(dot segments, empty segments, encoded ``/``, ``\\``, ``;`` or ``.``, escapes of unreserved
characters, ``;`` parameters, non-ASCII, control characters, and — in any segment, so in
whatever a ``*`` admits — escapes of whitespace, control characters, ``%`` and non-ASCII
bytes) is refused outright.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.gateway.allowlist import AllowRule, PathRefused, check_path, is_allowed, parse_rule

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

RULES = tuple(parse_rule(r) for r in ("GET /v1/items", "GET /v1/items/*", "POST /v1/items", "GET /v1/files/**",
                                        "GET /v1/*/meta", "PUT /"))  # fmt: skip


def allowed(method: str, path: str) -> bool:
    return is_allowed(RULES, method, check_path(path))


# -- parse_rule --------------------------------------------------------------------------------
def test_parse_rule() -> None:
    assert parse_rule("GET /v1/contacts/*") == AllowRule("GET", ("v1", "contacts", "*"))
    assert parse_rule("DELETE /v1/files/**") == AllowRule("DELETE", ("v1", "files", "**"))
    assert parse_rule("PUT /") == AllowRule("PUT", ())
    assert str(parse_rule("GET /v1/items")) == "GET /v1/items"


@pytest.mark.parametrize(
    "text",
    ["get /v1", "FETCH /v1", "GET v1/items", "GET /v1/**/x", "GET /v1/../admin", "GET /v1/./x", "GET /v1//x",
     "GET /v1/a%2Fb", "GET /v1/a b", "GET /v1/a;b", "GET /v1/a\\b", "GET /v1/*x", "GET", "GET /v1/é"],
)  # fmt: skip
def test_parse_rule_refuses_malformed_patterns(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(text)
    assert parse_rule("GET /v1/items/*")  # positive control


# -- matching ----------------------------------------------------------------------------------
def test_single_star_is_exactly_one_segment() -> None:
    assert allowed("GET", "/v1/items/42")
    assert allowed("GET", "/v1/anything/meta")
    assert not allowed("GET", "/v1/items/42/extra")
    assert not allowed("GET", "/v1/a/b/meta")
    assert allowed("GET", "/v1/items")  # the literal rule


def test_double_star_is_one_or_more_trailing_segments() -> None:
    assert allowed("GET", "/v1/files/a")
    assert allowed("GET", "/v1/files/a/b/c.txt")
    assert not allowed("GET", "/v1/files")  # `**` needs at least one segment
    assert not allowed("GET", "/v1/filesystem/a")


def test_method_must_match_exactly() -> None:
    assert allowed("POST", "/v1/items")
    assert not allowed("POST", "/v1/items/42")
    assert not allowed("DELETE", "/v1/items/42")
    assert not allowed("HEAD", "/v1/items")  # HEAD is not implied by GET
    assert not allowed("get", "/v1/items")  # methods are case-sensitive (RFC 9110 §9.1)
    assert allowed("PUT", "/")
    assert not allowed("GET", "/")


def test_literal_segments_are_case_sensitive() -> None:
    assert not allowed("GET", "/V1/items")
    assert allowed("GET", "/v1/items")


# -- unambiguous paths ---------------------------------------------------------------------------
REFUSED = {
    "dot-dot": ["/v1/files/../admin", "/v1/files/a/..", "/../v1/items"],
    "dot": ["/v1/files/./a", "/v1/files/a/."],
    "encoded dots": ["/v1/files/%2e%2e/admin", "/v1/files/%2E%2E/admin", "/v1/files/.%2e/admin", "/v1/files/%2e/a"],
    "encoded slash": ["/v1/items/a%2Fb", "/v1/items/a%2fb", "/v1/files/..%2F..%2Fadmin"],
    "encoded backslash": ["/v1/files/..%5C..%5Cadmin", "/v1/files/a%5cb"],
    "backslash": ["/v1/files/..\\admin", "/v1/items\\admin"],
    "empty segment": ["/v1/files//admin", "//v1/items", "/v1/items/"],
    "path parameters": ["/v1/files/..;/admin", "/v1/items;x=1", "/v1/items/a;b"],
    "unreserved escapes": ["/v1/not%65s", "/v1/item%73", "/v1/items/%41", "/v1/items/%7E", "/v1/items/%2D", "/v1/items/%5F"],
    "nul": ["/v1/items/%00", "/v1/items/\x00"],
    "non-ascii": ["/v1/items/café", "/v1/items/\u2025", "/v1/items/\uff0e\uff0e"],
    "control characters": ["/v1/items/a\tb", "/v1/items/a\nb", "/v1/items/\x7f"],
    "encoded semicolon": ["/v1/files/..%3B/admin", "/v1/items/a%3bb"],
    "not absolute": ["", "v1/items", "*"],
    "too long": ["/" + "a" * 2048],
}
POSITIVE = {
    "dot-dot": "/v1/files/a..b/c",
    "dot": "/v1/files/a.b",
    "encoded dots": "/v1/files/%21x",
    "encoded slash": "/v1/items/a%3Fb",
    "encoded backslash": "/v1/files/a%5Bb",
    "backslash": "/v1/files/a-b",
    "empty segment": "/v1/files/a",
    "path parameters": "/v1/items/a,b=c",
    "unreserved escapes": "/v1/items/a%3Fb",
    "nul": "/v1/items/0",
    "non-ascii": "/v1/items/cafe",
    "control characters": "/v1/items/a-b",
    "encoded semicolon": "/v1/files/a%3Ab",
    "not absolute": "/v1/items",
    "too long": "/v1/files/" + "a" * 2000,
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_ambiguous_paths_are_refused_and_plain_ones_pass(kind: str) -> None:
    for path in REFUSED[kind]:
        with pytest.raises(PathRefused):
            check_path(path)
    # positive control of the same class
    assert check_path(POSITIVE[kind])
    assert allowed("GET", POSITIVE[kind])


@pytest.mark.parametrize("path", ["/v1/files/%u002e%u002e/admin", "/v1/items/100%", "/v1/items/%zz", "/v1/items/%2"])
def test_malformed_percent_escapes_are_refused(path: str) -> None:
    """``%`` not followed by two hex digits is not a URI (RFC 3986 §2.1); ``%u002e`` is a dot to
    IIS-style decoders (Jetty CVE-2021-34429). Such a path is ambiguous and must be refused."""
    with pytest.raises(PathRefused):
        check_path(path)
    assert check_path("/v1/items/100%3F")  # positive control: a well-formed escape


# -- issue 12 finding 9: what a `*` segment may hold ----------------------------------------------
#: Escapes some upstream decodes into something the allowlist did not judge: each one, in a
#: segment a wildcard admits, must be refused (both hex cases where the spelling has letters).
WILDCARD_ESCAPES = {
    "encoded space": ["%20", "a%20", "%20..", "..%20"],
    "encoded tab, newline, carriage return, vt, ff": ["%09", "%0A", "%0a", "%0D", "%0d", "%0B", "%0C"],
    "encoded control characters": ["%01", "%1F", "%1f", "%7F", "%7f", "a%00"],
    "double encoding": ["%25", "%252e%252e", "%252E%252E", "%252F", "%255C", "100%25"],
    "non-ascii escapes": ["%C3%A9", "caf%c3%a9", "%EF%BC%8E%EF%BC%8E", "%ef%bc%8e", "%E2%80%A5", "%C0%AE", "%80", "%FF"],
}
#: Escapes of printable ASCII with no literal spelling in a segment: still forwarded.
WILDCARD_CONTROLS = ["a%3Fb", "%23x", "%5B0%5D", "%22q%22", "%3C%3E", "%7B%7D", "a%7Cb", "%5E", "%60"]


@pytest.mark.parametrize("kind", sorted(WILDCARD_ESCAPES))
def test_wildcard_segments_refuse_whitespace_controls_double_and_non_ascii_escapes(kind: str) -> None:
    for segment in WILDCARD_ESCAPES[kind]:
        for path in (f"/v1/items/{segment}", f"/v1/{segment}/meta", f"/v1/files/a/{segment}/b"):
            with pytest.raises(PathRefused):
                check_path(path)
    # positive control on the same rules: a plain segment and escapes of printable ASCII pass
    for segment in ("42", *WILDCARD_CONTROLS):
        assert allowed("GET", f"/v1/items/{segment}") and allowed("GET", f"/v1/{segment}/meta")
        assert allowed("GET", f"/v1/files/a/{segment}/b")


def test_root_path() -> None:
    assert check_path("/") == ()


# -- property: what the allowlist sees is what the upstream decodes ------------------------------
ATOMS = ["a", "b", "~", "-", ".", "/", ";", "\\", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%41", "%20", "%3B",
         "%25", "%00", "%C3%A9", ":", "@", "+", ","]  # fmt: skip


@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=12))
def test_an_accepted_path_decodes_to_the_same_segments(atoms: list[str]) -> None:
    path = "/" + "".join(atoms)
    try:
        segments = check_path(path)
    except PathRefused:
        return
    decoded = unquote(path)
    parts = decoded[1:].split("/") if decoded != "/" else []
    assert len(parts) == len(segments), (path, decoded)
    assert all(part not in ("", ".", "..") for part in parts), (path, decoded)
    assert "\\" not in decoded and "\x00" not in decoded
    for segment, part in zip(segments, parts, strict=True):
        assert unquote(segment) == part
