"""Unit tests of ``tether.agent.mcp_auth``: the httpx2 <-> flow adaptor, the challenge parser and the
metadata rules, driven by hand (no network: each response is written here, each proof is real).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from agentkit import claims_of

import tether
from tether.agent import Agent, DiscoveryError, DPoPKey, SessionEnded
from tether.agent.exchange import Flow, Nonces, send_flow
from tether.agent.mcp_auth import Httpx2Steps, McpAuth, metadata_urls, resource_metadata_of
from tether.rules.dpop import compute_ath

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

STS = "https://sts.example"
METADATA = "/.well-known/oauth-protected-resource"
MCP = "https://tools.example/mcp"


class Unread(httpx2.AsyncByteStream, httpx2.SyncByteStream):
    """A response body that must not be read (an SSE stream the SDK reads itself)."""

    def __iter__(self) -> Any:
        raise AssertionError("the adaptor read a body it should have left to the SDK")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise AssertionError("the adaptor read a body it should have left to the SDK")
        yield b""  # pragma: no cover


def _mcp_request() -> httpx2.Request:
    return httpx2.Request("POST", MCP, json={"jsonrpc": "2.0", "id": 1}, headers={"DPoP": "stale", "X-Keep": "1"})


# -- Httpx2Steps -------------------------------------------------------------------------------------
def test_adaptor_carries_the_flows_own_requests_and_the_callers_request() -> None:
    def flow(stand_in: httpx.Request) -> Flow:
        issued = yield httpx.Request("POST", STS + "/token", data={"grant_type": "x"}, headers={"Accept": "application/json"})
        stand_in.headers["Authorization"] = f"DPoP {issued.json()['access_token']}"
        answer = yield stand_in
        return issued.status_code, answer.status_code, answer.headers["mcp-session-id"]

    real = _mcp_request()
    steps = Httpx2Steps(flow, real)
    own = steps.request
    assert own is not None and own is not real
    assert (own.method, str(own.url), own.content) == ("POST", STS + "/token", b"grant_type=x")
    assert own.headers.get_list("content-length") == ["12"] and own.headers["content-type"].startswith("application/x-www")
    token_reply = httpx2.Response(200, json={"access_token": "tok"})
    assert steps.wants_body(token_reply)
    steps.answer(token_reply)

    assert steps.request is real, "the caller's own request object goes out (its body, its headers)"
    assert real.headers["authorization"] == "DPoP tok"
    assert "dpop" not in real.headers, "a header the flow did not set is not left over"
    assert real.headers["x-keep"] == "1" and real.read() == b'{"jsonrpc":"2.0","id":1}'
    stream = httpx2.Response(200, headers={"Mcp-Session-Id": "s1", "Content-Type": "text/event-stream"}, stream=Unread())
    assert not steps.wants_body(stream), "a successful MCP answer is left unread"
    steps.answer(stream)
    assert steps.request is None and steps.result == (200, 200, "s1")


def test_adaptor_reads_an_error_answer_to_the_callers_request() -> None:
    def flow(stand_in: httpx.Request) -> Flow:
        answer = yield stand_in
        return answer.json()

    steps = Httpx2Steps(flow, _mcp_request())
    refusal = httpx2.Response(400, json={"error": "use_dpop_nonce"})
    assert steps.wants_body(refusal)
    steps.answer(refusal)
    assert steps.result == {"error": "use_dpop_nonce"}


def test_adaptor_hands_the_flow_a_decoded_body_once() -> None:
    """A gzip answer (RFC 9110 §8.4) reaches the flow decoded, without the encoding that would decode it again."""

    def flow(stand_in: httpx.Request) -> Flow:
        issued = yield httpx.Request("GET", STS + METADATA)
        return issued.json(), issued.headers.get("content-encoding")

    steps = Httpx2Steps(flow, _mcp_request())
    body = gzip.compress(json.dumps({"resource": MCP}).encode())
    steps.answer(httpx2.Response(200, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}, content=body))
    assert steps.result == ({"resource": MCP}, None)


def test_adaptor_runs_send_flow_through_a_nonce_challenge() -> None:
    """The existing ``send_flow`` unchanged: a fresh proof with ``ath``, then once more with the nonce."""
    key, nonces = DPoPKey(), Nonces()
    real = _mcp_request()
    steps = Httpx2Steps(lambda r: send_flow(r, key, nonces, access_token="tok"), real)
    assert steps.request is real
    first = claims_of(real.headers["dpop"])
    assert (first["htm"], first["htu"], first["ath"]) == ("POST", MCP, compute_ath("tok")) and "nonce" not in first
    challenge = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "n-1"}
    steps.answer(httpx2.Response(401, headers=challenge, json={"error": "use_dpop_nonce"}))
    assert steps.request is real
    second = claims_of(real.headers["dpop"])
    assert second["nonce"] == "n-1" and second["jti"] != first["jti"]
    assert real.headers.get_list("dpop") == [real.headers["dpop"]], "the proof is replaced, not added"
    steps.answer(httpx2.Response(200, stream=Unread()))
    assert steps.request is None and steps.result.status_code == 200


# -- the 401 challenge and the well-known URLs ---------------------------------------------------------
@pytest.mark.parametrize(
    ("challenges", "expected"),
    [
        (['DPoP algs="ES256", resource_metadata="https://h/.well-known/oauth-protected-resource/mcp"'], "https://h/.well-known/oauth-protected-resource/mcp"),
        (["Bearer resource_metadata=https://h/m, scope=x"], "https://h/m"),
        (['Bearer realm="x"', 'DPoP error="invalid_token",resource_metadata="https://h/m"'], "https://h/m"),
        (['DPoP resource_metadata="https://h/a\\"b"'], 'https://h/a"b'),
        (['DPoP algs="ES256"'], None),
        (['DPoP not_resource_metadata="https://evil/m"'], None),
        ([], None),
    ],
)  # fmt: skip
def test_resource_metadata_parameter_of_a_challenge(challenges: list[str], expected: str | None) -> None:
    assert resource_metadata_of(challenges) == expected


def test_well_known_urls_path_suffixed_then_root() -> None:
    root = "https://h:8443/.well-known/oauth-protected-resource"
    assert metadata_urls(httpx.URL("https://h:8443/mcp")) == [root + "/mcp", root]
    assert metadata_urls(httpx.URL("https://h:8443/a/b/?q=1")) == [root + "/a/b", root]
    assert metadata_urls(httpx.URL("https://h:8443/")) == [root]


# -- which metadata is accepted (RFC 9728 §3.3) ----------------------------------------------------------
class _NoIdentity:
    principal: str | None = None

    def token(self, audience: str) -> str:
        raise AssertionError("no exchange in these tests")


def _discover(document: Any, *, status: int = 200, url: str = MCP) -> str | None:
    """Run ``audience_flow`` for ``url``: a bare 401, then ``document`` as the path-suffixed metadata."""
    auth = Agent(STS, _NoIdentity()).session("tsk_unit").mcp_auth()
    flow = auth.audience_flow(httpx.Request("POST", url))
    assert next(flow).url == httpx.URL(url)
    metadata = flow.send(httpx.Response(401, headers={"WWW-Authenticate": 'DPoP algs="ES256"'}))
    assert str(metadata.url) == metadata_urls(httpx.URL(url))[0]
    try:
        flow.send(httpx.Response(status, json=document))
    except StopIteration as done:
        return str(done.value)
    raise AssertionError("the flow asked for more")


@pytest.mark.parametrize(
    "resource",
    [MCP, "https://tools.example", "https://tools.example/", MCP + "/"],
)
def test_metadata_for_the_mcp_url_or_a_prefix_is_accepted(resource: str) -> None:
    assert _discover({"resource": resource, "authorization_servers": [STS + "/"]}) == resource


@pytest.mark.parametrize(
    "resource",
    [
        "https://tools.example/mc",  # a string prefix, not a path segment
        "https://tools.example/mcp/inner",  # narrower than the URL called
        "https://tools.example/other",
        "https://tools.example:444/mcp",
        "http://tools.example/mcp",
        "https://evil.example/mcp",
        "https://user@tools.example/mcp",
        "https://tools.example/mcp?x=1",
        "https://tools.example/mcp#f",
        "not a url",
        None,
        42,
    ],
)
def test_AUX_03_metadata_for_another_resource_is_refused(resource: Any) -> None:
    with pytest.raises(DiscoveryError, match="another resource"):
        _discover({"resource": resource, "authorization_servers": [STS]})


@pytest.mark.parametrize("servers", [["https://other.example"], [], None, "https://sts.example", [STS + "/x"]])
def test_AUX_03_metadata_not_naming_this_sts_is_refused(servers: Any) -> None:
    with pytest.raises(DiscoveryError, match="authorization server"):
        _discover({"resource": MCP, "authorization_servers": servers})


@pytest.mark.parametrize(
    ("named", "first"),
    [
        ("https://tools.example/meta/doc", "https://tools.example/meta/doc"),
        ("/meta/doc", "https://tools.example/meta/doc"),  # relative: resolved against the MCP URL
        ("https://tools.example/meta/doc#frag", "https://tools.example/meta/doc"),
        ("http://tools.example/meta/doc", None),  # another origin (scheme): not fetched
        ("https://tools.example:444/meta/doc", None),
        ("https://169.254.169.254/latest/meta-data", None),
        ("https://user:pw@tools.example/meta/doc", None),
    ],
)
def test_MCP_08_named_metadata_is_fetched_only_on_the_servers_origin(named: str, first: str | None) -> None:
    """Elsewhere it is ignored and the well-known URLs are tried, as when the 401 names none."""
    auth = Agent(STS, _NoIdentity()).session("tsk_unit").mcp_auth()
    flow = auth.audience_flow(httpx.Request("POST", MCP))
    next(flow)
    fetched = flow.send(httpx.Response(401, headers={"WWW-Authenticate": f'DPoP resource_metadata="{named}"'}))
    assert str(fetched.url) == (first or metadata_urls(httpx.URL(MCP))[0])
    assert "authorization" not in fetched.headers and "dpop" not in fetched.headers


def test_no_metadata_anywhere_is_refused() -> None:
    auth = Agent(STS, _NoIdentity()).session("tsk_unit").mcp_auth()
    flow = auth.audience_flow(httpx.Request("POST", MCP))
    next(flow)
    flow.send(httpx.Response(401))
    flow.send(httpx.Response(404, json={"error": "not_found"}))
    with pytest.raises(DiscoveryError, match="serves no protected resource metadata"):
        flow.send(httpx.Response(200, text="<html>"))


def test_a_server_that_answers_without_a_token_gets_none() -> None:
    auth = Agent(STS, _NoIdentity()).session("tsk_unit").mcp_auth()
    flow = auth.audience_flow(httpx.Request("POST", MCP))
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(httpx.Response(200))
    assert done.value.value is None


def test_discovery_off_refuses_an_unmapped_url_and_uses_the_map() -> None:
    session = Agent(STS, _NoIdentity()).session("tsk_unit")
    auth = session.mcp_auth(audiences={"https://tools.example": "aud-1"}, discover=False)
    with pytest.raises(StopIteration) as done:
        next(auth.audience_flow(httpx.Request("POST", MCP)))
    assert done.value.value == "aud-1"
    with pytest.raises(DiscoveryError, match="no audience configured"):
        next(auth.audience_flow(httpx.Request("POST", "https://tools.example.evil/mcp")))


# -- closing and the import boundary ---------------------------------------------------------------------
def test_a_closed_auth_refuses_before_any_io() -> None:
    auth = Agent(STS, _NoIdentity()).session("tsk_unit").mcp_auth(audiences={MCP: MCP})
    flow = auth.sync_auth_flow(_mcp_request())
    auth.close()
    with pytest.raises(SessionEnded):
        next(flow)
    assert isinstance(auth, McpAuth) and auth.closed


def test_tether_agent_imports_without_httpx2_or_mcp() -> None:
    """``httpx2`` and ``mcp`` come with the ``mcp`` extra: only ``session.mcp_auth()`` loads them."""
    code = (
        "import sys, tether.agent\n"
        "assert not {'httpx2', 'mcp'} & set(sys.modules), sorted({'httpx2', 'mcp'} & set(sys.modules))\n"
        "tether.agent.Agent('https://sts.example', None).session('t').mcp_auth()\n"
        "assert 'httpx2' in sys.modules and 'mcp' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tether.__file__).parents[1])}  # this checkout's tether
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
