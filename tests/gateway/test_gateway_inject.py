"""Each injection mode against the real upstream: header template, query parameter, basic auth.

The upstream receives exactly the gateway's credential, once, and none of the agent's:
its ``Authorization`` and ``DPoP`` are dropped with the hop-by-hop headers, and a header
or parameter named like the injected one is dropped, not duplicated (an agent must not
be able to smuggle a second value in beside the real one). Whatever the mode, an
upstream that echoes the request back returns it scrubbed.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import zlib
from urllib.parse import parse_qsl

import pytest
from gwkit import KEY, QUERY_PARAM, USERNAME, GatewayEnv, encoded_forms


def _no_agent_credentials(got: dict[str, object], token: str) -> None:
    headers = got["headers"]
    assert isinstance(headers, dict)
    assert "dpop" not in headers
    for values in headers.values():
        assert all(token not in value for value in values), "the agent's token reached the upstream"


def test_header_template_with_a_custom_header_name(gw: GatewayEnv) -> None:
    caller = gw.caller("legacy")
    before = len(gw.upstream.log)
    response = caller.get("legacy", "/v1/items", headers={"X-Legacy-Token": "Token forged-by-agent", "X-Keep": "yes"})
    assert response.status_code == 200, response.text
    [got] = gw.upstream.log[before:]
    assert got["headers"]["x-legacy-token"] == [f"Token {KEY}"]  # the template, once; the agent's copy dropped
    assert got["headers"]["x-keep"] == ["yes"]  # positive control: other agent headers pass
    assert "authorization" not in got["headers"]
    _no_agent_credentials(got, caller.token(gw.aud("legacy")))


def test_header_template_x_api_key_drops_the_agents_own_value(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    before = len(gw.upstream.log)
    assert caller.get("apikey", "/v1/items", headers={"X-Api-Key": "forged-by-agent"}).status_code == 200
    [got] = gw.upstream.log[before:]
    assert got["headers"]["x-api-key"] == [KEY]
    assert "authorization" not in got["headers"]
    _no_agent_credentials(got, caller.token(gw.aud("apikey")))


def test_header_template_authorization_bearer_replaces_the_agents_dpop_token(gw: GatewayEnv) -> None:
    caller = gw.caller("bearer")
    before = len(gw.upstream.log)
    assert caller.get("bearer", "/v1/items").status_code == 200
    [got] = gw.upstream.log[before:]
    assert got["headers"]["authorization"] == [f"Bearer {KEY}"]  # one Authorization: the gateway's
    _no_agent_credentials(got, caller.token(gw.aud("bearer")))


def test_query_parameter_replaces_the_agents_parameter_of_the_same_name(gw: GatewayEnv) -> None:
    caller = gw.caller("query")
    before = len(gw.upstream.log)
    # the agent's own `apikey`, plainly and with an escaped name, plus ordinary parameters
    path = f"/v1/items?q=1&{QUERY_PARAM}=forged&api%6Bey=forged2&q=2&empty="
    response = caller.get("query", path)
    assert response.status_code == 200, response.text
    [got] = gw.upstream.log[before:]
    params = parse_qsl(got["query"], keep_blank_values=True)
    assert [v for k, v in params if k == QUERY_PARAM] == [KEY]  # dropped, not duplicated
    assert [(k, v) for k, v in params if k != QUERY_PARAM] == [("q", "1"), ("q", "2"), ("empty", "")]
    assert "authorization" not in got["headers"] and "x-api-key" not in got["headers"]
    _no_agent_credentials(got, caller.token(gw.aud("query")))


def test_basic_auth(gw: GatewayEnv) -> None:
    caller = gw.caller("basic")
    before = len(gw.upstream.log)
    assert caller.get("basic", "/v1/items", headers={"Authorization-Extra": "x"}).status_code == 200
    [got] = gw.upstream.log[before:]
    expected = "Basic " + base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
    assert got["headers"]["authorization"] == [expected]
    _no_agent_credentials(got, caller.token(gw.aud("basic")))


def test_hop_by_hop_cookies_and_proxy_credentials_are_not_forwarded(gw: GatewayEnv) -> None:
    caller = gw.caller("apikey")
    before = len(gw.upstream.log)
    headers = {"Cookie": "session=agent", "Proxy-Authorization": "Basic eDp5", "Connection": "keep-alive, X-Hop",
               "X-Hop": "hop-value", "TE": "trailers", "X-Keep": "kept"}  # fmt: skip
    assert caller.get("apikey", "/v1/items", headers=headers).status_code == 200
    [got] = gw.upstream.log[before:]
    for name in ("cookie", "proxy-authorization", "x-hop", "te"):
        assert name not in got["headers"], name
    assert got["headers"]["x-keep"] == ["kept"]


def test_an_upstream_cookie_is_neither_relayed_nor_replayed_to_later_calls(gw: GatewayEnv) -> None:
    """One task's upstream session must not ride along on another task's calls (the gateway
    shares one upstream connection pool): Set-Cookie is dropped, never stored, never sent."""
    first, second = gw.caller("apikey"), gw.caller("apikey")
    response = first.get("apikey", "/set-cookie")
    assert response.status_code == 200 and "set-cookie" not in response.headers
    before = len(gw.upstream.log)
    assert second.get("apikey", "/v1/items").status_code == 200
    [got] = gw.upstream.log[before:]
    assert "cookie" not in got["headers"]


@pytest.mark.parametrize("route", ["apikey", "legacy", "bearer", "query", "basic"])
def test_an_upstream_echoing_the_whole_request_is_scrubbed_in_every_mode(gw: GatewayEnv, route: str) -> None:
    caller = gw.caller(route)
    response = caller.get(route, "/echo/request")
    assert response.status_code == 200
    echoed = json.loads(response.content)
    assert "host" in echoed["headers"]  # positive control: the upstream did echo the request
    blob = caller.transport.everything()
    assert b"[REDACTED]" in blob
    for form in encoded_forms():
        assert form.encode() not in blob, f"{route}: the echo handed the agent the secret as {form!r}"


def test_a_key_echoed_as_json_with_escaped_slashes_is_scrubbed(gw: GatewayEnv) -> None:
    """``{"you_sent": "sk_live\\/..."}``: the default output of PHP's json_encode is still the key."""
    caller = gw.caller("apikey")
    response = caller.get("apikey", "/echo/json-escaped")
    assert response.status_code == 200
    assert json.loads(response.content)["you_sent"] != KEY, "the agent recovers the key from the escaped JSON"
    # positive control: the plain JSON echo is scrubbed
    assert json.loads(caller.get("apikey", "/echo/body").content)["you_sent"] == "[REDACTED]"


