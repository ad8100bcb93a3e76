"""When a proof may be trusted after the replay cache lost its memory (``tether.rules.replay_epoch``).

SECURITY.md DPOP-12 (a spent ``jti`` is refused for its whole acceptance window) and D-01
(replayed proof after a restart), here the restart of the *cache*. The rule is checked
exhaustively over a grid of times: every proof the cache accepted before it was lost is
refused when replayed after the loss (soundness), and an honest client that retries with
the nonce it is handed, or whose proof is new enough, is accepted (liveness).
"""

from __future__ import annotations

import itertools

import pytest

from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.errors import InvalidDPoPProof, UseDPoPNonce
from tether.proofs import ProofChecker, predates_refusal_marker
from tether.rules.nonce import nonce_fresh, nonce_issued
from tether.rules.replay_epoch import made_after, nonce_wait, predates_cache

MAX_AGE, SKEW, NONCE_TTL, NONCE_FUTURE = 60, 10, 120, 5
T0 = 1_700_000_000
URL = "https://sts.example/token"


def _passes_iat_window(iat: float, now: float) -> bool:
    """``rules.dpop.check_proof``'s ``iat`` window (RFC 9449 §4.3 item 11)."""
    return now - MAX_AGE <= iat <= now + SKEW


def test_made_after_takes_the_later_of_nonce_and_iat_less_skew() -> None:
    assert made_after(iat=100, nonce_issued=None, skew=10) == 90
    assert made_after(iat=100, nonce_issued=95, skew=10) == 95
    assert made_after(iat=100, nonce_issued=80, skew=10) == 90  # an old nonce never makes a proof older


def test_predates_cache_boundary() -> None:
    assert predates_cache(99.5, 100.0)
    assert not predates_cache(100.0, 100.0)  # made at the very start: provably after the loss
    assert not predates_cache(100.5, 100.0)


def test_nonce_wait_reaches_the_second_the_cache_began() -> None:
    assert nonce_wait(100.7, 0.0) == 0.0
    assert nonce_wait(100.2, 101.0) == pytest.approx(0.8)  # a start is the next whole second
    assert nonce_wait(102.0, 101.0) == 0.0
    assert nonce_wait(101.0, 101.0) == 0.0
    assert nonce_wait(100.2, 100.5) == pytest.approx(0.8)  # any start: the second after it


# Soundness: a proof first accepted at ``accepted`` (before the loss at ``lost``), with its
# nonce minted before it was sent, replayed at ``replay`` after a cache that began at ``since``
# (``lost <= since <= replay``). Whenever every other check would pass the replay (the iat
# window; the nonce still fresh), the epoch rule refuses it.
ACCEPT = range(0, 80, 3)
LOSS_AFTER = (1, 2, 7)
START_AFTER = (0, 1, 3)
REPLAY_AFTER = range(0, 100, 2)
IAT_OFFSET = range(-MAX_AGE, SKEW + 1, 5)  # iat relative to the accepting server's clock
NONCE_AGE = (None, 0, 1, 30, NONCE_TTL - 20)


@pytest.mark.parametrize("nonce_age", NONCE_AGE)
def test_DPOP_12_D_01_no_proof_accepted_before_the_loss_is_accepted_after_it(nonce_age: int | None) -> None:
    checked = 0
    for accept, loss_after, start_after, replay_after, iat_offset in itertools.product(
        ACCEPT, LOSS_AFTER, START_AFTER, REPLAY_AFTER, IAT_OFFSET
    ):
        accepted = T0 + accept + 0.25
        iat = int(accepted + iat_offset)
        if not _passes_iat_window(iat, accepted):
            continue  # never accepted in the first place
        issued = None if nonce_age is None else int(accepted) - nonce_age
        lost = accepted + loss_after
        since = lost + start_after
        replay = since + replay_after
        if not _passes_iat_window(iat, replay):
            continue  # the iat check already refuses the replay
        if issued is not None and not nonce_fresh(issued, now=replay, ttl=NONCE_TTL, future_skew=NONCE_FUTURE):
            continue  # the nonce check already refuses it
        assert predates_cache(made_after(iat=iat, nonce_issued=issued, skew=SKEW), since), (accepted, iat, since, replay)
        checked += 1
    assert checked > 1000  # the grid really exercised the rule


@pytest.mark.parametrize("since_fraction", (0.0, 0.3, 0.99))
def test_DPOP_11_honest_retry_with_the_handed_nonce_is_accepted(since_fraction: float) -> None:
    """After a refusal the client signs again with a nonce minted once ``nonce_wait`` has
    passed: accepted, whatever its own clock says (iat anywhere in the window)."""
    since = T0 + since_fraction
    for delay, iat_offset in itertools.product((0.0, 0.1, 0.5, 3.0, 30.0), range(-MAX_AGE, SKEW + 1)):
        refused_at = since + delay
        minted = int(refused_at + nonce_wait(refused_at, since) + 0.002)  # as ProofChecker._reach sleeps
        assert not predates_cache(made_after(iat=refused_at + iat_offset, nonce_issued=minted, skew=SKEW), since)


