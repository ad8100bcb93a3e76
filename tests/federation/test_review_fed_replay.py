"""Review of the border (rvfed): a stolen crossing token raced at B (FED-01, DPOP-12).

The thief holds A's hop token for B and the agent's key (the worst case short of A itself): it
presents the token at B many times at once, each with its own fresh proof. The single-use mark
(``Store.spend``) is atomic, so exactly one request crosses and one linked task is opened; every
other request is ``invalid_grant`` and none is a 500.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedinkit import claims_of, two_domains


def test_fed01_one_crossing_token_raced_at_b_crosses_once(tmp_path: Path) -> None:
    with two_domains(tmp_path) as border:
        foreign, key = border.hop_to_b(border.a_task()["id"])
        clients = [border.at_b(key) for _ in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda c: border.cross(c, foreign), clients))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [400] * 7, [r.text for r in responses]
        assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
        linked = [r for r in border.b.audit() if r.kind == "federation.linked"]
        assert len(linked) == 1 and linked[0].detail["foreign_jti"] == claims_of(foreign)["jti"]
