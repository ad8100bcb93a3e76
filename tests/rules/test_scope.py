"""RFC 6749 §3.3 scope syntax and the attenuation subset (``tether.rules.scope``): SECURITY.md T-01, TX-07."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import InvalidRequest, InvalidScope
from tether.rules.scope import MAX_SCOPE_TOKENS, check_subset, format_scope, parse_scope, parse_scope_list

# ---------------------------------------------------------------------------------------------
# syntax: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), single-space delimited
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", set(), id="empty"),
        pytest.param("read", {"read"}, id="one"),
        pytest.param("read write", {"read", "write"}, id="two"),
        pytest.param("wiki:read wiki:write", {"wiki:read", "wiki:write"}, id="namespaced"),
        pytest.param("read read", {"read"}, id="duplicate"),
        pytest.param("Read read", {"Read", "read"}, id="case-sensitive"),
        pytest.param("!#$%&'()*+,-./:;<=>?@[]^_`{|}~", {"!#$%&'()*+,-./:;<=>?@[]^_`{|}~"}, id="all-punctuation"),
        pytest.param("x" * 128, {"x" * 128}, id="128-chars"),
        pytest.param("https://api.example/scope", {"https://api.example/scope"}, id="uri"),
    ],
)
def test_parse_scope_valid(value: str, expected: set[str]) -> None:
    assert parse_scope(value) == frozenset(expected)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(" read", id="leading-space"),
        pytest.param("read ", id="trailing-space"),
        pytest.param("read  write", id="double-space"),
        pytest.param(" ", id="space"),
        pytest.param("  ", id="spaces"),
        pytest.param("read\twrite", id="tab"),
        pytest.param("read\nwrite", id="newline"),
        pytest.param('say"hi"', id="dquote"),
        pytest.param("back\\slash", id="backslash"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("read\x00", id="nul"),
        pytest.param("read\x7f", id="del"),
        pytest.param("read\u00a0write", id="nbsp"),
        pytest.param("read,write ", id="trailing-after-comma"),
        pytest.param("\u3000read", id="ideographic-space"),
    ],
)
def test_parse_scope_invalid_syntax_refused(value: str) -> None:
    assert parse_scope("read write") == {"read", "write"}
    with pytest.raises(InvalidScope) as info:
        parse_scope(value)
    assert type(info.value) is InvalidScope
    assert info.value.error == "invalid_scope"


def test_parse_scope_too_many_tokens_is_invalid_request() -> None:
    at_cap = " ".join(f"s{i}" for i in range(MAX_SCOPE_TOKENS))
    assert len(parse_scope(at_cap)) == MAX_SCOPE_TOKENS
    with pytest.raises(InvalidRequest) as info:
        parse_scope(at_cap + " one-more")
    assert info.value.error == "invalid_request"


@pytest.mark.parametrize("tokens", [[""], ["a b"], ["ok", 1], ["ok", None], ["x" * 129], ["tab\t"]], ids=repr)
def test_parse_scope_list_refuses_bad_tokens(tokens: list[object]) -> None:
    assert parse_scope_list(["a", "b", "a"]) == {"a", "b"}
    with pytest.raises(InvalidScope) as info:
        parse_scope_list(tokens)  # type: ignore[arg-type]  # not all strings, on purpose
    assert info.value.error == "invalid_scope"


def test_invalid_scope_description_is_wire_safe() -> None:
    with pytest.raises(InvalidScope) as info:
        parse_scope_list(['evil"\\\n' + "x" * 200])
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in info.value.description)


# ---------------------------------------------------------------------------------------------
# T-01 / TX-07 subset: widening refused, naming what was asked for
# ---------------------------------------------------------------------------------------------


def test_T_01_widening_refused_naming_the_extra_scopes() -> None:
    check_subset(frozenset({"read"}), frozenset({"read"}))
    with pytest.raises(InvalidScope) as info:
        check_subset(frozenset({"read", "write", "admin"}), frozenset({"read"}))
    assert type(info.value) is InvalidScope
    assert info.value.error == "invalid_scope"
    assert "`admin write`" in info.value.description
    assert "read" not in info.value.description.replace("subject token", "")


def test_T_01_description_names_what_it_exceeds() -> None:
    with pytest.raises(InvalidScope) as info:
        check_subset(frozenset({"mail:send"}), frozenset({"wiki:read"}), what="the task")
    assert info.value.description == "scope `mail:send` exceeds the task"


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        pytest.param(set(), set(), id="empty-empty"),
        pytest.param(set(), {"a"}, id="empty-of-one"),
        pytest.param({"a"}, {"a"}, id="equal"),
        pytest.param({"a"}, {"a", "b"}, id="subset"),
        pytest.param({"a", "b"}, {"a", "b", "c"}, id="strict-subset"),
    ],
)
def test_subset_accepted(requested: set[str], allowed: set[str]) -> None:
    check_subset(frozenset(requested), frozenset(allowed))


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        pytest.param({"a"}, set(), id="from-nothing"),
        pytest.param({"Read"}, {"read"}, id="case"),
        pytest.param({"read:all"}, {"read"}, id="prefix-superstring"),
        pytest.param({"read"}, {"read:all"}, id="prefix-substring"),
        pytest.param({"a", "b"}, {"a"}, id="one-extra"),
    ],
)
def test_T_01_not_a_subset_refused(requested: set[str], allowed: set[str]) -> None:
    check_subset(frozenset(allowed), frozenset(allowed))
    with pytest.raises(InvalidScope):
        check_subset(frozenset(requested), frozenset(allowed))


def test_format_scope_sorted_single_space() -> None:
    assert format_scope({"write", "read", "admin"}) == "admin read write"
    assert format_scope(set()) == ""


_token = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.frozensets(_token, max_size=MAX_SCOPE_TOKENS))
def test_format_parse_round_trip(scopes: frozenset[str]) -> None:
    assert parse_scope(format_scope(scopes)) == scopes


@settings(max_examples=100, deadline=None)
@given(st.frozensets(_token, max_size=8), st.frozensets(_token, max_size=8))
def test_T_01_check_subset_property(requested: frozenset[str], allowed: frozenset[str]) -> None:
    if requested <= allowed:
        check_subset(requested, allowed)
    else:
        with pytest.raises(InvalidScope):
            check_subset(requested, allowed)
