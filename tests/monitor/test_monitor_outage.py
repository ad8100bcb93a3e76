"""exchange_rate_spike across a known store outage (``tether.monitor.outages``), pure.

After an outage the agents' deferred work arrives at once; the windows the outage cut short
and those starting within ``recovery`` seconds after it are neither judged nor averaged.
Each hold is pinned against a positive control on the same records without the outage, and
a rate that stays high past the recovery is still an alert against the pre-outage baseline.
"""

from __future__ import annotations

from typing import Any

import pytest
from monitorkit import AGENT, OTHER, T0, Log, detector, feed

from tether.monitor.detectors import build_detectors
from tether.monitor.events import Event, as_event
from tether.monitor.outages import OUTAGE_KIND, Outages, outage_event
from tether.monitor.sample import sample_config
from tether.monitor.settings import DEFAULTS, parse_detectors

W = 10.0
SPIKE: dict[str, Any] = {"window": W, "factor": 5.0, "min_count": 20, "alpha": 0.5, "warmup": 3, "recovery": 30}
#: the outage of the issue: 30 s with the store down, from the end of the baseline
DOWN, UP = T0 + 40, T0 + 70


def windows(counts: list[int], *, start: float, agent: str = AGENT, log: Log | None = None) -> list[Event]:
    """``counts[i]`` issuances spread inside the i-th window from ``start`` (a window boundary)."""
    log = log or Log(start)
    return [
        log.issued(agent=agent, at=start + i * W + (j + 1) * (W / (count + 1)))
        for i, count in enumerate(counts)
        for j in range(count)
    ]


def baseline(det: Any, *, agent: str = AGENT, per_window: int = 4) -> None:
    """Four active windows of ``per_window`` from T0: warmed up, baseline ``per_window``."""
    assert feed(det, windows([per_window] * 4, start=T0, agent=agent)) == []


def spike(**overrides: Any) -> Any:
    return detector("exchange_rate_spike", **{**SPIKE, **overrides})


def test_catch_up_after_an_outage_is_not_an_alert_and_without_the_outage_it_is() -> None:
    catch_up = windows([60], start=UP)  # 15 x the baseline, in the window the store came back in
    held = spike()
    baseline(held)
    held.observe(outage_event(since=DOWN, until=UP))
    assert feed(held, catch_up) == []
    control = spike()
    baseline(control)
    found = feed(control, catch_up)
    assert len(found) == 1 and found[0].evidence["baseline"] == pytest.approx(4.0)


def test_a_spike_that_persists_past_the_recovery_is_judged_against_the_baseline_before_the_outage() -> None:
    det = spike()
    baseline(det)
    det.observe(outage_event(since=DOWN, until=UP))
    # the recovery ends at UP + 30: windows starting at 70, 80, 90 are held, the one at 100 is judged
    assert feed(det, windows([60, 60, 60], start=UP)) == []
    found = feed(det, windows([60], start=UP + 30))
    assert len(found) == 1
    assert found[0].evidence["baseline"] == pytest.approx(4.0)  # the held windows did not raise it
    assert found[0].evidence["windows_seen"] == 4


def test_the_recovery_boundary_is_pinned_on_both_sides() -> None:
    # recovery 25 s after UP = T0 + 70 ends at T0 + 95: the window at 90 starts inside it (held), 100 does not
    for start, fires in ((UP + 20, False), (UP + 30, True)):
        det = spike(recovery=25)
        baseline(det)
        det.observe(outage_event(since=DOWN, until=UP))
        assert len(feed(det, windows([60], start=start))) == fires, start


def test_the_window_an_outage_cut_short_does_not_lower_the_baseline() -> None:
    det = spike()
    baseline(det)  # four windows of 4: baseline 4
    log = Log(T0 + 40)
    truncated = [log.issued(agent=AGENT, at=T0 + 40.5)]  # the store failed 1 s into the next window
    det.observe(outage_event(since=T0 + 41, until=T0 + 71))
    assert feed(det, truncated) == []
    found = feed(det, windows([20], start=T0 + 110, log=log))  # past the recovery (T0 + 101)
    assert len(found) == 1
    assert found[0].evidence["baseline"] == pytest.approx(4.0)  # a window of 1 would have made it 2.5
    control = spike()
    baseline(control)
    feed(control, windows([1], start=T0 + 40))
    found = feed(control, windows([20], start=T0 + 110))
    assert len(found) == 1 and found[0].evidence["baseline"] == pytest.approx(2.5)


def test_records_read_after_the_outage_event_are_placed_by_their_time() -> None:
    # the monitor can learn of the outage before it reads the last records written before it:
    # those land in a window that ended before the outage and are averaged as usual
    det = spike()
    det.observe(outage_event(since=T0 + 45, until=T0 + 75))
    baseline(det)  # windows 0..40 all end before T0 + 45 except [40, 50): it has no records here
    found = feed(det, windows([20], start=T0 + 110))
    assert len(found) == 1 and found[0].evidence["baseline"] == pytest.approx(4.0)


def test_an_outage_holds_every_agent() -> None:
    det = spike()
    baseline(det, agent=AGENT)
    baseline(det, agent=OTHER)
    det.observe(outage_event(since=DOWN, until=UP))
    assert feed(det, windows([60], start=UP, agent=AGENT) + windows([60], start=UP, agent=OTHER)) == []


def test_an_outage_long_ago_holds_nothing_now() -> None:
    det = spike()
    det.observe(outage_event(since=T0 - 3600, until=T0 - 3000))
    baseline(det)
    assert len(feed(det, windows([60], start=T0 + 40))) == 1