def test_a_key_echoed_in_a_compressed_body_is_scrubbed(gw: GatewayEnv) -> None:
    """An upstream that gzips regardless of ``Accept-Encoding: identity``: the scrubber must see plain bytes."""
    caller = gw.caller("apikey")
    response = caller.get("apikey", "/echo/gzip")
    assert response.status_code == 200
    assert response.text == "compressed [REDACTED] echo"
    assert KEY.encode() not in caller.transport.everything()
    assert gw.upstream.last()["headers"]["accept-encoding"] == ["identity"]


@pytest.mark.parametrize("variant", ["x-gzip", "list", "twice", "br"])
def test_a_body_in_a_coding_the_scrubber_cannot_see_through_is_refused_502(gw: GatewayEnv, variant: str) -> None:
    """Passed on undecoded, a compressed echo of the key would reach the agent unscrubbed."""
    caller = gw.caller("apikey")
    response = caller.get("apikey", f"/echo/coded/{variant}")
    assert response.status_code == 502 and response.json()["error"] == "bad_gateway"
    assert KEY.encode() not in caller.transport.everything()


@pytest.mark.parametrize("variant", ["upper", "identity"])
def test_a_body_in_a_coding_that_is_decoded_is_scrubbed(gw: GatewayEnv, variant: str) -> None:
    caller = gw.caller("apikey")
    response = caller.get("apikey", f"/echo/coded/{variant}")
    assert response.status_code == 200 and response.text == "compressed [REDACTED] echo"
    assert "content-encoding" not in response.headers
    assert KEY.encode() not in caller.transport.everything()


def _recoverable(blob: bytes) -> bool:
    """Whether the key can be read from ``blob`` as is or after undoing a gzip/deflate coding."""
    candidates = [blob]
    for start in range(len(blob)):  # a compressed body somewhere in the transcript
        for decode in (gzip.decompress, zlib.decompress):
            with contextlib.suppress(OSError, EOFError, zlib.error):
                candidates.append(decode(blob[start:]))
    return any(form.encode() in candidate for candidate in candidates for form in encoded_forms())


@pytest.mark.parametrize("variant", ["gzip-chunked", "x-gzip-chunked", "deflate-chunked", "repeated", "gzip-alone"])
def test_a_transfer_coding_other_than_chunked_is_refused_502(gw: GatewayEnv, variant: str) -> None:
    """Issue 12 finding 8: ``Transfer-Encoding: gzip, chunked`` was de-chunked but not decoded, and
    the compressed echo of the key reached the agent past the scrubber."""
    caller = gw.caller("coded")
    response = caller.get("coded", f"/te/{variant}")
    assert response.status_code == 502, (variant, response.content[:80])
    assert response.json()["error"] == "bad_gateway"
    assert not _recoverable(caller.transport.everything()), f"{variant}: the agent can recover the key"


@pytest.mark.parametrize("variant", ["identity-chunked", "chunked-twice"])
def test_an_ambiguous_transfer_coding_list_is_refused_502(gw: GatewayEnv, variant: str) -> None:
    """``identity`` is no transfer coding (RFC 9112 §7) and ``chunked`` applies once (§6.1): parsers
    disagree on such framing, so it is refused even where this client happens to read it plainly."""
    caller = gw.caller("coded")
    response = caller.get("coded", f"/te/{variant}")
    assert response.status_code == 502 and response.json()["error"] == "bad_gateway"


@pytest.mark.parametrize("variant", ["chunked", "chunked-upper"])
def test_a_plain_chunked_response_is_scrubbed_and_forwarded(gw: GatewayEnv, variant: str) -> None:
    """Positive control for finding 8, on the same upstream: one ``chunked`` (any case) is relayed."""
    caller = gw.caller("coded")
    response = caller.get("coded", f"/te/{variant}")
    assert response.status_code == 200 and response.text == "compressed [REDACTED] echo"
    assert not _recoverable(caller.transport.everything())
