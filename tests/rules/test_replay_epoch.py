"""When a proof may be trusted after the replay cache lost its memory (``tether.rules.replay_epoch``).

SECURITY.md DPOP-12 (a spent ``jti`` is refused for its whole acceptance window) and D-01
(replayed proof after a restart), here the restart of the *cache*. With nonces on, the rule
compares no clocks: a proof passes only if its nonce carries the current epoch's tag, checked
exhaustively over nonce times and client clocks, and across replicas whose clocks disagree
(the skew review finding). Without nonces, every proof the cache accepted before it was lost
is refused when replayed after (soundness) and an honest client whose proof is new enough is
accepted (liveness). A start far ahead of a replica's clock is clamped, never waited for.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.errors import InvalidDPoPProof, UseDPoPNonce
from tether.metrics import REPLAY_EPOCH_REFUSALS, count_epoch_refusal
from tether.proofs import ProofChecker, predates_refusal_marker
from tether.rules.nonce import NO_EPOCH, epoch_tag, make_nonce, nonce_read
from tether.rules.replay_epoch import MAX_AHEAD, ReplayEpoch, effective_since, vouched

MAX_AGE, SKEW, NONCE_TTL = 60, 10, 120
T0 = 1_700_000_000
URL = "https://sts.example/token"
KEY = bytes(32)
T = TypeVar("T")


def _passes_iat_window(iat: float, now: float) -> bool:
    """``rules.dpop.check_proof``'s ``iat`` window (RFC 9449 §4.3 item 11)."""
    return now - MAX_AGE <= iat <= now + SKEW


def test_DPOP_12_a_nonce_carries_its_epoch_under_the_mac() -> None:
    old, new = ReplayEpoch("a" * 16, T0), ReplayEpoch("b" * 16, T0 + 5)
    nonce = make_nonce(KEY, now=T0, salt=bytes(12), epoch=old.tag)
    assert nonce_read(KEY, nonce) == (T0, old.tag)
    assert old.tag != new.tag and len(old.tag) == len(NO_EPOCH)
    # the tag cannot be swapped for the new epoch's without the key: the MAC no longer matches
    forged = make_nonce(bytes(31) + b"x", now=T0, salt=bytes(12), epoch=new.tag)
    assert nonce_read(KEY, forged) is None


def test_DPOP_12_D_01_with_nonces_only_the_current_epoch_passes_whatever_the_clocks() -> None:
    """Every nonce time (a replica's clock up to an hour off either way), every iat, every start:
    a nonce of an earlier epoch (or none) is refused; one of the current epoch passes."""
    current = ReplayEpoch(secrets.token_hex(8), T0 + 1)
    others = (NO_EPOCH, epoch_tag(secrets.token_hex(8)), epoch_tag(current.id + "0"))
    checked = 0
    for issued_off, iat_off, since_off in itertools.product(range(-3600, 3601, 300), range(-70, 71, 7), (-100, 0, 1, 9999)):
        epoch = ReplayEpoch(current.id, T0 + since_off)
        iat = T0 + iat_off
        for tag in others:
            assert not vouched(iat=iat, nonce_epoch=tag, skew=SKEW, epoch=epoch, since=epoch.since), (issued_off, tag)
        assert vouched(iat=iat, nonce_epoch=epoch.tag, skew=SKEW, epoch=epoch, since=epoch.since)
        checked += 1
    assert checked > 1000


# Without nonces. Soundness: a proof first accepted at ``accepted`` (before the loss at ``lost``),
# replayed at ``replay`` after a cache whose start ``since`` (Redis TIME when the loss was
# noticed, plus one) is after the loss. Whenever the iat window would pass the replay, the
# rule refuses it.
ACCEPT = range(0, 80, 3)
LOSS_AFTER = (0.01, 1, 7)
START_AFTER = (0, 1, 3)
REPLAY_AFTER = range(0, 100, 2)
IAT_OFFSET = range(-MAX_AGE, SKEW + 1, 5)  # iat relative to the accepting server's clock


def test_DPOP_12_D_01_without_nonces_no_proof_accepted_before_the_loss_is_accepted_after_it() -> None:
    checked = 0
    for accept, loss_after, start_after, replay_after, iat_offset in itertools.product(
        ACCEPT, LOSS_AFTER, START_AFTER, REPLAY_AFTER, IAT_OFFSET
    ):
        accepted = T0 + accept + 0.25
        iat = int(accepted + iat_offset)
        if not _passes_iat_window(iat, accepted):
            continue  # never accepted in the first place
        since = accepted + loss_after + start_after
        replay = since + replay_after
        if not _passes_iat_window(iat, replay):
            continue  # the iat check already refuses the replay
        epoch = ReplayEpoch("e", since)
        first_seen = since + replay_after / 2  # whenever this replica first saw it
        since_here = effective_since(since, first_seen=first_seen)
        assert not vouched(iat=iat, nonce_epoch=None, skew=SKEW, epoch=epoch, since=since_here), (accepted, iat, since)
        checked += 1
    assert checked > 1000  # the grid really exercised the rule


