"""FED-03: while A's revocation feed is stale, B issues nothing naming A's principals — neither the
crossing session nor later hops in a linked task — with a 503 ``temporarily_unavailable``,
audited; B's own agents are not affected, and the crossing works again once the feed is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fedinkit import WIKI_B, Border, FreshFeeds, StaleFeeds, claims_of, mark, refused, two_domains

from helpers import Client, create_task
from tether.federation.freshness import ClosedFeeds


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("closed")) as pair:
        yield pair


@pytest.fixture
def stale(border: Border) -> Iterator[None]:
    border.feeds(StaleFeeds())
    try:
        yield
    finally:
        border.feeds(FreshFeeds())


def test_fed03_no_crossing_while_the_peer_feed_is_stale(border: Border, stale: None) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    since = mark(border.b)
    response = border.cross(border.at_b(key), foreign)
    record = refused(border.b, response, since=since, status=503, error="temporarily_unavailable",
                     reason="feed of peer `a` is stale", secrets=(foreign,))  # fmt: skip
    assert record.principal == f"fed:a/{claims_of(foreign)['client_id']}"
    assert not [r for r in border.b.audit() if r.seq > since and r.kind in ("federation.linked", "token.issued")]
    # the token was not spent: once the feed is back it crosses
    border.feeds(FreshFeeds())
    assert border.cross(border.at_b(key), foreign).status_code == 200


def test_fed03_no_hop_in_a_linked_task_while_the_peer_feed_is_stale(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    client = border.at_b(key)
    session = border.cross(client, foreign).json()["access_token"]
    assert client.hop(session, WIKI_B).status_code == 200
    border.feeds(StaleFeeds())
    try:
        since = mark(border.b)
        refused(border.b, client.hop(session, WIKI_B, scope="wiki:read"), since=since, status=503,
                error="temporarily_unavailable")  # fmt: skip
        # B's own agents keep working (the local path is untouched)
        local = Client(border.b)
        own = local.session(create_task(border.b, audiences=[WIKI_B])["id"])
        assert own.status_code == 200, own.text
        assert local.hop(own.json()["access_token"], WIKI_B).status_code == 200
    finally:
        border.feeds(FreshFeeds())
    assert client.hop(session, WIKI_B, scope="wiki:read").status_code == 200


def test_fed03_closed_until_a_follower_runs(tmp_path: Path) -> None:
    """Without a follower (the context's default ``ClosedFeeds``), no peer agent gets anything."""
    with two_domains(tmp_path) as pair:
        pair.feeds(ClosedFeeds())
        foreign, key = pair.hop_to_b(pair.a_task()["id"])
        since = mark(pair.b)
        refused(pair.b, pair.cross(pair.at_b(key), foreign), since=since, status=503, error="temporarily_unavailable")
