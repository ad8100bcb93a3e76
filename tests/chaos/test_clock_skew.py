"""Clock skew at the edges of the configured leeways (issue 14, chaos suite).

Clocks are frozen so the edges are exact: the STS's at ``AT``, a client's (its DPoP proofs
and the workload JWTs its identity provider mints) and a resource server's set apart from
it by a leeway, just inside (accepted) and one second outside (refused with the error the
check names). The leeways are the defaults ``tether init`` writes: ``[tokens] clock_skew``
= 10 s for ``iat``/``nbf``/``exp`` and for a proof's ``iat`` ahead of the server,
``[dpop] max_age`` = 60 s for a proof's ``iat`` behind it; a resource server's
``ResourceSettings.skew`` = 10 s. Each test ends with a positive-control exchange; the
module ends with ``tether audit verify``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from hopload import audit_verify

from helpers import ADMIN, AGENT, JWT, QUIET_MONITOR, Client, RunningSts, create_task, running_sts
from tether.clock import ManualClock
from tether.errors import InvalidToken
from tether.resource import ResourceSettings, Verifier

pytestmark = [pytest.mark.slow]

AT = float(int(time.time()))
SKEW = 10  # [tokens] clock_skew
MAX_AGE = 60  # [dpop] max_age
RS = "http://127.0.0.1:9001"  # create_task's default audience
OUTSIDE_WINDOW = "dpop proof iat is outside the acceptable window"


class FrozenClock(ManualClock):
    """A clock that stands still until moved: the edges are exact whatever the machine's load."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


@pytest.fixture(scope="module")
def frozen_sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with running_sts(tmp_path_factory.mktemp("skew"), extra_toml=QUIET_MONITOR, clock=FrozenClock(AT)) as server:
        yield server
    audit_verify(server.config)


def _admin_exchange(sts: RunningSts, *, proof_at: float = AT, svid_at: float = AT, svid_ttl: int = 300) -> httpx.Response:
    """The admin's workload JWT for a token: its proof made at ``proof_at``, its JWT minted at ``svid_at``."""
    client = Client(sts)
    svid = sts.dev().issue(ADMIN, audience=sts.url, ttl=svid_ttl, now=int(svid_at))
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": svid, "subject_token_type": JWT}
    challenge = client.post_token(form, retry_nonce=False)  # no nonce yet: the STS hands one out
    assert challenge.json()["error"] == "use_dpop_nonce" and client.nonce is not None
    return client.post_token(form, proof=client.proof(now=proof_at))


def _refused(response: httpx.Response, error: str, description: str) -> None:
    assert response.status_code == 400, response.text
    assert (response.json()["error"], response.json()["error_description"]) == (error, description)


@pytest.mark.parametrize(("offset", "accepted"), [(SKEW, True), (SKEW + 1, False), (-MAX_AGE, True), (-MAX_AGE - 1, False)])
def test_dpop_proof_from_a_client_clock_ahead_or_behind_the_sts(frozen_sts: RunningSts, offset: int, accepted: bool) -> None:
    response = _admin_exchange(frozen_sts, proof_at=AT + offset)
    if accepted:
        assert response.status_code == 200, response.text
    else:
        _refused(response, "invalid_dpop_proof", OUTSIDE_WINDOW)
        assert _admin_exchange(frozen_sts).status_code == 200  # positive control


@pytest.mark.parametrize(("offset", "accepted"), [(SKEW, True), (SKEW + 1, False)])
def test_workload_jwt_minted_by_a_clock_ahead_of_the_sts(frozen_sts: RunningSts, offset: int, accepted: bool) -> None:
    response = _admin_exchange(frozen_sts, svid_at=AT + offset)
    if accepted:
        assert response.status_code == 200, response.text
    else:
        _refused(response, "invalid_grant", "workload token is invalid")
        assert frozen_sts.last_audit("token.refused").detail["reason"] == "iat is in the future"
        assert _admin_exchange(frozen_sts).status_code == 200  # positive control


@pytest.mark.parametrize(
    ("expired_ago", "refusal"),
    [(-1, None), (SKEW - 1, "workload token expires too soon"), (SKEW, "workload token is invalid")],
)
def test_workload_jwt_expired_by_a_clock_behind_the_sts(frozen_sts: RunningSts, expired_ago: int, refusal: str | None) -> None:
    """``exp`` ``expired_ago`` seconds before the STS's now. Within ``clock_skew`` the JWT still verifies
    (``now < exp + clock_skew``) but yields nothing: a derived token never outlives its subject token."""
    response = _admin_exchange(frozen_sts, svid_at=AT - 100, svid_ttl=100 - expired_ago)
    if refusal is None:
        assert response.status_code == 200, response.text
    else:
        _refused(response, "invalid_grant", refusal)
        if expired_ago >= SKEW:
            assert frozen_sts.last_audit("token.refused").detail["reason"] == "token has expired"
        assert _admin_exchange(frozen_sts).status_code == 200  # positive control


def _hop_token(sts: RunningSts) -> tuple[Client, str, int]:
    task = create_task(sts, audiences=[RS], scopes=["wiki:read"])
    agent = Client(sts)
    session = agent.session(task["id"]).json()["access_token"]
    hop = agent.hop(session, RS)
    assert hop.status_code == 200, hop.text
    return agent, str(hop.json()["access_token"]), int(hop.json()["expires_in"])


def _at_resource_server(sts: RunningSts, agent: Client, token: str, rs_clock: list[float]) -> list[str | None]:
    """Verify ``token`` at a resource server whose clock reads each of ``rs_clock``: None or the refusal."""
    clock = FrozenClock(AT)
    settings = ResourceSettings(issuer=sts.url, resource=RS, revocation_feed=False, token_cache=0)

    async def verify_each() -> list[str | None]:
        verifier = Verifier(settings, clock=clock)
        outcomes: list[str | None] = []
        try:
            for at in rs_clock:
                clock.at = at
                proof = agent.key.proof("GET", RS + "/x", access_token=token, now=at)
                try:
                    await verifier.verify(method="GET", path="/x", headers={"authorization": f"DPoP {token}", "dpop": proof})
                    outcomes.append(None)
                except InvalidToken as exc:
                    outcomes.append(exc.description)
        finally:
            await verifier.aclose()
        return outcomes

    return asyncio.run(verify_each())


def test_sts_clock_ahead_of_or_behind_a_resource_server(frozen_sts: RunningSts) -> None:
    """The STS's tokens at a resource server whose clock is behind it (``iat`` ahead) or past their ``exp``."""
    agent, token, ttl = _hop_token(frozen_sts)
    exp = AT + ttl
    outcomes = _at_resource_server(frozen_sts, agent, token, [AT - SKEW, AT - SKEW - 1, exp + SKEW - 1, exp + SKEW, AT])
    assert outcomes == [None, "invalid access token", None, "access token has expired", None]


def test_no_clock_skew_positive_control(frozen_sts: RunningSts) -> None:
    task = create_task(frozen_sts)
    agent = Client(frozen_sts)
    session = agent.session(task["id"], svid=frozen_sts.svid(AGENT))
    assert session.status_code == 200, session.text
    assert agent.hop(session.json()["access_token"], RS).status_code == 200
