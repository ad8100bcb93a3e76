"""``protect``: RFC 9728 metadata and per-request verification of every MCP HTTP request.

The challenge of every 401 names ``resource_metadata`` (RFC 9728 §5.1) so an MCP client can find
the STS; the token must be DPoP-bound and issued for this server's MCP URL (MCP-02, MCP-10).
"""

from __future__ import annotations

import logging

import httpx
import pytest
from mcpkit import ACCEPT, McpEnv, Served, call_tool, legacy_headers, legacy_session, modern_headers, modern_request, result_of

from tether.agent import DPoPKey

METADATA = "/.well-known/oauth-protected-resource"


def _metadata_url(served: Served) -> str:
    return served.origin + METADATA + "/mcp"


@pytest.mark.parametrize("suffix", ["", "/mcp"])
def test_MCP_09_metadata_at_the_root_and_the_path_suffixed_well_known(menv: McpEnv, suffix: str) -> None:
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        response = http.get(menv.sse.origin + METADATA + suffix)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["resource"] == menv.sse.url  # the MCP URL itself, path included
    assert document["authorization_servers"] == [menv.sts.url]
    assert document["dpop_bound_access_tokens_required"] is False  # certificate-bound tokens too (RFC 8705)
    assert document["tls_client_certificate_bound_access_tokens"] is True
    # negative control: another well-known suffix is not metadata (it is verified, and refused)
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        other = http.get(menv.sse.origin + METADATA + "/other")
    assert other.status_code == 401


def _challenge(response: httpx.Response, scheme: str = "DPoP") -> str:
    value = str(response.headers.get("www-authenticate", ""))
    assert value.startswith(scheme + " "), value
    return value


def test_MCP_10_no_token_is_401_naming_the_metadata(menv: McpEnv, caplog: pytest.LogCaptureFixture) -> None:
    body = modern_request("tools/call", {"name": "echo", "arguments": {"text": "no-token"}})
    with httpx.Client(trust_env=False, timeout=10.0) as http, caplog.at_level(logging.INFO, logger="tether.mcp"):
        response = http.post(menv.sse.url, json=body, headers=modern_headers("tools/call", "echo"))
    assert response.status_code == 401
    challenge = _challenge(response)
    assert f'resource_metadata="{_metadata_url(menv.sse)}"' in challenge
    assert "error=" not in challenge  # RFC 6750 §3.1: no credentials, no error code
    assert "no-token" not in menv.sse.tools.calls("echo")
    assert any(getattr(r, "mcp_event", None) == "request refused" for r in caplog.records)


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_MCP_10_every_method_of_the_transport_is_verified(menv: McpEnv, method: str) -> None:
    """The GET stream and DELETE are verified like the POSTs (a session id is never authentication)."""
    headers = {"Accept": ACCEPT, "Mcp-Session-Id": "0123456789abcdef"}
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        response = http.request(method, menv.sse.url, headers=headers, content=b"{}" if method == "POST" else None)
    assert response.status_code == 401
    assert f'resource_metadata="{_metadata_url(menv.sse)}"' in _challenge(response)


def test_MCP_02_a_bound_token_sent_as_bearer_is_refused(menv: McpEnv) -> None:
    session = menv.session()
    token = session.token_for(menv.sse.url)
    body = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    headers = modern_headers("tools/call", "echo")
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        bearer = http.post(menv.sse.url, json=body, headers={**headers, "Authorization": f"Bearer {token}"})
        proof = session.key.proof("POST", menv.sse.url, access_token=token)
        dpop = http.post(menv.sse.url, json=body, headers={**headers, "Authorization": f"DPoP {token}", "DPoP": proof})
    assert bearer.status_code == 401
    # RFC 6750 §3: the Bearer challenge for a Bearer-scheme request (RFC 8705 §3 tokens use that scheme),
    # naming DPoP after it (RFC 9449 §7.2) so a DPoP-bound token's client learns where to go
    challenge = _challenge(bearer, "Bearer")
    assert challenge.startswith('Bearer error="invalid_token"') and ", DPoP " in challenge
    assert f'resource_metadata="{_metadata_url(menv.sse)}"' in challenge
    # positive control: the same token with the DPoP scheme and a proof
    assert dpop.status_code == 200, dpop.text
    assert result_of(dpop)["content"][0]["text"] == "x"


