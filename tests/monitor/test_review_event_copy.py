"""Review (issue 20): ``as_event`` builds the ``Event`` without the dataclass ``__init__``; the copy
must be indistinguishable from the one ``__init__`` built — equal, same repr and reads — for any
record a store hands back, including one a database writer filled with odd values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tether.audit.chain import AuditRecord
from tether.monitor.events import Event, as_event


def _reads(detail: dict[str, Any]) -> tuple[str, str | None, int | None]:
    reason, agent, depth = detail.get("reason"), detail.get("agent"), detail.get("depth")
    return (
        reason if isinstance(reason, str) else "",
        agent if isinstance(agent, str) and agent else None,
        depth if isinstance(depth, int) and not isinstance(depth, bool) else None,
    )


def _by_init(record: AuditRecord) -> Event:
    return Event(**{f.name: getattr(record, f.name) for f in dataclasses.fields(AuditRecord)})


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"reason": "r", "agent": "spiffe://d/a", "depth": 3},
        {"reason": 7, "agent": "", "depth": True, "replay": "yes"},  # wrong types: the typed reads refuse them
        {"nested": {"a": [1, 2]}, "\u00e9": "\ud800"},
    ],
)
def test_review_copy_is_the_record_init_would_build(detail: dict[str, Any]) -> None:
    record = AuditRecord(seq=3, ts=1.5, kind="token.refused", outcome="refused", principal=None, task="t", jti=None,
                         error="invalid_grant", detail=detail, prev="0" * 64, hash="f" * 64, detail_json="{}")  # fmt: skip
    copied, built = as_event(record), _by_init(record)
    assert copied == built and repr(copied) == repr(built)
    assert copied.__dict__ == built.__dict__
    for event in (copied, built):
        assert (event.reason, event.text("agent"), event.number("depth")) == _reads(detail)
    assert copied != record  # still another class than the stored record, as before
