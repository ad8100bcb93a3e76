"""Stateful DPoP checks shared by the STS, the resource SDK and the gateway (RFC 9449 §8, §11.1).

``rules.dpop.check_proof`` does the pure checks; this adds the two that need state, in the
order that keeps retries cheap: the server nonce first (a nonce challenge leaves the proof
unspent), then the ``jti`` replay cache, atomically, so a proof is accepted once on every
replica. A replay cache that can lose keys (Redis) also names its current epoch; a proof not
provably made in it is refused with a nonce of that epoch (``rules.replay_epoch``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

from tether.clock import Clock
from tether.errors import InvalidDPoPProof, Unavailable, UseDPoPNonce, replay
from tether.lru import LruCache
from tether.model import DPoPProof
from tether.rules.dpop import check_proof, replay_key
from tether.rules.nonce import NO_EPOCH, make_nonce, nonce_fresh, nonce_read
from tether.rules.replay_epoch import MAX_AHEAD, ReplayEpoch, effective_since, vouched

__all__ = ["EpochReplayCache", "ProofChecker", "ReplayCache", "predates_refusal_marker"]

log = logging.getLogger("tether.proofs")


class ReplayCache(Protocol):
    async def first_use(self, key: str, *, until: int, now: float) -> bool: ...


@runtime_checkable
class EpochReplayCache(Protocol):
    """A replay cache that can lose keys and names its epoch (``RedisCache.spend_proof``)."""

    async def spend_proof(self, key: str, *, until: int, now: float) -> tuple[bool, ReplayEpoch]: ...

    async def replay_epoch(self) -> ReplayEpoch: ...


#: the audit mark of a proof refused because the replay cache cannot vouch for it: like a
#: replay it proves nothing about its sender, but it is not counted as one (honest clients
#: get it after every loss of the cache)
predates_refusal_marker = "predates_replay_cache"


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
        challenge_key: bytes | None = None,
    ) -> None:
        """``nonce_key=None`` turns server nonces off; otherwise every proof needs a fresh one.

        With nonces off, a proof the replay cache cannot vouch for after a loss is still
        answered with a nonce challenge, minted with ``challenge_key`` (replicas that share it
        accept each other's; a random key per process by default), so an honest client's retry
        passes at once instead of waiting out the ``iat`` allowance.
        """
        self._replay = replay
        #: the same cache when it can report its epochs (decided once: a runtime Protocol check
        #: costs microseconds on every spend)
        self._epochs = replay if isinstance(replay, EpochReplayCache) else None
        self._clock = clock
        self._nonce_key = nonce_key
        self._challenge_key = nonce_key or challenge_key or os.urandom(32)
        self.algorithms = tuple(algorithms)
        self._max_age = max_age
        self._skew = skew
        self._nonce_ttl = nonce_ttl
        # a nonce is handed out for a whole second (every response carries one: minting a
        # fresh one each time was a CSPRNG read and an HMAC per request), and the nonces
        # seen are remembered with their issue time and epoch tag, so a busy client's
        # proofs, which all carry one nonce, cost one HMAC check between them
        self._minted: tuple[int, bytes, str] | None = None
        self._seen: LruCache[str, tuple[int, bytes]] = LruCache(4096)
        # the replay cache's epoch last learnt, and when this replica first saw it (own clock)
        self._epoch: ReplayEpoch | None = None
        self._first_seen = 0.0
        #: called with the error code of each refusal for a lost replay cache: the servers count
        #: it in ``tether_dpop_replay_epoch_refusals_total`` (the SDK install has no Prometheus)
        self.on_epoch_refusal: Callable[[str], None] | None = None

    async def start(self) -> None:
        """Learn the replay cache's epoch, so the nonces minted from now on pass at the first
        try. Best effort: without it a client's first proof meets one more challenge."""
        if self._epochs is not None:
            with contextlib.suppress(Unavailable):
                self.learn(await self._epochs.replay_epoch())

    @property
    def nonce_required(self) -> bool:
        return self._nonce_key is not None

    def fresh_nonce(self) -> str | None:
        """A nonce (RFC 9449 §8) minted now, under the replay epoch this replica last learnt."""
        return None if self._nonce_key is None else self._mint()

    def _mint(self) -> str:
        second = int(self._clock.now())
        tag = NO_EPOCH if self._epoch is None else self._epoch.tag
        if self._minted is None or self._minted[0] != second or self._minted[1] != tag:
            self._minted = (second, tag, make_nonce(self._challenge_key, now=second, salt=os.urandom(12), epoch=tag))
        return self._minted[2]

    def _nonce_facts(self, nonce: str | None) -> tuple[int, bytes] | None:
        """When a replica (same key) issued ``nonce``, and under which epoch; ``None`` if it is not ours."""
        if nonce is None:
            return None
        facts = self._seen.get(nonce)
        if facts is None:
            facts = nonce_read(self._challenge_key, nonce)
            if facts is None:
                return None  # forgeries are not remembered: they cannot crowd out good nonces
            self._seen.put(nonce, facts)
        return facts

    def _nonce_ok(self, nonce: str | None, now: float) -> bool:
        """RFC 9449 §8: the proof's nonce was issued by a replica (same key) within ``nonce_ttl``."""
        facts = self._nonce_facts(nonce)
        return facts is not None and nonce_fresh(facts[0], now=now, ttl=self._nonce_ttl)

    def learn(self, epoch: ReplayEpoch) -> None:
        """Remember the replay cache's current epoch (the nonces minted next carry its tag)."""
        if self._epoch is not None and self._epoch.id == epoch.id:
            return
        now = self._clock.now()
        self._epoch, self._first_seen = epoch, now
        if epoch.since > now + MAX_AHEAD:
            log.warning(
                "replay cache epoch began %.0f s ahead of this replica's clock: believed as %.0f s ahead "
                "(check the clocks of redis and the replicas)",
                epoch.since - now,
                MAX_AHEAD,
            )

    def vouches_issued(self, iat: float, epoch: ReplayEpoch) -> bool:
        """Whether every use of something issued at ``iat`` falls in ``epoch`` (so the cache still holds
        its marks): ``rules.replay_epoch.vouched`` without a nonce. For a token spent on its one call
        (``resource.approvals``): one issued before a loss of the cache may have been used before it."""
        self.learn(epoch)
        since = effective_since(epoch.since, first_seen=self._first_seen)
        return vouched(iat=iat, nonce_epoch=None, skew=self._skew, epoch=epoch, since=since)

    def admits(self, checked: DPoPProof, epoch: ReplayEpoch) -> bool:
        """Whether the replay cache in ``epoch`` vouches ``checked`` is unspent (``rules.replay_epoch``)."""
        self.learn(epoch)
        facts = self._nonce_facts(checked.nonce)
        if self._nonce_key is not None:
            nonce_epoch: bytes | None = NO_EPOCH if facts is None else facts[1]
        else:  # nonces off: a nonce of this epoch (from a challenge) vouches; else the iat allowance
            nonce_epoch = facts[1] if facts is not None and facts[1] == epoch.tag else None
        since = effective_since(epoch.since, first_seen=self._first_seen)
        return vouched(iat=checked.iat, nonce_epoch=nonce_epoch, skew=self._skew, epoch=epoch, since=since)

    def predates_refusal(self, checked: DPoPProof) -> UseDPoPNonce:
        """The refusal of a proof the replay cache's current epoch cannot vouch for.

        A nonce challenge (RFC 9449 §8, §9) with a nonce of the current epoch (``admits`` learnt
        it), with server nonces on or off, so the client's retry passes at once. Counted in
        ``tether_dpop_replay_epoch_refusals_total``.
        """
        epoch = "none" if self._epoch is None else f"{self._epoch.id} began at {self._epoch.since}"
        debug = f"proof (iat {checked.iat}) not made in the replay cache's epoch {epoch}, jkt {checked.jkt}"
        exc = UseDPoPNonce(self._mint(), "a fresh dpop nonce is required (the replay cache was reset)")
        exc.debug = debug
        exc.audit[predates_refusal_marker] = True
        if self.on_epoch_refusal is not None:
            self.on_epoch_refusal(exc.error)
        return exc

    async def check(self, proof: str | None, *, method: str, url: str, access_token: str | None = None) -> DPoPProof:
        """Every check, and the proof consumed in the replay cache (accepted once)."""
        checked, (key, until) = self.check_unconsumed(proof, method=method, url=url, access_token=access_token)
        await self.consume(checked, key, until)
        return checked

    async def consume(self, checked: DPoPProof, key: str, until: int) -> None:
        """Spend a checked proof's ``jti`` (RFC 9449 §11.1); a second use is refused, and so is
        a proof the replay cache's epoch cannot vouch for (``predates_refusal``)."""
        if not await self.spend(checked, key, until, refuse=True):
            raise replayed_proof(checked.jkt)

    async def spend(self, checked: DPoPProof, key: str, until: int, *, refuse: bool = False) -> bool:
        """Spend ``checked``'s ``jti``: True only if it was unspent and the replay cache can vouch
        for it (a proof made before the cache's current epoch proves nothing: it may be a
        replay the lost cache forgot). With ``refuse``, such a proof raises ``predates_refusal``."""
        now = self._clock.now()
        if self._epochs is None:
            return await self._replay.first_use(key, until=until, now=now)
        fresh, epoch = await self._epochs.spend_proof(key, until=until, now=now)
        if not fresh:
            return False
        if self.admits(checked, epoch):
            return True
        if refuse:
            raise self.predates_refusal(checked)
        return False

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
