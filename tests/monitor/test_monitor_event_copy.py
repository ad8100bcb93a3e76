"""``as_event`` copies a stored record into the detectors' ``Event`` without the dataclass
``__init__``: the copy must be the record, field for field, and stay complete if a field is added."""

from __future__ import annotations

import dataclasses

from tether.audit.chain import GENESIS, AuditEvent, AuditRecord, link
from tether.monitor.events import Event, as_event


def _record() -> AuditRecord:
    event = AuditEvent(kind="token.issued", outcome="ok", principal="spiffe://d/agent", task="t1", jti="j1",
                       detail={"agent": "spiffe://d/agent", "aud": "https://b", "depth": 2})  # fmt: skip
    return link(event, seq=7, ts=1700000000.25, prev=GENESIS)


def test_event_has_no_field_of_its_own() -> None:
    # the copy in ``as_event`` is only complete while this holds
    assert [f.name for f in dataclasses.fields(Event)] == [f.name for f in dataclasses.fields(_record())]


def test_copy_equals_the_record_field_for_field() -> None:
    record = _record()
    event = as_event(record)
    assert type(event) is Event
    for f in dataclasses.fields(Event):
        assert getattr(event, f.name) == getattr(record, f.name), f.name
    assert event.text("agent") == "spiffe://d/agent"
    assert event.number("depth") == 2


def test_copy_is_frozen_and_does_not_alias_the_record() -> None:
    record = _record()
    event = as_event(record)
    try:
        event.kind = "changed"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("an Event must stay frozen")
    assert event.__dict__ is not record.__dict__
    assert as_event(event) is event
