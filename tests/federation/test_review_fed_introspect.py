"""Review of the border (rvfed): FED-03 at introspection. While A's revocation feed is stale, B
cannot know whether A ended the task its linked tokens came from, so B's ``/introspect`` (RFC 7662
§2.2) answers ``{"active": false}`` for every token naming A's principals — a resource server that
asks must not be told "active" about what B could no longer revoke in time. B's own tokens stay
active, and A's are active again once the feed is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fedinkit import WIKI_B, Border, FreshFeeds, StaleFeeds, two_domains

from helpers import Client, create_task


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("introspect")) as pair:
        yield pair


def _introspect(border: Border, token: str) -> dict[str, Any]:
    with httpx.Client(trust_env=False) as http:
        response = http.post(border.b.url + "/introspect", data=border.b.client_auth(token=token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_fed03_a_linked_token_is_inactive_at_introspection_while_the_feed_is_stale(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    client = border.at_b(key)
    session = border.cross(client, foreign).json()["access_token"]
    hop = client.hop(session, WIKI_B).json()["access_token"]
    local = Client(border.b)
    own_session = local.session(create_task(border.b, audiences=[WIKI_B])["id"]).json()["access_token"]
    own = local.hop(own_session, WIKI_B).json()["access_token"]
    assert _introspect(border, hop)["active"] is True
    border.feeds(StaleFeeds())
    try:
        assert _introspect(border, hop) == {"active": False}
        assert _introspect(border, session) == {"active": False}
        assert _introspect(border, own)["active"] is True  # B's own agents are not affected
    finally:
        border.feeds(FreshFeeds())
    assert _introspect(border, hop)["active"] is True
