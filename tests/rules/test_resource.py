"""RFC 8707 ``resource`` / RFC 8693 ``audience`` (``tether.rules.resource``): SECURITY.md AUX-02, T-02, MCP-01."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tether.errors import InvalidTarget
from tether.rules.resource import MAX_URI_LENGTH, check_resource_uri, select_audience

API = "https://api.example/v1"


def refused_target(func: Callable[..., object], *args: object) -> InvalidTarget:
    with pytest.raises(InvalidTarget) as info:
        func(*args)
    assert type(info.value) is InvalidTarget
    assert info.value.error == "invalid_target"
    return info.value


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(API, id="https-path"),
        pytest.param("https://api.example", id="https-root"),
        pytest.param("http://127.0.0.1:9001", id="loopback-port"),
        pytest.param("https://api.example/v1?tenant=a", id="query"),
        pytest.param("urn:example:service:b", id="urn"),
        pytest.param("spiffe://example.org/svc/b", id="spiffe"),
        pytest.param("https://[::1]:8443/x", id="ipv6"),
        pytest.param("https://api.example/" + "p" * (MAX_URI_LENGTH - 20), id="long"),
    ],
)
def test_AUX_02_absolute_uri_accepted(uri: str) -> None:
    assert check_resource_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(API + "#frag", id="fragment"),
        pytest.param(API + "#", id="empty-fragment"),
        pytest.param("https://api.example#x", id="root-fragment"),
        pytest.param("/v1", id="relative-path"),
        pytest.param("v1", id="relative-name"),
        pytest.param("api.example/v1", id="no-scheme"),
        pytest.param("//api.example/v1", id="scheme-relative"),
        pytest.param("", id="empty"),
        pytest.param("https://", id="scheme-only"),
        pytest.param("https:///v1", id="no-host"),
        pytest.param("http://", id="http-scheme-only"),
        pytest.param("https://api.example/ v1", id="inner-space"),
        pytest.param(" " + API, id="leading-space"),
        pytest.param(API + " ", id="trailing-space"),
        pytest.param(API + "\n", id="newline"),
        pytest.param("https://api.example/\u00e9", id="non-ascii"),
        pytest.param("https://api.\u0435xample/", id="cyrillic-homoglyph"),
        pytest.param("https://api.example/\x00", id="nul"),
        pytest.param("https://api.example/" + "p" * MAX_URI_LENGTH, id="too-long"),
    ],
)
def test_AUX_02_not_an_absolute_uri_without_fragment_refused(uri: str) -> None:
    assert check_resource_uri(API) == API
    refused_target(check_resource_uri, uri)


def test_select_audience_none_requested() -> None:
    assert select_audience([], []) is None


@pytest.mark.parametrize(
    ("resources", "audiences"),
    [
        pytest.param([API], [], id="resource"),
        pytest.param([], [API], id="audience"),
        pytest.param([API], [API], id="both-same"),
        pytest.param([API, API], [], id="resource-twice"),
        pytest.param([API], [API, API], id="audience-twice"),
    ],
)
def test_select_audience_one_target(resources: list[str], audiences: list[str]) -> None:
    assert select_audience(resources, audiences) == API


@pytest.mark.parametrize(
    ("resources", "audiences"),
    [
        pytest.param([API, "https://b.example"], [], id="two-resources"),
        pytest.param([], [API, "https://b.example"], id="two-audiences"),
        pytest.param([API], ["https://b.example"], id="resource-and-other-audience"),
        pytest.param([API], [API + "/"], id="trailing-slash-variant"),
        pytest.param([API, "https://api.example/V1"], [], id="case-variant"),
        pytest.param([API + "#x"], [], id="fragment"),
        pytest.param([], ["service-b"], id="logical-name"),
        pytest.param(["/internal"], [], id="relative"),
    ],
)
def test_T_02_several_or_invalid_targets_refused(resources: list[str], audiences: list[str]) -> None:
    assert select_audience([API], []) == API
    refused_target(select_audience, resources, audiences)