def test_recovery_zero_holds_only_the_windows_the_outage_overlapped() -> None:
    det = spike(recovery=0)
    baseline(det)
    det.observe(outage_event(since=DOWN, until=UP))  # [40, 70): windows at 40, 50, 60
    log = Log(UP - 1)  # issued as the store came back, in the last window the outage overlapped
    assert feed(det, [log.issued(agent=AGENT, at=UP - 0.9 + i * 0.01) for i in range(60)]) == []
    assert len(feed(det, windows([60], start=UP))) == 1


def test_a_chain_record_of_the_outage_kind_is_not_an_outage() -> None:
    # only the monitor's own event (seq 0, never in the chain) holds the detector: whoever can
    # get a record of that kind into the log cannot blind it
    det = spike()
    baseline(det)
    forged = Log(UP).record(OUTAGE_KIND, outcome="outage", principal=None, since=DOWN, until=UP)
    assert forged.seq > 0
    det.observe(forged)
    assert len(feed(det, windows([60], start=UP))) == 1


@pytest.mark.parametrize("detail", [{"since": UP, "until": DOWN}, {"since": "x", "until": UP}, {}])
def test_a_malformed_outage_event_holds_nothing(detail: dict[str, Any]) -> None:
    det = spike()
    baseline(det)
    det.observe(as_event({"seq": 0, "ts": UP, "kind": OUTAGE_KIND, "outcome": "outage", "detail": detail}))
    assert len(feed(det, windows([60], start=UP))) == 1


def test_outages_remember_a_bounded_number() -> None:
    outages = Outages(recovery=0)
    for i in range(100):
        assert outages.observe(outage_event(since=i * 100.0, until=i * 100.0 + 10))
    assert len(outages.spans) == 16
    assert outages.touches(9_900, 9_905) and not outages.touches(0, 5)
    assert not outages.observe(Log().issued())


def test_every_other_detector_ignores_the_outage_event() -> None:
    dets = build_detectors(parse_detectors({}))
    assert [d.name for d in dets] == list(DEFAULTS)
    for det in dets:
        assert det.observe(outage_event(since=DOWN, until=UP)) == []
    # and they still work after it: a refusal burst right after the outage is an alert
    (burst,) = [d for d in dets if d.name == "refusal_burst"]
    log = Log(UP)
    assert len(feed(burst, [log.refused(at=UP + i) for i in range(5)])) == 1


def test_recovery_is_a_setting_with_a_default_shown_in_the_sample_config() -> None:
    (chosen,) = [s for s in parse_detectors({"exchange_rate_spike": {"recovery": 5}}) if s.name == "exchange_rate_spike"]
    assert chosen.param("recovery") == 5.0
    assert DEFAULTS["exchange_rate_spike"][2]["recovery"] == 30
    assert "# recovery = 30" in sample_config()


# -- only a real outage holds: one during which the store issued nothing -------------------------


def _spike_with_blips(blip_every: float, blip: float) -> list[Any]:
    """A 50x spike for ten minutes while the monitor sees a ``blip``-second "outage" every
    ``blip_every`` seconds (its ping timing out on a pool the flood keeps busy). As in the
    runner, each outage event is fed when the store answers again, before the records
    written meanwhile are read."""
    det = spike()
    baseline(det)
    found: list[Any] = []
    next_blip = DOWN
    for event in windows([200] * 60, start=DOWN):
        if blip_every and event.ts >= next_blip:
            det.observe(outage_event(since=next_blip, until=next_blip + blip))
            next_blip += blip_every
        found += det.observe(event)
    return found


@pytest.mark.parametrize("blip", [1.0, 5.0, 20.0])
def test_MON_outage_hold_outages_during_which_tokens_were_issued_hide_no_spike(blip: float) -> None:
    assert len(_spike_with_blips(0, blip)) >= 1  # control: the spike alerts without blips
    assert len(_spike_with_blips(25, blip)) >= 1  # the store served the flood inside every "outage"


def test_a_blip_no_longer_than_two_edges_holds_nothing_and_a_longer_silent_one_does() -> None:
    catch_up = windows([60], start=UP)
    for since, held in ((UP - 2.0, False), (UP - 2.5, True)):
        det = spike()
        baseline(det)
        det.observe(outage_event(since=since, until=UP))
        assert (feed(det, catch_up) == []) is held, since


def test_an_issuance_inside_an_outage_proves_it_was_no_outage_and_one_at_its_edges_does_not() -> None:
    for at, held in ((DOWN + 15, False), (DOWN + 0.5, True), (UP - 0.5, True)):
        det = spike()
        baseline(det)
        det.observe(outage_event(since=DOWN, until=UP))
        inside = Log(at).issued(agent=OTHER, at=at)
        assert det.observe(inside) == []
        assert (feed(det, windows([60], start=UP)) == []) is held, at


def test_another_replicas_first_catch_up_is_no_proof_against_the_outage_the_monitor_saw() -> None:
    # the monitor's ``since``/``until`` are its last and first good polls; the store failed for it
    # from DOWN + 0.8 to UP - 0.7. Another replica healed first and served its catch-up from
    # UP - 1.5: that is the recovery, not service during the outage (review finding)
    for at, held in ((UP - 1.5, True), (UP - 10, False)):
        det = spike()
        baseline(det)
        det.observe(outage_event(since=DOWN, until=UP, failed=(DOWN + 0.8, UP - 0.7)))
        early = [Log(at).issued(agent=OTHER, at=at + i * 0.01) for i in range(5)]
        assert feed(det, early) == []
        assert (feed(det, windows([60], start=UP)) == []) is held, at
