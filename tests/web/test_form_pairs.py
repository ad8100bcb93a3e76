"""``web.forms.parse_pairs`` is ``parse_qsl`` with tether's strict arguments, field for field
(RFC 6749 §3.2 / WHATWG URL §5.1 decoding): the token endpoint's fast parse may not accept,
decode or refuse anything differently."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.web.forms import MAX_FIELDS, parse_pairs

# the characters that matter to the format, and some that do not
_ALPHABET = st.sampled_from([*"ab=&+%2FfZz09-_. ~é\x00", "%C3%A9", "%E9", "%2", "%%", "%zz", "%3D", "%26"])
_TEXT = st.lists(_ALPHABET, max_size=40).map("".join)


def _stdlib(text: str) -> list[tuple[str, str]] | type[Exception]:
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict",
                         max_num_fields=MAX_FIELDS)  # fmt: skip
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc)


def _ours(text: str) -> list[tuple[str, str]] | type[Exception]:
    try:
        return parse_pairs(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc)


@settings(max_examples=600, deadline=None)
@given(_TEXT)
def test_same_pairs_and_refusals_as_parse_qsl(text: str) -> None:
    assert _ours(text) == _stdlib(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "a=1&",
        "&a=1",
        "a=1&&b=2",
        "a==1",
        "a=%E9",
        "a=%C3%A9+b",
        "a+b=c%2Bd",
        "=1",
        "a=",
        "&".join(["a=1"] * MAX_FIELDS),
        "&".join(["a=1"] * (MAX_FIELDS + 1)),
    ],
)
def test_edge_cases_match_parse_qsl(text: str) -> None:
    assert _ours(text) == _stdlib(text)


def test_refuses_more_fields_than_the_cap() -> None:
    with pytest.raises(ValueError, match="Max number of fields"):
        parse_pairs("&".join(["a=1"] * (MAX_FIELDS + 1)))


def test_refuses_a_percent_escape_that_is_not_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        parse_pairs("subject_token=%FF")
