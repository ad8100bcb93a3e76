"""Stateful DPoP checks shared by the STS, the resource SDK and the gateway (RFC 9449 §8, §11.1).

``rules.dpop.check_proof`` does the pure checks; this adds the two that need state, in the
order that keeps retries cheap: the server nonce first (a nonce challenge leaves the proof
unspent), then the ``jti`` replay cache, atomically, so a proof is accepted once on every
replica. A replay cache that can lose keys (Redis) also says when it began; a proof not
provably made since then is refused with a fresh nonce (``rules.replay_epoch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Collection
from typing import Protocol, runtime_checkable

from tether.clock import Clock
from tether.errors import InvalidDPoPProof, Unavailable, UseDPoPNonce, replay
from tether.lru import LruCache
from tether.model import DPoPProof
from tether.rules.dpop import check_proof, replay_key
from tether.rules.nonce import make_nonce, nonce_fresh, nonce_issued
from tether.rules.replay_epoch import made_after, nonce_wait, predates_cache

__all__ = ["EpochReplayCache", "ProofChecker", "ReplayCache", "predates_refusal_marker"]


class ReplayCache(Protocol):
    async def first_use(self, key: str, *, until: int, now: float) -> bool: ...


@runtime_checkable
class EpochReplayCache(Protocol):
    """A replay cache that can lose keys and knows when it last did (``RedisCache.spend_proof``)."""

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, float]: ...

    async def replay_since(self, *, now: float) -> float: ...


#: the audit mark of a proof refused because the replay cache cannot vouch for it: like a
#: replay it proves nothing about its sender, but it is not counted as one (honest clients
#: get it after every loss of the cache)
predates_refusal_marker = "predates_replay_cache"

#: the longest a nonce is held back for a replay cache's start (a start further ahead is
#: another replica's clock running fast: its clients are refused until the clocks agree)
_MAX_NONCE_WAIT = 2.0


class ProofChecker:
    def __init__(
        self,
        replay: ReplayCache,
        clock: Clock,
        *,
        nonce_key: bytes | None,
        algorithms: Collection[str],
        max_age: int = 60,
        skew: int = 10,
        nonce_ttl: int = 120,
    ) -> None:
        """``nonce_key=None`` turns server nonces off; otherwise every proof needs a fresh one."""
        self._replay = replay
        self._clock = clock
        self._nonce_key = nonce_key
        self.algorithms = tuple(algorithms)
        self._max_age = max_age
        self._skew = skew
        self._nonce_ttl = nonce_ttl
        # a nonce is handed out for a whole second (every response carries one: minting a
        # fresh one each time was a CSPRNG read and an HMAC per request), and the nonces
        # seen are remembered with their issue time, so a busy client's proofs, which all
        # carry one nonce, cost one HMAC check between them
        self._minted: tuple[int, str] | None = None
        self._seen: LruCache[str, int] = LruCache(4096)
        # the latest time a replay cache was seen to begin
        self._since = 0.0

    async def start(self) -> None:
        """Learn when the replay cache began, and mint no nonce before then (a fresh cache
        begins at the next whole second: at most a second more to start), so a client's
        first nonce passes. Best effort: without it a first proof may meet one more challenge."""
        if isinstance(self._replay, EpochReplayCache):
            with contextlib.suppress(Unavailable):
                self.learn_since(await self._replay.replay_since(now=self._clock.now()))
                if self._nonce_key is not None:
                    await self._reach(self._since)

    async def _reach(self, since: float) -> None:
        """Wait until a nonce minted now passes a cache begun at ``since`` (``nonce_wait``: under
        a second when replica clocks agree; never more than ``_MAX_NONCE_WAIT``)."""
        deadline = self._clock.now() + _MAX_NONCE_WAIT
        while (wait := nonce_wait(self._clock.now(), since)) > 0 and self._clock.now() < deadline:
            await asyncio.sleep(wait + 0.002)

    @property
    def nonce_required(self) -> bool:
        return self._nonce_key is not None

    def fresh_nonce(self) -> str | None:
        if self._nonce_key is None:
            return None
        second = int(self._clock.now())
        if self._minted is None or self._minted[0] != second:
            self._minted = (second, make_nonce(self._nonce_key, now=second, salt=os.urandom(12)))
        return self._minted[1]

    def _nonce_time(self, nonce: str | None) -> int | None:
        """When a replica (same key) issued ``nonce``; ``None`` if it is not ours."""
        if self._nonce_key is None or nonce is None:
            return None
        issued = self._seen.get(nonce)
        if issued is None:
            issued = nonce_issued(self._nonce_key, nonce)
            if issued is None:
                return None  # forgeries are not remembered: they cannot crowd out good nonces
            self._seen.put(nonce, issued)
        return issued

    def _nonce_ok(self, nonce: str | None, now: float) -> bool:
        """RFC 9449 §8: the proof's nonce was issued by a replica (same key) within ``nonce_ttl``."""
        issued = self._nonce_time(nonce)
        return issued is not None and nonce_fresh(issued, now=now, ttl=self._nonce_ttl)

    def made_after(self, checked: DPoPProof) -> float:
        """The server time ``checked`` was provably made at or after (``rules.replay_epoch``)."""
        return made_after(iat=checked.iat, nonce_issued=self._nonce_time(checked.nonce), skew=self._skew)

    async def predates_refusal(self, checked: DPoPProof, since: float) -> InvalidDPoPProof | UseDPoPNonce:
        """The refusal of a proof the replay cache that began at ``since`` cannot vouch for.

        With nonces on it is a nonce challenge (RFC 9449 §8) whose nonce is minted at or
        after ``since`` — in the second the cache began, the answer waits for the next one
        (``rules.replay_epoch.nonce_wait``) — so the client's retry passes; without nonces,
        ``invalid_dpop_proof`` until the client's ``iat`` is ``skew`` past ``since``.
        """
        self.learn_since(since)
        if self._nonce_key is not None:
            await self._reach(since)
        nonce = self.fresh_nonce()
        debug = f"proof made after {self.made_after(checked)}, replay cache began at {since}, jkt {checked.jkt}"
        exc: InvalidDPoPProof | UseDPoPNonce
        if nonce is not None:
            exc = UseDPoPNonce(nonce, "a fresh dpop nonce is required (the replay cache was reset)")
        else:
            exc = InvalidDPoPProof("dpop proof predates the replay cache; retry with a new proof")
        exc.debug = debug
        exc.audit[predates_refusal_marker] = True
        return exc

    def learn_since(self, since: float) -> None:
        """Remember the latest start of the replay cache seen."""
        self._since = max(self._since, since)

    async def check(self, proof: str | None, *, method: str, url: str, access_token: str | None = None) -> DPoPProof:
        """Every check, and the proof consumed in the replay cache (accepted once)."""
        checked, (key, until) = self.check_unconsumed(proof, method=method, url=url, access_token=access_token)
        await self.consume(checked, key, until)
        return checked

    async def consume(self, checked: DPoPProof, key: str, until: int) -> None:
        """Spend a checked proof's ``jti`` (RFC 9449 §11.1); a second use is refused."""
        now = self._clock.now()
        if isinstance(self._replay, EpochReplayCache):
            fresh, since = await self._replay.spend_proof(key, until=until, now=now)
            if not fresh:
                raise replayed_proof(checked.jkt)
            if predates_cache(self.made_after(checked), since):
                raise await self.predates_refusal(checked, since)
            self.learn_since(since)
        elif not await self._replay.first_use(key, until=until, now=now):
            raise replayed_proof(checked.jkt)

    def check_unconsumed(
        self, proof: str | None, *, method: str, url: str, access_token: str | None = None
    ) -> tuple[DPoPProof, tuple[str, int]]:
        """Every check but the replay one; returns the replay key and its expiry for the caller
        to consume atomically with the write the proof authorises (the STS's issuance)."""
        if proof is None:
            raise InvalidDPoPProof("a dpop proof is required")
        now = self._clock.now()
        checked = check_proof(
            proof,
            method=method,
            url=url,
            now=now,
            algorithms=self.algorithms,
            max_age=self._max_age,
            future_skew=self._skew,
            access_token=access_token,
        )
        if self._nonce_key is not None and not self._nonce_ok(checked.nonce, now):
            nonce = self.fresh_nonce()
            assert nonce is not None
            raise UseDPoPNonce(nonce)
        until = int(max(checked.iat, now)) + self._max_age + self._skew + 1
        return checked, (replay_key(checked.jkt, checked.jti), until)


def replayed_proof(jkt: str) -> InvalidDPoPProof:
    """The refusal of a proof whose ``jti`` was already spent (RFC 9449 §11.1), marked for the monitor."""
    return replay(InvalidDPoPProof("dpop proof has already been used", debug=f"replayed jti for jkt {jkt}"))
