"""``tether.mcp.lines``: the bounded, linear line splitter of the stdio transport, and the message limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.mcp.lines import ENVELOPE_BYTES, ESCAPE_FACTOR, MIN_MESSAGE_BYTES, LineReader, LineTooLong, message_limit


def test_a_line_exactly_at_the_limit_passes_one_over_is_refused() -> None:
    assert LineReader(8).feed(b"12345678\n") == [b"12345678"]  # positive control: the limit itself
    with pytest.raises(LineTooLong) as refused:
        LineReader(8).feed(b"123456789\n")
    assert refused.value.limit == 8 and refused.value.size == 9


def test_an_unterminated_line_is_refused_as_soon_as_it_passes_the_limit() -> None:
    reader = LineReader(8)
    assert reader.feed(b"12345678") == []  # at the limit, no newline yet: still waiting
    with pytest.raises(LineTooLong):
        reader.feed(b"9")  # one more byte, newline or not, and it is refused without waiting for the end


def test_a_refused_reader_stays_refused() -> None:
    reader = LineReader(4)
    with pytest.raises(LineTooLong):
        reader.feed(b"toolong\nok\n")
    with pytest.raises(LineTooLong):  # the framing is lost: later lines are not trusted either
        reader.feed(b"ok\n")
    assert reader.end() is None


def test_many_small_lines_in_one_chunk_and_a_long_one_after_them() -> None:
    reader = LineReader(4)
    assert reader.feed(b"a\nbb\n\nccc\ndddd\n" * 3) == [b"a", b"bb", b"", b"ccc", b"dddd"] * 3
    with pytest.raises(LineTooLong):  # the limit is per line: short lines before do not excuse a long one
        reader.feed(b"e\neeeee\n")


def test_lines_split_across_chunks() -> None:
    reader = LineReader(10)
    assert reader.feed(b'{"a"') == []
    assert reader.feed(b":1}\n{") == [b'{"a":1}']
    assert reader.feed(b'"b":2') == []
    assert reader.feed(b"}") == []
    assert reader.feed(b"\n") == [b'{"b":2}']
    assert reader.end() is None  # ended cleanly


def test_the_limit_counts_the_whole_line_across_chunks() -> None:
    reader = LineReader(6)
    assert reader.feed(b"abc") == [] and reader.feed(b"def") == []
    with pytest.raises(LineTooLong) as refused:
        reader.feed(b"g\n")
    assert refused.value.size == 7


def test_no_trailing_newline_at_end_of_stream() -> None:
    reader = LineReader(10)
    assert reader.feed(b"one\ntwo") == [b"one"]
    assert reader.end() == b"two"  # the last message without its newline is still handed over
    assert reader.end() is None


def test_the_reader_rejects_a_nonsense_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineReader(0)


@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data())
def test_any_chunking_gives_the_lines_split_would(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = LineReader(12)
    seen: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        seen += reader.feed(stream[start:end])
    assert seen == lines and reader.end() is None


def test_message_limit_never_refuses_what_the_cap_accepts() -> None:
    """Up to six wire bytes per counted byte (``\\u0041`` for ``A``, RFC 8259 §7) plus the envelope; never
    below the floor that keeps listings working on a route with a tiny result cap."""
    assert message_limit(4096) == MIN_MESSAGE_BYTES
    cap = 1_048_576
    assert message_limit(cap) == ESCAPE_FACTOR * cap + ENVELOPE_BYTES
    assert message_limit(cap) >= len(b"\\u0041") * cap + ENVELOPE_BYTES