def test_MCP_02_a_token_for_another_mcp_server_is_refused(menv: McpEnv) -> None:
    session = menv.session()
    token = session.token_for(menv.json.url)  # audience: the other server's MCP URL
    body = modern_request("tools/call", {"name": "echo", "arguments": {"text": "wrong-audience"}})
    headers = modern_headers("tools/call", "echo")

    def signed(url: str) -> dict[str, str]:
        return {**headers, "Authorization": f"DPoP {token}", "DPoP": session.key.proof("POST", url, access_token=token)}

    with httpx.Client(trust_env=False, timeout=10.0) as http:
        wrong = http.post(menv.sse.url, json=body, headers=signed(menv.sse.url))
        right = http.post(menv.json.url, json=body, headers=signed(menv.json.url))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in _challenge(wrong)
    assert "wrong-audience" not in menv.sse.tools.calls("echo")
    assert right.status_code == 200, right.text
    assert menv.json.tools.calls("echo")[-1] == "wrong-audience"


def test_a_proof_from_another_key_is_refused(menv: McpEnv) -> None:
    session = menv.session()
    token = session.token_for(menv.sse.url)
    stranger = DPoPKey()
    with httpx.Client(trust_env=False, timeout=10.0) as http:
        response = http.post(
            menv.sse.url,
            json=modern_request("tools/list"),
            headers={
                **modern_headers("tools/list"),
                "Authorization": f"DPoP {token}",
                "DPoP": stranger.proof("POST", menv.sse.url, access_token=token),
            },
        )
    assert response.status_code == 401


def test_the_agent_sdk_client_reaches_both_servers(menv: McpEnv) -> None:
    """Positive control for the refusals above: the agent SDK's auth, one hop token per server."""
    session = menv.session()
    with menv.client(session) as http:
        for served in (menv.sse, menv.json):
            response = call_tool(http, served.url, "echo", {"text": served.url})
            assert response.status_code == 200, response.text
            assert result_of(response)["content"][0]["text"] == served.url
    assert session.exchanges == 3  # session token + one hop per server


def test_MCP_10_a_session_id_is_never_authentication(menv: McpEnv, caplog: pytest.LogCaptureFixture) -> None:
    """Another task's agent, with a valid token of its own, cannot use (or read the stream of) a session."""
    owner, other = menv.session(), menv.session()
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with (
        menv.client(owner) as http,
        menv.client(other) as intruder,
        caplog.at_level(logging.INFO, logger="tether.mcp"),
    ):
        session_id = legacy_session(http, menv.sse.url)
        hijack = intruder.post(menv.sse.url, json=listing, headers=legacy_headers(session_id))
        stream = intruder.get(menv.sse.url, headers={**legacy_headers(session_id), "Accept": "text/event-stream"})
        made_up = http.post(menv.sse.url, json=listing, headers=legacy_headers("f" * 32))
        own = http.post(menv.sse.url, json=listing, headers=legacy_headers(session_id))
        deleted = http.delete(menv.sse.url, headers=legacy_headers(session_id))
        after = http.post(menv.sse.url, json=listing, headers=legacy_headers(session_id))
    for response in (hijack, stream, made_up, after):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["message"] == "Session not found"
    assert own.status_code == 200, own.text  # positive control: the session's own caller
    assert deleted.status_code in (200, 204), deleted.text
    refused = [r for r in caplog.records if getattr(r, "mcp_event", None) == "session not the caller's"]
    assert [r.task for r in refused[:2]] == [other.task_id, other.task_id]  # type: ignore[attr-defined]
