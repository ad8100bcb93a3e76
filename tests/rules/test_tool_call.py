"""``tether.rules.tool_call``: RFC 8785 canonical arguments, their digest, the caps, names, tags, scopes.

Pure and fast. The number vectors are RFC 8785 Appendix B's (IEEE 754 bit patterns and the
text ECMAScript prints); the key-order example is RFC 8785 §3.2.3's. Digest stability under
key reordering and whitespace is a property test (hypothesis).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.rules.jws import strict_json_loads
from tether.rules.tool_call import (
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_SCOPE_PREFIX,
    MAX_DEPTH,
    MAX_TOOL_NAME,
    ToolCall,
    ToolCallError,
    argument_tags,
    canonical_json,
    digest,
    json_text_argument,
    missing_tool_scope,
    parse_tool_call,
)

# -- RFC 8785 Appendix B: numbers ---------------------------------------------------------------
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),  # minus zero
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "text"), APPENDIX_B)
def test_numbers_print_as_RFC8785_appendix_B(bits: str, text: str) -> None:
    assert canonical_json(_double(bits)) == text


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinities_are_refused(bits: str) -> None:
    assert not math.isfinite(_double(bits))
    with pytest.raises(ToolCallError, match="NaN or an infinity"):
        canonical_json({"x": _double(bits)})


def test_integers_print_exactly_inside_the_safe_range_and_are_refused_beyond() -> None:
    assert canonical_json(2**53 - 1) == "9007199254740991"
    assert canonical_json(-(2**53 - 1)) == "-9007199254740991"
    # beyond ±(2**53 - 1) an integer is refused (RFC 7493 §2.2): policy would see a rounded double
    # while the tool receives the exact value
    for unsafe in (2**53, 2**53 + 1, -(2**53), 10**30):
        with pytest.raises(ToolCallError, match="RFC 7493"):
            canonical_json(unsafe)
    assert canonical_json(float(2**53)) == "9007199254740992"  # a double of that size is a double
    assert canonical_json(1e21) == "1e+21"
    assert canonical_json(1.0) == "1" and canonical_json(-0.0) == "0" and canonical_json(0) == "0"


def test_an_integer_beyond_any_double_is_refused_not_a_crash() -> None:
    with pytest.raises(ToolCallError, match="RFC 7493"):
        parse_tool_call({"name": "t", "arguments": {"n": 10**400}})


def test_booleans_and_null_are_literals_not_numbers() -> None:
    assert canonical_json([True, False, None, 1]) == "[true,false,null,1]"


# -- RFC 8785 §3.2.2.2 strings and §3.2.3 key order -----------------------------------------------
def test_strings_escape_as_ecmascript_json_stringify() -> None:
    text = '"\\/\b\f\n\r\t\x00\x1f\x7f é€😀\u2028'
    assert canonical_json(text) == '"\\"\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f\x7f é€😀\u2028"'


def test_keys_sort_by_utf16_code_units_RFC8785_3_2_3() -> None:
    members = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = [key for key in json.loads(canonical_json(members))]
    # the astral U+1F600 is the surrogate pair D83D DE00: before U+FB33 in UTF-16, after it in code points
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(members) != order  # code-point order would differ: the test discriminates


def test_RFC8785_3_2_2_example_output() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected


@pytest.mark.parametrize("where", ["value", "key"])
def test_a_lone_surrogate_is_refused_not_a_crash(where: str) -> None:
    arguments = strict_json_loads(b'{"a": "\\ud800"}' if where == "value" else b'{"\\ud800": 1}')
    with pytest.raises(ToolCallError, match="lone surrogate"):
        parse_tool_call({"name": "t", "arguments": arguments})
    # positive control: a proper surrogate pair is an astral character and is fine
    ok = strict_json_loads(b'{"a": "\\ud83d\\ude00"}')
    assert parse_tool_call({"name": "t", "arguments": ok}).canonical == '{"a":"\U0001f600"}'


@pytest.mark.parametrize("value", [{1: "x"}, {"a": {1, 2}}, {"a": b"x"}, {"a": object()}])
def test_values_that_are_not_json_are_refused(value: Any) -> None:
    with pytest.raises(ToolCallError):
        canonical_json(value)


# -- digest --------------------------------------------------------------------------------------
def test_digest_is_sha256_base64url_of_the_canonical_text() -> None:
    # SHA-256("{}") = 44136fa3...; base64url without padding
    assert digest("{}") == "RBNvo1WzZ4oRRq0W9-hknpT7T8If536DEMBg9hyq_4o"
    assert "=" not in digest("x") and len(digest("x")) == 43


#: integers a double holds exactly (beyond them canonical JSON rounds, as a JS client would: tested above)
json_scalars: st.SearchStrategy[Any] = st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=8)
json_scalars |= st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_digest_is_stable_under_key_reordering_and_reserialization(arguments: dict[str, Any]) -> None:
    call = parse_tool_call({"name": "t", "arguments": arguments}, max_bytes=1 << 20)
    reordered = parse_tool_call({"name": "t", "arguments": _reorder(arguments)}, max_bytes=1 << 20)
    assert (reordered.canonical, reordered.digest) == (call.canonical, call.digest)
    # what a client sends, with its own whitespace and key order, canonicalizes to the same bytes
    sent = json.dumps(_reorder(arguments), indent=2, ensure_ascii=True)
    again = parse_tool_call({"name": "t", "arguments": strict_json_loads(sent.encode())}, max_bytes=1 << 20)
    assert again.digest == call.digest
    # and it means the same JSON (numbers are IEEE 754 doubles in JCS, RFC 8785 §3.2.2.3)
    assert json.loads(call.canonical, parse_int=float) == json.loads(sent, parse_int=float)


def test_different_arguments_digest_differently() -> None:
    a = parse_tool_call({"name": "t", "arguments": {"path": "/shared/a"}})
    b = parse_tool_call({"name": "t", "arguments": {"path": "/shared/b"}})
    assert a.digest != b.digest


# -- parse_tool_call: shape, caps, names ------------------------------------------------------------
def test_a_call_is_parsed_and_canonicalized() -> None:
    call = parse_tool_call({"name": "read_file", "arguments": {"z": 1, "a": [1.5, "x"]}})
    assert call == ToolCall(
        name="read_file", arguments={"z": 1, "a": [1.5, "x"]}, canonical='{"a":[1.5,"x"],"z":1}', digest=call.digest
    )
    assert call.size == len(call.canonical)


@pytest.mark.parametrize("params", [{"name": "t"}, {"name": "t", "arguments": None}, {"name": "t", "arguments": {}}])
def test_absent_arguments_are_the_empty_object(params: dict[str, Any]) -> None:
    call = parse_tool_call(params)
    assert (call.arguments, call.canonical, call.digest) == ({}, "{}", digest("{}"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (None, "params must be an object"),
        ([], "params must be an object"),
        ("read_file", "params must be an object"),
        ({}, "names no tool"),
        ({"name": ""}, "names no tool"),
        ({"name": 7}, "names no tool"),
        ({"name": "t", "arguments": []}, "arguments must be an object"),
        ({"name": "t", "arguments": "x=1"}, "arguments must be an object"),
        ({"name": "t", "arguments": 3}, "arguments must be an object"),
    ],
)
def test_malformed_params_are_refused(params: object, message: str) -> None:
    with pytest.raises(ToolCallError, match=message):
        parse_tool_call(params)


@pytest.mark.parametrize(
    "name", ["read file", "read_file\n", "ünïcode", "a" * (MAX_TOOL_NAME + 1), "x;y", "x\x00", "tool:x", "a@b"]
)
def test_invalid_tool_names_are_refused(name: str) -> None:
    with pytest.raises(ToolCallError, match="invalid name"):
        parse_tool_call({"name": name})


@pytest.mark.parametrize("name", ["read_file", "A-Z.0_9", "a" * MAX_TOOL_NAME, "x"])
def test_valid_tool_names_are_accepted(name: str) -> None:
    assert parse_tool_call({"name": name}).name == name


def test_MCP_15_arguments_over_the_cap_are_refused_not_truncated() -> None:
    assert DEFAULT_MAX_ARGUMENT_BYTES == 16384
    # canonical {"a":"..."} is 8 bytes of framing plus the string
    at_cap = {"a": "x" * (DEFAULT_MAX_ARGUMENT_BYTES - 8)}
    assert parse_tool_call({"name": "t", "arguments": at_cap}).size == DEFAULT_MAX_ARGUMENT_BYTES
    over = {"a": "x" * (DEFAULT_MAX_ARGUMENT_BYTES - 7)}
    with pytest.raises(ToolCallError, match="exceed 16384 bytes"):
        parse_tool_call({"name": "t", "arguments": over})
    # the cap counts UTF-8 bytes of the canonical form, not characters
    with pytest.raises(ToolCallError, match="exceed 10 bytes"):
        parse_tool_call({"name": "t", "arguments": {"a": "éé"}}, max_bytes=10)
    assert parse_tool_call({"name": "t", "arguments": {"a": "éé"}}, max_bytes=12).size == 12


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def test_MCP_15_arguments_nested_deeper_than_the_cap_are_refused() -> None:
    # the arguments object and every object or array inside it are one level each: MAX_DEPTH in all
    parse_tool_call({"name": "t", "arguments": {"a": _nested(MAX_DEPTH - 1)}})
    with pytest.raises(ToolCallError, match=f"deeper than {MAX_DEPTH}"):
        parse_tool_call({"name": "t", "arguments": {"a": _nested(MAX_DEPTH)}})


# -- Cedar tags and the scope convention -----------------------------------------------------------
def test_argument_tags_are_strings_as_themselves_and_json_for_the_rest() -> None:
    tags = argument_tags({"path": "/shared/a", "n": 2, "flag": True, "none": None, "obj": {"b": 1, "a": [0.5]}})
    assert tags == {"path": "/shared/a", "n": "2", "flag": "true", "none": "null", "obj": '{"a":[0.5],"b":1}'}
    assert argument_tags({}) == {}


def test_missing_tool_scope_names_the_scope_the_token_lacks() -> None:
    assert DEFAULT_SCOPE_PREFIX == "tool:"
    assert missing_tool_scope({"tool:read_file", "wiki:read"}, "read_file") is None
    assert missing_tool_scope({"tool:read_file"}, "write_file") == "tool:write_file"
    assert missing_tool_scope(set(), "x", prefix="mcp.tool/") == "mcp.tool/x"
    # no prefix matching: tool:read does not grant read_file, nor tool:* anything
    assert missing_tool_scope({"tool:read", "tool:*"}, "read_file") == "tool:read_file"


# -- MCP-15: a string holding JSON that a server would decode before the tool runs ---------------
SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "data": {},
        "model": {"$ref": "#/$defs/Model"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "count": {"type": "integer"},
    },
    "$defs": {"Model": {"type": "object"}},
}


@pytest.mark.parametrize("value", ['{"k": "p\\u0061ssword"}', " [1, 2]", '\n{"a": {}}'])
@pytest.mark.parametrize("name", ["data", "model", "count", "undeclared"])
def test_mcp_15_json_text_in_a_non_string_argument_is_named(name: str, value: str) -> None:
    assert json_text_argument({"text": "ok", name: value}, SCHEMA) == name


@pytest.mark.parametrize("value", ['{"k": 1}', "[1]"])
def test_mcp_15_json_text_without_a_known_schema_is_named(value: str) -> None:
    assert json_text_argument({"text": value}, None) == "text"


@pytest.mark.parametrize(
    "arguments",
    [
        {"text": '{"k": "v"}'},  # declared a string: the server hands the text over as it is
        {"note": "[1, 2]"},  # anyOf with a string branch
        {"data": "plain words"},  # not JSON
        {"data": '"a JSON string"'},  # a JSON scalar is not decoded into structure
        {"data": "{not json"},
        {"data": 5, "count": 3},
        {"data": {"k": "v"}},  # sent as JSON: Cedar sees what the tool gets
    ],
)
def test_mcp_15_arguments_a_server_passes_through_unchanged_are_not_named(arguments: dict[str, Any]) -> None:
    assert json_text_argument(arguments, SCHEMA) is None