def test_DPOP_11_without_nonces_new_proofs_pass_once_the_allowance_has_passed() -> None:
    since = T0 + 1.0
    epoch = ReplayEpoch("e", since)
    for delay in range(0, 200):
        honest_iat = int(since + delay)  # a client with an accurate clock
        ok = vouched(iat=honest_iat, nonce_epoch=None, skew=SKEW, epoch=epoch, since=since)
        assert ok is (honest_iat >= since + SKEW)
    # the allowance is never below the nonce future tolerance, even with a small skew setting
    assert not vouched(iat=since + 4, nonce_epoch=None, skew=1, epoch=epoch, since=since)
    assert vouched(iat=since + 5, nonce_epoch=None, skew=1, epoch=epoch, since=since)


def test_DPOP_12_a_start_far_ahead_is_clamped_and_stays_sound() -> None:
    """A marker whose start is an hour ahead (a fast Redis clock, or written by someone):
    believed at most ``MAX_AHEAD`` past when this replica first saw it; a proof accepted before
    the loss (so before ``first_seen``) is still refused, and an honest one passes soon."""
    first_seen = T0 + 0.5
    assert effective_since(T0 + 3600, first_seen=first_seen) == first_seen + MAX_AHEAD
    assert effective_since(T0 + 2, first_seen=first_seen) == T0 + 2  # near starts are kept
    epoch = ReplayEpoch("e", T0 + 3600)
    since = effective_since(epoch.since, first_seen=first_seen)
    for accepted in range(-MAX_AGE, 1):
        for iat in range(T0 + accepted - MAX_AGE, T0 + accepted + SKEW + 1):
            assert not vouched(iat=iat, nonce_epoch=None, skew=SKEW, epoch=epoch, since=since)
    honest = int(first_seen + MAX_AHEAD + SKEW + 1)
    assert vouched(iat=honest, nonce_epoch=None, skew=SKEW, epoch=epoch, since=since)


# -- ProofChecker applies it ----------------------------------------------------------


class _EpochCache:
    """A replay cache that names its epoch: a stand-in for Redis in the pure checker's tests,
    its start stamped from one clock like Redis's ``TIME`` (the Redis script itself is tested
    against a real server in tests/store/test_redis_epoch.py)."""

    def __init__(self, since: float) -> None:
        self.epoch = ReplayEpoch(secrets.token_hex(8), since)
        self.spent: set[str] = set()
        self.reads = 0

    def lose(self, since: float) -> None:
        """Redis restarted or flushed: the marks and the marker are gone; a new epoch begins."""
        self.spent.clear()
        self.epoch = ReplayEpoch(secrets.token_hex(8), since)

    async def first_use(self, key: str, *, until: int, now: float) -> bool:
        raise AssertionError("spend_proof must be used when the cache has it")

    async def replay_epoch(self) -> ReplayEpoch:
        self.reads += 1
        return self.epoch

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, ReplayEpoch]:
        fresh = key not in self.spent
        self.spent.add(key)
        return fresh, self.epoch


def _run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:  # a generous deadline only so a regression cannot hang the suite
        return await asyncio.wait_for(coro, timeout=30)

    return asyncio.run(bounded())


def _consume(checker: ProofChecker, proof: str) -> None:
    _run(checker.check(proof, method="POST", url=URL))


def _checker(cache: _EpochCache, clock: ManualClock, *, nonces: bool = True) -> ProofChecker:
    checker = ProofChecker(cache, clock, nonce_key=KEY if nonces else None, algorithms=("ES256",), max_age=MAX_AGE, skew=SKEW)
    checker.on_epoch_refusal = count_epoch_refusal  # as the STS and the gateway count them
    return checker


def test_DPOP_12_checker_refuses_an_old_nonce_with_a_nonce_of_the_new_epoch_then_accepts_the_retry() -> None:
    clock, key = ManualClock(), DPoPKey()
    cache = _EpochCache(since=clock.now() - 100)
    checker = _checker(cache, clock)
    _run(checker.start())
    old_nonce = checker.fresh_nonce()
    _consume(checker, key.proof("POST", URL, nonce=old_nonce, now=clock.now()))  # positive control
    before = REPLAY_EPOCH_REFUSALS.labels(error="use_dpop_nonce")._value.get()
    cache.lose(since=clock.now() + 1)  # the cache was lost just now
    with pytest.raises(UseDPoPNonce) as refused:
        _consume(checker, key.proof("POST", URL, nonce=old_nonce, now=clock.now()))
    assert refused.value.audit.get(predates_refusal_marker) is True
    assert not refused.value.audit.get("replay")  # honest clients get it: not counted as a replay
    assert REPLAY_EPOCH_REFUSALS.labels(error="use_dpop_nonce")._value.get() == before + 1  # counted (no audit record)
    handed = refused.value.nonce
    assert nonce_read(KEY, handed) is not None and nonce_read(KEY, handed)[1] == cache.epoch.tag  # type: ignore[index]
    _consume(checker, key.proof("POST", URL, nonce=handed, now=clock.now()))  # the retry passes at once