def test_DPOP_12_D_01_two_losses_in_one_second_still_refuse_the_first_caches_proofs() -> None:
    """A nonce handed out after a first loss never passes a cache begun by a second loss
    noticed later in that same second, or any later one: nonces carry the second they were
    really minted in (never one ahead), and a start is the next whole second after ``now``
    (``RedisCache._start_after``)."""
    first_start = float(T0 + 1)
    for mint_ms, later_ms in itertools.product(range(0, 3000, 25), range(0, 1500, 25)):
        minted = first_start + mint_ms / 1000  # the refusal waited until the first start
        second_start = float(int(minted + later_ms / 1000) + 1)
        assert predates_cache(made_after(iat=minted, nonce_issued=int(minted), skew=SKEW), second_start)


def test_DPOP_11_without_nonces_new_proofs_pass_once_skew_has_passed() -> None:
    since = T0 + 0.5
    for delay in range(0, 200):
        now = since + delay
        honest_iat = int(now)  # a client with an accurate clock
        assert predates_cache(made_after(iat=honest_iat, nonce_issued=None, skew=SKEW), since) is (honest_iat < since + SKEW)


def test_DPOP_11_nothing_special_once_max_age_and_skew_have_passed() -> None:
    """Once ``max_age + skew`` has passed since the cache began, every proof the iat window
    lets through is accepted, with or without a nonce, however old its nonce."""
    since = T0 + 0.5
    for delay in range(MAX_AGE + SKEW, MAX_AGE + SKEW + 30):
        now = since + delay
        for iat in range(int(now) - MAX_AGE - 2, int(now) + SKEW + 2):
            if not _passes_iat_window(iat, now):
                continue
            for issued in (None, int(since) - 100, int(now) - 1):
                assert not predates_cache(made_after(iat=iat, nonce_issued=issued, skew=SKEW), since)


# -- ProofChecker applies it for caches that know when they began -----------------------


class _EpochCache:
    """A replay cache that reports ``since``: a stand-in for Redis in the pure checker's tests
    (the Redis script itself is tested against a real server in tests/store/test_redis_epoch.py)."""

    def __init__(self, since: float) -> None:
        self.since = since
        self.spent: set[str] = set()

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        raise AssertionError("spend_proof must be used when the cache has it")

    async def replay_since(self, *, now: float) -> float:
        return self.since

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, float]:
        fresh = key not in self.spent
        self.spent.add(key)
        return fresh, self.since


def _consume(checker: ProofChecker, proof: str) -> None:
    import asyncio

    async def run() -> None:
        await checker.check(proof, method="POST", url=URL)

    asyncio.run(run())


def test_DPOP_12_checker_refuses_an_old_nonce_with_a_fresh_nonce_then_accepts_the_retry() -> None:
    clock, key = ManualClock(), DPoPKey()
    cache = _EpochCache(since=0.0)
    checker = ProofChecker(cache, clock, nonce_key=bytes(32), algorithms=("ES256",), max_age=MAX_AGE, skew=SKEW)
    old_nonce = checker.fresh_nonce()
    _consume(checker, key.proof("POST", URL, nonce=old_nonce, now=clock.now()))  # positive control
    clock.advance(5.3)
    cache.since = clock.now()  # the cache was lost and began again just now
    with pytest.raises(UseDPoPNonce) as refused:
        _consume(checker, key.proof("POST", URL, nonce=old_nonce, now=clock.now()))
    assert refused.value.audit.get(predates_refusal_marker) is True
    assert not refused.value.audit.get("replay")  # honest clients get it: not counted as a replay
    handed = refused.value.nonce
    assert (nonce_issued(bytes(32), handed) or 0) >= cache.since  # minted once the start was reached
    _consume(checker, key.proof("POST", URL, nonce=handed, now=clock.now()))  # the retry passes


def test_DPOP_12_checker_without_nonces_refuses_until_iat_is_skew_past_the_start() -> None:
    clock, key = ManualClock(), DPoPKey()
    cache = _EpochCache(since=clock.now() + 0.5)
    checker = ProofChecker(cache, clock, nonce_key=None, algorithms=("ES256",), max_age=MAX_AGE, skew=SKEW)
    clock.advance(1)
    with pytest.raises(InvalidDPoPProof) as refused:
        _consume(checker, key.proof("POST", URL, now=clock.now()))
    assert refused.value.audit.get(predates_refusal_marker) is True
    clock.advance(SKEW + 1)  # iat is whole seconds: one more so it is surely skew past the start
    _consume(checker, key.proof("POST", URL, now=clock.now()))


def test_DPOP_12_checker_still_refuses_a_replay_within_one_cache() -> None:
    clock, key = ManualClock(), DPoPKey()
    checker = ProofChecker(_EpochCache(since=0.0), clock, nonce_key=None, algorithms=("ES256",))
    proof = key.proof("POST", URL, now=clock.now())
    _consume(checker, proof)
    with pytest.raises(InvalidDPoPProof) as refused:
        _consume(checker, proof)
    assert refused.value.audit.get("replay") is True
