"""The resource server's verified-token cache never outlives what made the token valid.

A token that verified once is reused for later calls, but each call still needs a new
proof by the bound key (DPOP-12, DPOP-14), and the cached answer is dropped the moment
the token expires (C-01), is revoked or its task ends, or the JWKS stops naming the key
that signed it (AUX-01: an emergency key removal takes effect with the refresh that
brings the new JWKS — the cache adds no delay of its own). Real keys,
real signatures, the real verifier; only the clock is moved.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import ECKey

from tether.agent.identity import DevIdentity
from tether.agent.proof import DPoPKey
from tether.clock import ManualClock
from tether.errors import InvalidToken, OAuthError
from tether.identity.dev_issuer import DevTrustDomain
from tether.identity.jwks_cache import KeySet
from tether.resource import ResourceSettings, Verifier
from tether.resource.revocations import RevocationFeed
from tether.rules.claims import Grant, build_claims
from tether.rules.jws import sign_compact

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

ISSUER = "http://sts.test"
RESOURCE = "http://svc.test"
AGENT = "spiffe://tether.local/agent/a"


class SwitchableKeys:
    """A key source whose JWKS the test replaces, as a refresh after a rotation would."""

    def __init__(self, keyset: KeySet) -> None:
        self.keyset = keyset

    async def keys(self, *, kid: object, now: float) -> KeySet:
        return self.keyset


def _key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)


def _public(key: ECKey) -> ECKey:
    return ECKey.import_key(key.as_dict(private=False))


class Rs:
    def __init__(self, token_cache: int = 10_000) -> None:
        self.issuer_key = _key("k1")
        self.keys = SwitchableKeys(KeySet([_public(self.issuer_key)]))
        self.clock = ManualClock()
        self.http = httpx.AsyncClient(trust_env=False)
        # never started: the test applies entries itself; the identity is what a real one would present
        identity = DevIdentity(DevTrustDomain("tether.local", _key("td")), "spiffe://tether.local/svc/a")
        self.feed = RevocationFeed(ISSUER, self.http, identity=identity, stale_after=3600, clock=self.clock)
        self.feed.last_heard = time.time()
        settings = ResourceSettings(issuer=ISSUER, resource=RESOURCE, token_cache=token_cache)
        self.verifier = Verifier(settings, http=self.http, clock=self.clock, keys=self.keys, feed=self.feed)
        self.agent = DPoPKey()

    def token(self, *, ttl: int = 60, task: str = "task-1", key: ECKey | None = None) -> str:
        now = int(time.time())
        grant = Grant(
            sub=AGENT,
            aud=RESOURCE,
            scope=frozenset({"read"}),
            exp=now + ttl,
            client_id=AGENT,
            agent=AGENT,
            jkt=self.agent.jkt,
            txn=task,
        )
        claims = build_claims(grant, issuer=ISSUER, jti=secrets.token_urlsafe(16), now=now)
        signer = key or self.issuer_key
        return sign_compact({"typ": "at+jwt", "alg": "ES256", "kid": str(signer.kid)}, claims, signer, "ES256")

    def call(self, token: str, *, proof: str | None = None, key: DPoPKey | None = None) -> str:
        signer = key or self.agent
        proof = proof or signer.proof("GET", RESOURCE + "/r", access_token=token, now=self.clock.now())
        principal = asyncio.run(
            self.verifier.verify(method="GET", path="/r", headers={"authorization": f"DPoP {token}", "dpop": proof})
        )
        return principal.jti

    def refused(self, token: str, *, proof: str | None = None, key: DPoPKey | None = None) -> OAuthError:
        with pytest.raises(OAuthError) as caught:
            self.call(token, proof=proof, key=key)
        return caught.value


@pytest.fixture
def rs() -> Iterator[Rs]:
    server = Rs()
    yield server
    asyncio.run(server.http.aclose())


def test_cached_token_serves_repeated_calls_with_new_proofs(rs: Rs) -> None:
    token = rs.token()
    jtis = {rs.call(token) for _ in range(3)}
    assert len(jtis) == 1


def test_DPOP_12_cached_token_still_refuses_a_replayed_proof(rs: Rs) -> None:
    token = rs.token()
    proof = rs.agent.proof("GET", RESOURCE + "/r", access_token=token)
    rs.call(token, proof=proof)
    error = rs.refused(token, proof=proof)
    assert error.error == "invalid_dpop_proof" and "already been used" in error.description


def test_DPOP_14_cached_token_still_needs_the_bound_key(rs: Rs) -> None:
    token = rs.token()
    rs.call(token)
    error = rs.refused(token, key=DPoPKey())
    assert isinstance(error, InvalidToken) and "does not match the token binding" in error.description


def test_C_01_cached_token_refused_once_expired(rs: Rs) -> None:
    token = rs.token(ttl=30)
    rs.call(token)
    rs.clock.advance(30 + 10 + 1)  # past exp + the accepted skew
    error = rs.refused(token)
    assert error.error == "invalid_token" and "expired" in error.description


def test_cached_token_refused_after_its_jti_is_revoked(rs: Rs) -> None:
    token = rs.token()
    jti = rs.call(token)
    rs.feed.apply({"kind": "jti", "value": jti, "exp": int(time.time()) + 60, "seq": 1})
    error = rs.refused(token)
    assert error.error == "invalid_token" and "revoked" in error.description


def test_cached_token_refused_after_its_task_ends(rs: Rs) -> None:
    token = rs.token(task="task-9")
    rs.call(token)
    rs.feed.apply({"kind": "task", "value": "task-9", "exp": int(time.time()) + 60, "seq": 1})
    assert rs.refused(token).error == "invalid_token"


def test_AUX_01_cached_token_refused_when_the_jwks_drops_its_key(rs: Rs) -> None:
    token = rs.token()
    rs.call(token)
    rs.keys.keyset = KeySet([_public(_key("k2"))])  # emergency rotation: k1 is gone
    error = rs.refused(token)
    assert error.error == "invalid_token"


def test_AUX_01_cached_token_refused_when_its_kid_now_names_another_key(rs: Rs) -> None:
    token = rs.token()
    rs.call(token)
    rs.keys.keyset = KeySet([_public(_key("k1"))])  # same kid, different key material
    assert rs.refused(token).error == "invalid_token"


def test_cached_token_reverified_after_a_refresh_with_the_same_key(rs: Rs) -> None:
    token = rs.token()
    rs.call(token)
    rs.keys.keyset = KeySet([_public(rs.issuer_key)])  # a new key object, same key: still valid
    assert rs.call(token)


def test_a_token_that_failed_is_never_cached(rs: Rs) -> None:
    forged = rs.token(key=_key("k1"))  # right kid, wrong key
    for _ in range(2):
        assert rs.refused(forged).error == "invalid_token"
