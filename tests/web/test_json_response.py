"""``CompactJSONResponse`` renders the bytes Starlette's ``JSONResponse`` renders, and refuses what it refuses."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from tether.web.json_response import CompactJSONResponse

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_same_bytes_as_starlette(value: object) -> None:
    assert CompactJSONResponse(value).body == JSONResponse(value).body


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"a": [-math.inf]}])
def test_refuses_non_finite_numbers_like_starlette(bad: object) -> None:
    with pytest.raises(ValueError):
        JSONResponse(bad)
    with pytest.raises(ValueError):
        CompactJSONResponse(bad)
