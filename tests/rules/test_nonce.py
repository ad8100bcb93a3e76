"""RFC 9449 §8 stateless server nonces (``tether.rules.nonce``): SECURITY.md DPOP-10, DPOP-11."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.errors import UseDPoPNonce
from tether.proofs import ProofChecker
from tether.rules.nonce import make_nonce, nonce_fresh, nonce_issued

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SALT = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"
NOW = 1_700_000_000
TTL = 120


def _raw(nonce: str) -> bytes:
    return base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def check_nonce(key: bytes, nonce: str | None, *, now: float, ttl: int, future_skew: int = 5) -> bool:
    """The server's test of a proof's nonce (``ProofChecker``): made with ``key``, and fresh at ``now``."""
    issued = nonce_issued(key, nonce)
    return issued is not None and nonce_fresh(issued, now=now, ttl=ttl, future_skew=future_skew)


@pytest.fixture
def nonce() -> str:
    return make_nonce(KEY, now=NOW, salt=SALT)


def test_DPOP_10_fresh_nonce_accepted(nonce: str) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    assert nonce.isascii() and "=" not in nonce


def test_DPOP_10_nonce_unpredictable_without_salt_reuse() -> None:
    a = make_nonce(KEY, now=NOW, salt=SALT)
    b = make_nonce(KEY, now=NOW, salt=SALT[::-1])
    assert a != b
    assert make_nonce(KEY, now=NOW, salt=SALT) == a  # deterministic given its inputs (pure rule)


def test_DPOP_10_forged_mac_refused(nonce: str) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    raw = _raw(nonce)
    for i in range(len(raw) - 16, len(raw)):
        forged = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        assert check_nonce(KEY, _b64(forged), now=NOW, ttl=TTL) is False


def test_DPOP_10_timestamp_changed_under_old_mac_refused(nonce: str) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    raw = _raw(nonce)
    later = (NOW + 1000).to_bytes(8, "big") + raw[8:]
    assert check_nonce(KEY, _b64(later), now=NOW + 1000, ttl=TTL) is False


def test_DPOP_10_nonce_from_another_key_refused(nonce: str) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    assert check_nonce(OTHER_KEY, nonce, now=NOW, ttl=TTL) is False
    assert check_nonce(KEY, make_nonce(OTHER_KEY, now=NOW, salt=SALT), now=NOW, ttl=TTL) is False


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (TTL, True), (TTL + 1, False), (3600, False)])
def test_DPOP_11_nonce_expiry(nonce: str, offset: int, ok: bool) -> None:
    assert check_nonce(KEY, nonce, now=NOW + offset, ttl=TTL) is ok


@pytest.mark.parametrize(("issued_ahead", "ok"), [(5, True), (6, False), (3600, False)])
def test_DPOP_11_nonce_from_the_future_refused(issued_ahead: int, ok: bool) -> None:
    future = make_nonce(KEY, now=NOW + issued_ahead, salt=SALT)
    assert check_nonce(KEY, future, now=NOW, ttl=TTL, future_skew=5) is ok


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("!!!!", id="bangs"),
        pytest.param("a", id="one-char"),
        pytest.param("AAAA", id="short"),
        pytest.param("=" * 8, id="padding"),
        pytest.param("\u00e9" * 10, id="non-ascii"),
        pytest.param("A" * 129, id="too-long"),
        pytest.param(_b64(b"\x00" * 31), id="31-bytes"),
        pytest.param(_b64(bytes(32)), id="zeros-32"),
        pytest.param(_b64(bytes(48)), id="zeros-48"),
        pytest.param("not-a-nonce", id="words"),
        pytest.param("eyJhbGciOiJub25lIn0", id="jwt-header"),
    ],
)
def test_DPOP_10_garbage_refused(nonce: str, garbage: str | None) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    assert check_nonce(KEY, garbage, now=NOW, ttl=TTL) is False


def test_DPOP_10_truncated_nonce_refused(nonce: str) -> None:
    assert check_nonce(KEY, nonce, now=NOW, ttl=TTL) is True
    for cut in range(1, len(nonce)):
        assert check_nonce(KEY, nonce[:-cut], now=NOW, ttl=TTL) is False


@settings(max_examples=50, deadline=None)
@given(
    issued=st.integers(min_value=0, max_value=2**40),
    age=st.integers(min_value=-100, max_value=1000),
    salt=st.binary(min_size=8, max_size=16),
)
def test_DPOP_11_nonce_window_property(issued: int, age: int, salt: bytes) -> None:
    value = make_nonce(KEY, now=issued, salt=salt)
    assert check_nonce(KEY, value, now=issued + age, ttl=TTL, future_skew=5) is (-5 <= age <= TTL)
    assert check_nonce(OTHER_KEY, value, now=issued, ttl=TTL) is False


# -- the STS's use of them (``tether.proofs.ProofChecker``): memoised, never more lenient ------


class _NoReplay:
    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        return True


def _checker(clock: ManualClock) -> ProofChecker:
    return ProofChecker(_NoReplay(), clock, nonce_key=KEY, algorithms=("ES256",), nonce_ttl=TTL)


def _proof(key: DPoPKey, clock: ManualClock, nonce: str | None) -> str:
    return key.proof("POST", "https://sts.example/token", nonce=nonce, now=clock.now())


def test_DPOP_10_one_nonce_per_second_then_a_new_one() -> None:
    clock = ManualClock()
    checker = _checker(clock)
    first = checker.fresh_nonce()
    assert first is not None and check_nonce(KEY, first, now=clock.now(), ttl=TTL)
    clock.advance(1)
    second = checker.fresh_nonce()
    assert second != first and check_nonce(KEY, second, now=clock.now(), ttl=TTL)


def test_DPOP_11_remembered_nonce_still_expires_after_ttl() -> None:
    clock, key = ManualClock(), DPoPKey()
    checker = _checker(clock)
    nonce = checker.fresh_nonce()
    checker.check_unconsumed(_proof(key, clock, nonce), method="POST", url="https://sts.example/token")
    clock.advance(TTL + 1)
    with pytest.raises(UseDPoPNonce):  # the memo holds the issue time, not a verdict
        checker.check_unconsumed(_proof(key, clock, nonce), method="POST", url="https://sts.example/token")


def test_DPOP_10_forged_nonce_refused_before_and_after_a_good_one() -> None:
    clock, key = ManualClock(), DPoPKey()
    checker = _checker(clock)
    good = checker.fresh_nonce()
    assert good is not None
    forged = _b64(_raw(good)[:-1] + bytes([_raw(good)[-1] ^ 1]))
    for nonce in (forged, good, forged, make_nonce(OTHER_KEY, now=clock.now(), salt=SALT)):
        if nonce == good:
            checker.check_unconsumed(_proof(key, clock, nonce), method="POST", url="https://sts.example/token")
            continue
        with pytest.raises(UseDPoPNonce):
            checker.check_unconsumed(_proof(key, clock, nonce), method="POST", url="https://sts.example/token")
