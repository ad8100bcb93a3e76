"""Issued token ids (``tether.sts.context.new_jti``): unique, unguessable enough, time-ordered."""

from __future__ import annotations

import base64
import time

import pytest

from tether.sts.context import new_jti

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent


def test_jtis_are_unique_and_carry_80_random_bits() -> None:
    jtis = [new_jti() for _ in range(20_000)]
    assert len(set(jtis)) == len(jtis)
    suffixes = {jti[12:] for jti in jtis}
    assert len(suffixes) == len(jtis)  # uniqueness does not rest on the clock
    raw = base64.urlsafe_b64decode(jtis[0][12:] + "=" * (-len(jtis[0][12:]) % 4))
    assert len(raw) * 8 == 80


def test_jti_prefix_is_the_issue_time_so_inserts_stay_local() -> None:
    before = time.time_ns() // 1_000_000
    jtis = [new_jti() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    stamps = [int(jti[:12], 16) for jti in jtis]
    assert before <= stamps[0] <= stamps[-1] <= after
    assert [jti[:12] for jti in jtis] == sorted(jti[:12] for jti in jtis)
