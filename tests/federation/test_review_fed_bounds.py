"""Review of the border (rvfed): a compromised peer cannot make B open linked tasks without bound.

Each foreign task (``txn``) opens its own linked task at B, each with up to the ceiling's
``max_tokens`` and ``max_ttl``; a peer that signs whatever it likes mints a new ``txn`` and ``jti``
per request. B counts the crossings from each peer in a one-minute window
(``max_crossings_per_minute``) and refuses beyond it with 429 ``too_many_requests`` and a
``Retry-After``, audited, nothing spent or linked; other peers' and B's own agents are unaffected,
and the next window admits the peer again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedinkit import Border, claims_of, mark, refused, two_domains

from helpers import Client, create_task


def _forged(border: Border, foreign: str, **changes: Any) -> str:
    return border.a.sts.ctx.keyring.sign({**claims_of(foreign), **changes})


def test_fed01_a_peer_minting_foreign_tasks_is_bounded_per_minute(tmp_path: Path) -> None:
    with two_domains(tmp_path, b_federation={"max_crossings_per_minute": 3}) as border:
        border.clock.advance(60 - border.clock.now() % 60 + 1)  # the start of a window
        foreign, key = border.hop_to_b(border.a_task()["id"])
        linked = set()
        for i in range(3):
            forged = _forged(border, foreign, txn=f"tsk_minted{i}", jti=f"minted-{i}")
            response = border.cross(border.at_b(key), forged)
            assert response.status_code == 200, response.text
            linked.add(claims_of(response.json()["access_token"])["txn"])
        assert len(linked) == 3
        forged = _forged(border, foreign, txn="tsk_minted3", jti="minted-3")
        since = mark(border.b)
        response = border.cross(border.at_b(key), forged)
        refused(border.b, response, since=since, status=429, error="too_many_requests", reason="crossings",
                secrets=(forged,))  # fmt: skip
        assert 0 < int(response.headers["retry-after"]) <= 60
        assert not [r for r in border.b.audit() if r.seq > since and r.kind == "federation.linked"]
        # B's own agents are not counted against the peer
        local = Client(border.b)
        assert local.session(create_task(border.b, audiences=["http://127.0.0.1:9101"])["id"]).status_code == 200
        # the next window admits the peer again, and the refused token was not spent
        border.clock.advance(60)
        assert border.cross(border.at_b(key), _forged(border, foreign, txn="tsk_minted3", jti="minted-3",
                                                       iat=int(border.clock.now()), nbf=int(border.clock.now()),
                                                       exp=int(border.clock.now()) + 120)).status_code == 200  # fmt: skip
