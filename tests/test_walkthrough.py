"""Issue 2, "What it must show", as one story a new user can follow.

``tether init`` → ``tether serve`` (a real subprocess) → ``tether identity issue`` →
``tether task create`` → an INDEPENDENT OAuth client (PyJWT + cryptography + httpx,
its own DPoP code; nothing from ``tether.agent``) exchanges for a session token and a
hop token, verifies the hop token against ``/jwks``, and sees scope widening, proof
replay and use after ``tether task complete`` refused with the RFC error codes, and
introspection report ``active: false``. Finally no token or proof appears in the
audit export or the server's output (BCP-13).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from independent import DPoPClient

TETHER = str(Path(sys.prefix) / "bin" / "tether")
AGENT = "spiffe://tether.local/agent/research"
SERVICE = "http://127.0.0.1:9001"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = [pytest.mark.slow, pytest.mark.store_independent]


def _free_port() -> int:
    """A port below the kernel's ephemeral range, so no outgoing connection takes it first."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["COLUMNS"] = "200"
    return env


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run([TETHER, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=_env())
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def _wait_healthy(http: httpx.Client, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"tether serve exited {proc.returncode}: {log.read_text()}"
        try:
            if http.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"tether serve never became healthy: {log.read_text()}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_walkthrough_what_issue_2_must_show(tmp_path: Path) -> None:
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    _run("init", "--dir", str(tmp_path), "--issuer", issuer, cwd=tmp_path)
    config = str(tmp_path / "tether.toml")
    # a replay proves nothing about who sent it, so the monitor only alerts on the replay in
    # step 5 (never suspends the task it names); the walkthrough runs on the default detectors
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([TETHER, "serve", "--config", config], stdout=sink, stderr=sink, env=_env(), cwd=tmp_path)
    secrets_used: list[str] = []
    http = httpx.Client(timeout=10.0, trust_env=False)
    try:
        _wait_healthy(http, issuer, proc, log)

        # the operator's side: an identity for the agent and a task for it
        svid = _run("identity", "issue", AGENT, "--config", config, cwd=tmp_path).strip()
        secrets_used.append(svid)
        task = json.loads(
            _run(
                "task",
                "create",
                "--agent",
                AGENT,
                "--audience",
                SERVICE,
                "--scope",
                "wiki:read",
                "--scope",
                "wiki:write",
                "--json",
                "--config",
                config,
                cwd=tmp_path,
            )
        )
        assert task["state"] == "active"

        # the client configures itself from RFC 8414 metadata (BCP-11, AUX-03)
        meta = http.get(issuer + "/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == issuer
        assert TOKEN_EXCHANGE in meta["grant_types_supported"]
        assert "ES256" in meta["dpop_signing_alg_values_supported"]
        token_url = meta["token_endpoint"]
        client = DPoPClient(http)

        # 1. workload JWT + task → session token (first try gets use_dpop_nonce; the client retries)
        first = client.token(
            token_url,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": svid,
                "subject_token_type": JWT_TYPE,
                "task": task["id"],
                "client_id": AGENT,
            },
        )
        assert first.status_code == 200, first.text
        assert client.challenges == 1  # the STS demanded a nonce, the client complied
        body = first.json()
        assert (body["token_type"], body["issued_token_type"]) == ("DPoP", ACCESS_TYPE)
        session = body["access_token"]
        secrets_used.append(session)

        # 2. session token + proof from the same key + resource → hop token
        hop_response = client.token(
            token_url,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": session,
                "subject_token_type": ACCESS_TYPE,
                "resource": SERVICE,
                "scope": "wiki:read",
            },
        )
        assert hop_response.status_code == 200, hop_response.text
        hop = hop_response.json()["access_token"]
        secrets_used.append(hop)
        assert hop_response.json()["scope"] == "wiki:read"

        # 3. verify the hop token against /jwks with PyJWT, as a resource server would
        jwks = http.get(meta["jwks_uri"]).json()
        header = jwt.get_unverified_header(hop)
        assert header["typ"] == "at+jwt"
        signing = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        claims = jwt.decode(
            hop,
            jwt.PyJWK(signing).key,
            algorithms=[signing["alg"]],
            audience=SERVICE,
            issuer=issuer,
            options={"require": ["exp", "iat", "jti", "sub", "aud", "iss"]},
        )
        assert claims["cnf"] == {"jkt": client.jkt}
        assert claims["scope"] == "wiki:read"
        assert claims["txn"] == task["id"]
        assert claims["sub"] == AGENT
        session_claims = jwt.decode(session, options={"verify_signature": False})
        assert claims["exp"] <= session_claims["exp"]
        with pytest.raises(jwt.InvalidAudienceError):
            jwt.decode(hop, jwt.PyJWK(signing).key, algorithms=[signing["alg"]], audience="http://127.0.0.1:9002")

        # 4. scope widening is refused, never narrowed
        wide = client.token(
            token_url,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": session,
                "subject_token_type": ACCESS_TYPE,
                "resource": SERVICE,
                "scope": "wiki:read wiki:admin",
            },
        )
        assert wide.status_code == 400, wide.text
        assert wide.json()["error"] == "invalid_scope"

        # 5. a replayed proof is refused (positive control first: its first use succeeds)
        hop_form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": session,
            "subject_token_type": ACCESS_TYPE,
            "resource": SERVICE,
            "scope": "wiki:write",
        }
        proof = client.proof("POST", token_url)
        once = client.token(token_url, hop_form, proof=proof)
        assert once.status_code == 200, once.text
        secrets_used.append(once.json()["access_token"])
        replay = client.token(token_url, hop_form, proof=proof)
        assert replay.status_code == 400, replay.text
        assert replay.json()["error"] == "invalid_dpop_proof"
        # ... and the monitor raises an alert for it (polled: the monitor tails the audit log)
        deadline = time.monotonic() + 15
        while not [a for a in json.loads(_run("alerts", "--json", "--config", config, cwd=tmp_path))
                   if a["detector"] == "dpop_replay" and a["task"] == task["id"]]:  # fmt: skip
            assert time.monotonic() < deadline, "no dpop_replay alert"
            time.sleep(0.2)

        # 6. introspection (the token's client authenticates with a fresh JWT-SVID)
        def introspect(token: str) -> dict[str, Any]:
            assertion = _run("identity", "issue", AGENT, "--config", config, cwd=tmp_path).strip()
            secrets_used.append(assertion)
            response = http.post(
                meta["introspection_endpoint"],
                data={"token": token, "client_assertion_type": JWT_BEARER, "client_assertion": assertion},
            )
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        live = introspect(hop)
        assert live["active"] is True
        assert live["cnf"] == {"jkt": client.jkt}

        # 7. tether task complete → everything derived from the task dies at once
        done = json.loads(_run("task", "complete", task["id"], "--json", "--config", config, cwd=tmp_path))
        assert done["state"] == "completed"
        after = client.token(
            token_url,
            {"grant_type": TOKEN_EXCHANGE, "subject_token": session, "subject_token_type": ACCESS_TYPE, "resource": SERVICE},
        )
        assert after.status_code == 400, after.text
        assert after.json()["error"] == "invalid_grant"
        assert introspect(hop) == {"active": False}
        assert introspect(session) == {"active": False}

        # the audit chain is intact and holds the story
        verify = subprocess.run(
            [TETHER, "audit", "verify", "--config", config], capture_output=True, text=True, timeout=60, check=False, env=_env()
        )
        assert verify.returncode == 0, verify.stderr
        assert "intact" in verify.stdout
        export = _run("audit", "export", "--config", config, cwd=tmp_path)
        errors = {json.loads(line).get("error") for line in export.splitlines()}
        assert {"invalid_scope", "invalid_dpop_proof", "invalid_grant"} <= errors
    finally:
        http.close()
        _stop(proc)

    # BCP-13: no token, SVID or proof in the audit export or in anything the server printed
    server_output = log.read_text(errors="replace")
    secrets_used.extend(client.sent)
    assert len(secrets_used) > 10
    for secret in secrets_used:
        signature = secret.rsplit(".", 1)[1]
        for where, text in (("audit export", export), ("server output", server_output)):
            assert secret not in text, f"a token or proof appears in the {where}"
            assert signature not in text, f"a JWT signature appears in the {where}"
