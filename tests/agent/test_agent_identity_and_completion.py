"""Identity sources of the agent SDK, and ending a task from the agent's side.

``FileIdentity`` re-reads its file on every use (spiffe-helper and the kubelet rotate
the file in place); ``identity_from_environment`` refuses to guess; and
``TaskSession.complete()`` ends the task with the session's own token, after which
the STS refuses every exchange and the services refuse every derived token.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from agentkit import AgentEnv, wait_until

from tether.agent import Agent, ExchangeError, FileIdentity, WorkloadApiIdentity, identity_from_environment


def test_file_identity_rereads_the_file_each_time(aenv: AgentEnv, tmp_path: Path) -> None:
    path = tmp_path / "svid.jwt"
    first, second = aenv.sts.svid(), aenv.sts.svid()
    path.write_text(first + "\n", encoding="ascii")
    identity = FileIdentity(path)
    assert identity.token(aenv.sts.url) == first
    path.write_text(second, encoding="ascii")
    assert identity.token(aenv.sts.url) == second


def test_file_identity_rotation_is_picked_up_by_a_running_agent(aenv: AgentEnv, tmp_path: Path) -> None:
    path = tmp_path / "svid.jwt"
    path.write_text(aenv.sts.svid(), encoding="ascii")
    agent = Agent(aenv.sts.url, FileIdentity(path))
    task = aenv.task()
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        assert agent.session(task["id"]).token_for(aenv.x.url, http)
        # The file still holds the JWT just redeemed: its jti is single-use, so the STS refuses it ...
        with pytest.raises(ExchangeError) as caught:
            agent.session(task["id"]).token_for(aenv.x.url, http)
        assert caught.value.error == "invalid_grant"
        # ... and once the file is rotated, the same agent object uses the new one.
        path.write_text(aenv.sts.svid(), encoding="ascii")
        assert agent.session(task["id"]).token_for(aenv.x.url, http)


def test_identity_from_environment_without_config_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    with pytest.raises(RuntimeError, match="no workload identity"):
        identity_from_environment()
    path = tmp_path / "token"
    path.write_text("header.payload.signature\n", encoding="ascii")
    identity = identity_from_environment(file=path)
    assert isinstance(identity, FileIdentity)
    assert identity.token("aud") == "header.payload.signature"


def test_identity_from_environment_prefers_a_file_then_the_workload_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("spiffe")
    with socket.socket(socket.AF_UNIX) as listener:
        path = tmp_path / "agent.sock"
        listener.bind(str(path))
        listener.listen()
        monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", f"unix://{path}")
        assert isinstance(identity_from_environment(), WorkloadApiIdentity)
        token_file = tmp_path / "token"
        token_file.write_text("a.b.c", encoding="ascii")
        assert isinstance(identity_from_environment(file=token_file), FileIdentity)


def test_session_complete_revokes_everything(aenv: AgentEnv) -> None:
    task, other = aenv.task(), aenv.task()
    session = aenv.agent().session(task["id"])
    audiences = {aenv.x.url: aenv.x.url, aenv.y.url: aenv.y.url}
    with httpx.Client(auth=session.auth(audiences=audiences), trust_env=False, timeout=10.0) as http:
        assert http.get(aenv.x.url + "/whoami").status_code == 200
        assert http.get(aenv.y.url + "/whoami").status_code == 200
        held = {app.url: app.tokens()[-1] for app in (aenv.x, aenv.y)}

        with httpx.Client(trust_env=False, timeout=10.0) as raw:
            result = session.complete(raw)
            assert result["id"] == task["id"] and result["state"] == "completed"

            # The next call through the SDK needs a new hop token: the STS refuses it.
            with pytest.raises(ExchangeError) as caught:
                http.get(aenv.x.url + "/whoami")
            assert caught.value.error == "invalid_grant"

            # Hop tokens obtained before completion are refused at every service once pushed.
            for url, token in held.items():

                def refused(url: str = url, token: str = token) -> bool:
                    proof = session.key.proof("GET", url + "/whoami", access_token=token)
                    response = raw.get(url + "/whoami", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
                    if response.status_code == 200:
                        return False
                    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")
                    return True

                wait_until(refused, timeout=5.0, what=f"{url} to refuse the completed task's token")

    # Positive control: another task's session works at the same services.
    fresh = aenv.agent().session(other["id"])
    with httpx.Client(auth=fresh.auth(audiences=audiences), trust_env=False, timeout=10.0) as http:
        assert http.get(aenv.x.url + "/whoami").status_code == 200