def test_DPOP_12_D_01_replica_clock_skew_cannot_carry_a_proof_across_a_loss() -> None:
    """The review's repro: replica A's clock runs 3 s fast (its nonces carry a time past the
    start a correct replica B stamps after the loss; nonce freshness allows 5 s ahead). A proof
    B accepted with A's nonce before the loss is refused after it; before epoch-bound nonces
    it was accepted twice."""
    fast, ok = ManualClock(3.0), ManualClock(0.0)
    cache = _EpochCache(since=ok.now() - 100)
    a, b = _checker(cache, fast), _checker(cache, ok)
    _run(a.start())
    _run(b.start())
    key = DPoPKey()
    proof = key.proof("POST", URL, nonce=a.fresh_nonce(), now=ok.now())
    _consume(b, proof)  # accepted once
    cache.lose(since=ok.now() + 0.5)  # Redis TIME (correct) stamps the start
    with pytest.raises(UseDPoPNonce):  # an honest client's next proof, still with A's nonce
        _consume(b, key.proof("POST", URL, nonce=a.fresh_nonce(), now=ok.now()))
    for checker in (a, b):
        with pytest.raises((UseDPoPNonce, InvalidDPoPProof)):
            _consume(checker, proof)  # the captured proof: refused at either replica
    # control: a proof with a nonce either replica mints now (both learnt the epoch) passes
    _consume(b, key.proof("POST", URL, nonce=a.fresh_nonce(), now=ok.now()))
    _consume(a, key.proof("POST", URL, nonce=b.fresh_nonce(), now=fast.now()))


def test_DPOP_12_a_start_an_hour_ahead_is_not_waited_for() -> None:
    """The review's finding 1: a marker whose start is an hour ahead (a fast clock, or anyone who
    can write the marker) made every refusal, and every start, sleep until then. Now nothing
    waits: the refusal comes at once (a 30 s deadline guards against a hang) with a nonce of the
    current epoch, and the retry passes."""
    clock, key = ManualClock(), DPoPKey()
    cache = _EpochCache(since=clock.now() + 3600)
    checker = _checker(cache, clock)
    _run(checker.start())  # does not wait
    stale = make_nonce(KEY, now=clock.now(), salt=bytes(12))  # minted before the epoch was known
    with pytest.raises(UseDPoPNonce) as refused:
        _consume(checker, key.proof("POST", URL, nonce=stale, now=clock.now()))
    _consume(checker, key.proof("POST", URL, nonce=refused.value.nonce, now=clock.now()))
    # without nonces the start is clamped to MAX_AHEAD past when it was first seen
    plain = _checker(cache, clock, nonces=False)
    _run(plain.start())
    with pytest.raises(UseDPoPNonce):
        _consume(plain, key.proof("POST", URL, now=clock.now()))
    clock.advance(MAX_AHEAD + SKEW + 1)
    _consume(plain, key.proof("POST", URL, now=clock.now()))


def test_DPOP_12_checker_without_nonces_challenges_with_a_nonce_of_the_epoch_or_waits_out_the_allowance() -> None:
    """Server nonces off: a proof made before the epoch could be a replay, so it is refused with a
    challenge nonce of the current epoch (RFC 9449 §9); the retry carrying it passes at once. A
    client that ignores the challenge passes once its ``iat`` is past the start plus the allowance."""
    clock, key = ManualClock(), DPoPKey()
    cache = _EpochCache(since=clock.now() + 0.5)
    checker = _checker(cache, clock, nonces=False)
    clock.advance(1)
    with pytest.raises(UseDPoPNonce) as refused:
        _consume(checker, key.proof("POST", URL, now=clock.now()))
    assert refused.value.audit.get(predates_refusal_marker) is True
    assert checker.fresh_nonce() is None  # nonces stay off for every other answer
    _consume(checker, key.proof("POST", URL, nonce=refused.value.nonce, now=clock.now()))  # the retry
    old_epoch_nonce = refused.value.nonce
    cache.lose(since=clock.now() + 0.5)
    clock.advance(1)
    with pytest.raises(UseDPoPNonce):  # a challenge nonce of the previous epoch vouches for nothing
        _consume(checker, key.proof("POST", URL, nonce=old_epoch_nonce, now=clock.now()))
    clock.advance(SKEW + 1)  # iat is whole seconds: one more so it is surely skew past the start
    _consume(checker, key.proof("POST", URL, now=clock.now()))


def test_DPOP_12_checker_still_refuses_a_replay_within_one_cache() -> None:
    clock, key = ManualClock(), DPoPKey()
    checker = _checker(_EpochCache(since=0.0), clock, nonces=False)
    proof = key.proof("POST", URL, now=clock.now())
    _consume(checker, proof)
    with pytest.raises(InvalidDPoPProof) as refused:
        _consume(checker, proof)
    assert refused.value.audit.get("replay") is True
