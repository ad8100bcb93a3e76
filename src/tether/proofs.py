"""Stateful DPoP checks shared by the STS, the resource SDK and the gateway (RFC 9449 §8, §11.1).

``rules.dpop.check_proof`` does the pure checks; this adds the two that need state, in the
order that keeps retries cheap: the server nonce first (a nonce challenge leaves the proof
unspent), then the ``jti`` replay cache, atomically, so a proof is accepted once on every
replica.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Protocol

from tether.clock import Clock
from tether.errors import InvalidDPoPProof, UseDPoPNonce, replay
from tether.lru import LruCache
from tether.model import DPoPProof
from tether.rules.dpop import check_proof, replay_key
from tether.rules.nonce import make_nonce, nonce_fresh, nonce_issued

__all__ = ["ProofChecker", "ReplayCache"]


class ReplayCache(Protocol):
    async def first_use(self, key: str, *, until: int, now: float) -> bool: ...


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

    def _nonce_ok(self, nonce: str | None, now: float) -> bool:
        """RFC 9449 §8: the proof's nonce was issued by a replica (same key) within ``nonce_ttl``."""
        assert self._nonce_key is not None
        if nonce is None:
            return False
        issued = self._seen.get(nonce)
        if issued is None:
            issued = nonce_issued(self._nonce_key, nonce)
            if issued is None:
                return False  # forgeries are not remembered: they cannot crowd out good nonces
            self._seen.put(nonce, issued)
        return nonce_fresh(issued, now=now, ttl=self._nonce_ttl)

    async def check(self, proof: str | None, *, method: str, url: str, access_token: str | None = None) -> DPoPProof:
        """Every check, and the proof consumed in the replay cache (accepted once)."""
        checked, (key, until) = self.check_unconsumed(proof, method=method, url=url, access_token=access_token)
        await self.consume(checked, key, until)
        return checked

    async def consume(self, checked: DPoPProof, key: str, until: int) -> None:
        """Spend a checked proof's ``jti`` (RFC 9449 §11.1); a second use is refused."""
        if not await self._replay.first_use(key, until=until, now=self._clock.now()):
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
