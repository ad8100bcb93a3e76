"""Review (issue 20): ``canonical`` encodes with one encoder built at import; its bytes must be
``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True)``'s for any value the
chain hashes (or a database writer planted), refuse what it refuses, and a refusal must leave the
shared encoder as it was for the next record."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.audit.chain import canonical

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_review_canonical_is_json_dumps_with_the_chain_arguments(value: Any) -> None:
    assert canonical(value) == _dumps(value)


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("bad", "error"),
    [(_circular(), ValueError), ({1: "a", "b": 2}, TypeError), ({"a": object()}, TypeError), ({"a": b"x"}, TypeError)],
)
def test_review_a_refused_value_leaves_the_shared_encoder_unchanged(bad: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        _dumps(bad)
    with pytest.raises(error):
        canonical(bad)
    good = {"b": [1, math.inf, "\u00e9\ud800"], "a": None}
    assert canonical(good) == _dumps(good) == b'{"a":null,"b":[1,Infinity,"\\u00e9\\ud800"]}'
