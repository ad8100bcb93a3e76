"""Review of the border (rvfed): a foreign token of a task A has ended opens nothing at B (FED-03).

A's hop token for B outlives the moment A ends its task (its ``exp`` and ``tsk.exp`` are A's
task's hard cap, not its end). A thief of that token and its key — or the agent itself — could
present it at B after A's feed said the task ended: the follower has nothing to cancel yet (no
linked task existed), or cancels the old one and the crossing opens a new one. B must ask what
the follower heard (``PeerFeeds.revoked``) before it links: ``invalid_grant``, marked after-end,
audited against the agent, nothing linked and nothing spent. ``RevokedFeeds`` stands in for the
follower of A's feed (tests/federation/fedinkit.py's seam), as ``FreshFeeds`` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fedinkit import Border, FreshFeeds, claims_of, mark, refused, two_domains


class RevokedFeeds(FreshFeeds):
    """A fresh follower that heard these foreign tasks end and these foreign tokens revoked."""

    def __init__(self, tasks: set[str], jtis: set[str]) -> None:
        self.tasks, self.jtis = tasks, jtis

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        return peer == "a" and (task in self.tasks or jti in self.jtis)


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("ended")) as pair:
        yield pair


@pytest.mark.parametrize("what", ["task", "jti"])
def test_fed03_a_token_of_an_ended_foreign_task_or_a_revoked_one_opens_nothing(border: Border, what: str) -> None:
    task = border.a_task()
    first, first_key = border.hop_to_b(task["id"])
    assert border.cross(border.at_b(first_key), first).status_code == 200  # a linked task is open
    foreign, key = border.hop_to_b(task["id"])  # a second token of the same task, not yet used
    claims = claims_of(foreign)
    border.feeds(RevokedFeeds({claims["txn"]} if what == "task" else set(), {claims["jti"]} if what == "jti" else set()))
    try:
        since = mark(border.b)
        record = refused(border.b, border.cross(border.at_b(key), foreign), since=since, status=400,
                         error="invalid_grant", reason="revoked by the peer", secrets=(foreign,))  # fmt: skip
        assert record.detail.get("after_end") is True, record.detail
        assert record.principal == f"fed:a/{claims['client_id']}"
        assert not [r for r in border.b.audit() if r.seq > since and r.kind in ("federation.linked", "token.issued")]
    finally:
        border.feeds(FreshFeeds())
    # another task of A is not affected
    other, other_key = border.hop_to_b(border.a_task()["id"])
    assert border.cross(border.at_b(other_key), other).status_code == 200


class EndsWhileLinking(FreshFeeds):
    """The follower hears the foreign task end between the border's first check and the linking:
    the first ``revoked`` question is answered no, every later one yes."""

    def __init__(self) -> None:
        self.asked = 0

    def revoked(self, peer: str, *, task: str | None, jti: str | None, now: float) -> bool:
        self.asked += 1
        return self.asked > 1


def test_fed03_a_foreign_task_ending_while_it_is_linked_leaves_no_active_linked_task(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    feeds = EndsWhileLinking()
    border.feeds(feeds)
    try:
        since = mark(border.b)
        refused(border.b, border.cross(border.at_b(key), foreign), since=since, status=400, error="invalid_grant",
                reason="ended while linking", secrets=(foreign,))  # fmt: skip
    finally:
        border.feeds(FreshFeeds())
    records = [r for r in border.b.audit() if r.seq > since]
    linked = [r for r in records if r.kind == "federation.linked"]
    assert len(linked) == 1 and feeds.asked == 2
    cancelled = [r for r in records if r.kind == "task.cancelled" and r.task == linked[0].task]
    assert cancelled and cancelled[0].principal == "federation:a", [(r.kind, r.task) for r in records]
    assert not [r for r in records if r.kind == "token.issued"]
