"""``tether.gateway.scrub`` and ``tether.gateway.inject`` as pure functions.

The streaming scrubber must catch a secret however the body is cut into chunks (a
hypothesis property against the one-shot replacement); the injection must drop the
agent's credentials, hop-by-hop headers and anything named like the injected header
or parameter, and add exactly one credential.
"""

from __future__ import annotations

import base64
import itertools
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.gateway.inject import Injection, encodings, forward_headers, inject, response_headers, strip_query
from tether.gateway.scrub import REDACTED, Scrubber, scrub_headers

# runs the same whatever TETHER_TEST_STORE says: the PostgreSQL pass of scripts/test leaves it out
pytestmark = pytest.mark.store_independent

SECRET = "sk_live/Q7+zX=legacy9Key!b42"
HEADER = Injection(mode="header", header="X-Api-Key", template="{secret}")
BASIC = Injection(mode="basic", username="svc")
QUERY = Injection(mode="query", query_param="apikey")


def _scrub_stream(body: bytes, cuts: list[int], needles: list[bytes]) -> tuple[bytes, int]:
    scrubber = Scrubber(needles)
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    out = b"".join(scrubber.feed(body[a:b]) for a, b in itertools.pairwise(points)) + scrubber.flush()
    return out, scrubber.hits


@given(
    st.lists(st.sampled_from([b"a", b"xyz ", b"\n", SECRET.encode(), quote_plus(SECRET).encode(),
                              base64.b64encode(SECRET.encode()), SECRET.encode()[:7], b"sk_"]), max_size=20),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)  # fmt: skip
def test_no_chunking_of_the_body_lets_a_secret_through(parts: list[bytes], cuts: list[int]) -> None:
    needles = encodings(SECRET, HEADER)
    out, hits = _scrub_stream(b"".join(parts), cuts, needles)
    for needle in needles:
        assert needle not in out
    assert hits >= sum(1 for p in parts if p in needles)


@given(
    st.lists(st.sampled_from([b"a", b"xyz ", b"\n", SECRET.encode(), SECRET.encode()[:7], b"sk_"]), max_size=20),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_streamed_scrubbing_of_one_needle_equals_whole_body_scrubbing(parts: list[bytes], cuts: list[int]) -> None:
    body = b"".join(parts)
    out, hits = _scrub_stream(body, cuts, [SECRET.encode()])
    assert out == body.replace(SECRET.encode(), REDACTED)
    assert hits == body.count(SECRET.encode())


def test_scrubber_refuses_a_secret_inside_the_marker() -> None:
    with pytest.raises(ValueError):
        Scrubber([b"REDACT"])
    assert Scrubber([b"sk_live"]).flush() == b""  # positive control


def test_encodings_cover_raw_url_and_base64_and_the_injected_forms() -> None:
    forms = set(encodings(SECRET, BASIC))
    assert SECRET.encode() in forms
    assert quote_plus(SECRET).encode() in forms
    assert base64.b64encode(SECRET.encode()) in forms
    assert base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=") in forms
    assert base64.b64encode(f"svc:{SECRET}".encode()) in forms


def test_scrub_headers() -> None:
    cleaned, hits = scrub_headers([("Location", f"https://x/?k={quote_plus(SECRET)}"), ("X-Other", "fine")],
                                  encodings(SECRET, QUERY))  # fmt: skip
    assert cleaned == [("Location", "https://x/?k=[REDACTED]"), ("X-Other", "fine")] and hits == 1


def test_forward_headers_drop_agent_credentials_and_hop_by_hop() -> None:
    agent = [("Authorization", "DPoP tok"), ("DPoP", "proof"), ("Cookie", "c=1"), ("Host", "gw"), ("X-Api-Key", "forged"),
             ("Connection", "close, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Proxy-Authorization", "x"),
             ("Proxy-Foo", "y"), ("Transfer-Encoding", "chunked"), ("Content-Length", "3"), ("Accept", "a/b")]  # fmt: skip
    assert forward_headers(agent, HEADER) == [("Accept", "a/b")]
    legacy = Injection(mode="header", header="X-Legacy", template="T {secret}")
    assert forward_headers([("x-legacy", "forged"), ("X-Keep", "1")], legacy) == [("X-Keep", "1")]


@pytest.mark.parametrize("name", ["Forwarded", "X-Forwarded-For", "x-forwarded-host", "X-Forwarded-Proto",
                                  "X-Real-IP", "True-Client-IP", "X-Client-IP"])  # fmt: skip
def test_forward_headers_drop_a_claimed_client_origin(name: str) -> None:
    # an upstream that allowlists addresses would otherwise believe the agent's claim
    assert forward_headers([(name, "10.0.0.1"), ("Accept", "a/b")], HEADER) == [("Accept", "a/b")]


def test_inject_adds_exactly_one_credential() -> None:
    headers, qs = inject(HEADER, SECRET, [("Accept", "a/b")], [("q", "1")])
    assert headers == [("Accept", "a/b"), ("X-Api-Key", SECRET)] and qs == "q=1"
    headers, qs = inject(BASIC, SECRET, [], [])
    assert headers == [("Authorization", "Basic " + base64.b64encode(f"svc:{SECRET}".encode()).decode())] and qs == ""
    headers, qs = inject(QUERY, SECRET, [], strip_query("q=1&apikey=forged&apikey=again", QUERY))
    assert headers == [] and qs == f"q=1&apikey={quote_plus(SECRET)}"


def test_response_headers_drop_hop_by_hop_length_and_cookies() -> None:
    upstream = [("Content-Length", "10"), ("Set-Cookie", "s=1"), ("Connection", "X-Hop"), ("X-Hop", "1"),
                ("Content-Type", "text/plain")]  # fmt: skip
    assert response_headers(upstream) == [("Content-Type", "text/plain")]
