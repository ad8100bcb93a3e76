from __future__ import annotations

from helpers import Client, RunningSts, create_task


def test_session_then_hop_token(sts: RunningSts) -> None:
    task = create_task(sts)
    agent = Client(sts)
    session = agent.session(task["id"])
    assert session.status_code == 200, session.text
    hop = agent.hop(session.json()["access_token"], "http://127.0.0.1:9001", scope="wiki:read")
    assert hop.status_code == 200, hop.text
    assert hop.json()["scope"] == "wiki:read"
    assert sts.last_audit("token.issued").detail["token_kind"] == "hop"
