"""Each detector, pure: a crafted sequence that triggers it and normal ones that do not.

Edges are pinned on both sides: thresholds exactly at and one below, window boundaries,
warm-up and learning periods, per-agent isolation, and one finding per burst.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from monitorkit import AGENT, DOCS, OTHER, SVC_B, T0, WIKI, Log, detector, feed, settings

from tether.audit.chain import GENESIS, AuditEvent, link
from tether.monitor.detectors import build_detectors, path_shape
from tether.monitor.events import Event, as_event, is_after_end, is_replay
from tether.monitor.settings import DEFAULTS, parse_detectors

# -- exchange_rate_spike ---------------------------------------------------------------


def _windows(counts: list[int], *, start: float = T0, window: float = 10, agent: str = AGENT) -> list[Event]:
    """``counts[i]`` issuances spread over the i-th window from ``start`` (a window boundary)."""
    log = Log(start)
    events = []
    for i, count in enumerate(counts):
        for j in range(count):
            events.append(log.issued(agent=agent, at=start + i * window + j * (window / (count + 1))))
    return events


SPIKE = {"window": 10, "factor": 5.0, "min_count": 20, "alpha": 0.5, "warmup": 3}


def test_rate_spike_fires_against_the_agents_own_baseline() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    assert feed(det, _windows([4, 4, 4])) == []
    found = feed(det, _windows([25], start=T0 + 30)[:20])
    assert len(found) == 1
    finding = found[0]
    assert finding.detector == "exchange_rate_spike" and finding.agent == AGENT and finding.severity == "high"
    assert finding.evidence["count"] == 20 and finding.evidence["baseline"] == pytest.approx(4.0)
    assert finding.evidence["seqs"][1] == finding.seq


def test_rate_spike_counts_exactly_at_min_count_and_factor() -> None:
    # baseline 4 → factor 5 needs 20, min_count 20: the 20th fires, the 19th does not
    det = detector("exchange_rate_spike", **SPIKE)
    feed(det, _windows([4, 4, 4]))
    burst = _windows([20], start=T0 + 30)
    assert feed(det, burst[:19]) == []
    assert len(feed(det, burst[19:])) == 1


def test_rate_spike_below_factor_does_not_fire_even_above_min_count() -> None:
    for burst, fires in ((49, False), (50, True)):  # a baseline of 10, factor 5
        det = detector("exchange_rate_spike", **{**SPIKE, "min_count": 5})
        feed(det, _windows([10, 10, 10]))
        assert len(feed(det, _windows([burst], start=T0 + 30))) == fires


def test_rate_spike_below_min_count_does_not_fire_whatever_the_factor() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    feed(det, _windows([1, 1, 1]))
    assert feed(det, _windows([19], start=T0 + 30)) == []  # 19x the baseline, but below min_count


def test_rate_spike_brand_new_agent_is_not_judged_during_warm_up() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    # three huge first windows: they are the agent's baseline, not a spike against nothing
    assert feed(det, _windows([100, 200, 300])) == []
    # after warm-up the baseline is high, so the same intensity is normal
    assert feed(det, _windows([300], start=T0 + 30)) == []


def test_rate_spike_warm_up_counts_active_windows_only() -> None:
    quiet = detector("exchange_rate_spike", **SPIKE)
    feed(quiet, _windows([2, 0, 0, 0, 2]))  # five windows elapsed, two of them active
    assert feed(quiet, _windows([40], start=T0 + 50)) == []  # still warming up
    warm = detector("exchange_rate_spike", **SPIKE)
    feed(warm, _windows([2, 0, 2, 0, 2]))  # five windows elapsed, three active
    assert len(feed(warm, _windows([40], start=T0 + 50))) == 1


def test_rate_spike_idle_windows_do_not_decay_the_baseline() -> None:
    det = detector("exchange_rate_spike", **{**SPIKE, "min_count": 5})
    feed(det, _windows([20, 20, 20]))
    # an hour idle, then the agent's usual burst: not a spike
    assert feed(det, _windows([20], start=T0 + 3600)) == []


def test_rate_spike_fires_once_per_window_and_again_in_the_next() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    feed(det, _windows([2, 2, 2]))
    assert len(feed(det, _windows([60], start=T0 + 30))) == 1
    # the next window: the EMA moved up (alpha 0.5: 0.5*60 + 0.5*2 = 31), 5x is 155
    assert feed(det, _windows([100], start=T0 + 40)) == []
    assert len(feed(det, _windows([400], start=T0 + 50))) == 1


def test_rate_spike_window_boundary_splits_counts() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    feed(det, _windows([2, 2, 2]))
    log = Log()
    # 15 at the end of one window and 15 at the start of the next: never 20 in one window
    events = [log.issued(at=T0 + 39.5) for _ in range(15)] + [log.issued(at=T0 + 40.0) for _ in range(15)]
    assert feed(det, events) == []


def test_rate_spike_agents_are_isolated() -> None:
    det = detector("exchange_rate_spike", **SPIKE)
    feed(det, _windows([2, 2, 2], agent=AGENT))
    # another agent bursting does not count towards AGENT, and is itself still warming up
    assert feed(det, _windows([60], start=T0 + 30, agent=OTHER)) == []
    assert feed(det, _windows([3], start=T0 + 30, agent=AGENT)) == []


def test_rate_spike_ignores_refusals_and_other_kinds() -> None:
    det = detector("exchange_rate_spike", **{**SPIKE, "warmup": 0, "min_count": 1})
    log = Log()
    assert feed(det, [log.refused(), log.record("task.created"), log.call()]) == []


# -- new_audience ------------------------------------------------------------------------


def test_new_audience_after_learning_fires_once() -> None:
    det = detector("new_audience", learn=5)
    log = Log()
    assert feed(det, [log.issued(WIKI) for _ in range(5)]) == []
    found = feed(det, [log.issued(DOCS), log.issued(DOCS), log.issued(DOCS)])
    assert len(found) == 1
    assert found[0].evidence["audience"] == DOCS and found[0].evidence["known"] == [WIKI]
    assert found[0].severity == "medium" and "first token for audience" in found[0].reason


def test_new_audience_is_silent_while_learning() -> None:
    det = detector("new_audience", learn=5)
    log = Log()
    # four tokens learnt, so the fifth (a new audience) is still part of the history
    events = [log.issued(WIKI) for _ in range(4)] + [log.issued(DOCS)]
    assert feed(det, events) == []
    assert feed(det, [log.issued(DOCS), log.issued(WIKI)]) == []


def test_new_audience_exactly_at_learn() -> None:
    det = detector("new_audience", learn=3)
    log = Log()
    feed(det, [log.issued(WIKI) for _ in range(3)])
    assert len(feed(det, [log.issued(DOCS)])) == 1


def test_new_audience_is_per_agent() -> None:
    det = detector("new_audience", learn=2)
    log = Log()
    feed(det, [log.issued(WIKI, agent=AGENT), log.issued(WIKI, agent=AGENT)])
    # OTHER has no history: its first audience is not news
    assert feed(det, [log.issued(DOCS, agent=OTHER)]) == []
    assert feed(det, [log.issued(DOCS, agent=AGENT)])[0].agent == AGENT


# -- refusal_burst -----------------------------------------------------------------------


def test_refusal_burst_fires_at_threshold_within_window() -> None:
    det = detector("refusal_burst", window=30, threshold=5)
    log = Log()
    errors = ["access_denied", "invalid_scope", "invalid_target", "invalid_dpop_proof"]
    assert feed(det, [log.refused(e, at=T0 + i) for i, e in enumerate(errors)]) == []
    found = feed(det, [log.refused("invalid_grant", at=T0 + 29)])
    assert len(found) == 1
    finding = found[0]
    assert finding.evidence["count"] == 5 and len(finding.evidence["seqs"]) == 5
    assert finding.evidence["errors"] == sorted([*errors, "invalid_grant"]) and finding.task == "t1"


def test_refusal_burst_window_is_half_open() -> None:
    det = detector("refusal_burst", window=30, threshold=5)
    log = Log()
    # the first refusal is exactly `window` seconds before the fifth: not within the window
    events = [log.refused(at=T0)] + [log.refused(at=T0 + 10 + i) for i in range(3)] + [log.refused(at=T0 + 30)]
    assert feed(det, events) == []
    assert len(feed(det, [log.refused(at=T0 + 30.5)])) == 1  # now five within (0.5, 30.5]


def test_refusal_burst_spread_out_refusals_do_not_fire() -> None:
    det = detector("refusal_burst", window=30, threshold=5)
    log = Log()
    assert feed(det, [log.refused(at=T0 + 10 * i) for i in range(50)]) == []


def test_refusal_burst_ignores_refusals_marked_blameless() -> None:
    """An MCP gateway refusal of a tool its upstream changed (or of an unpinned route) is the
    upstream's or the operator's doing: the gateway marks it blameless and the burst skips it."""
    det = detector("refusal_burst", window=30, threshold=2)
    log = Log()
    drifted = [log.record("mcp.refused", outcome="refused", error="access_denied", drift=True, blameless=True)
               for _ in range(5)]  # fmt: skip
    assert feed(det, drifted) == []
    denied = [log.record("mcp.refused", outcome="refused", error="access_denied") for _ in range(2)]
    assert len(feed(det, denied)) == 1  # the same refusals, not marked: counted


def test_refusal_burst_ignores_requests_that_are_only_malformed() -> None:
    det = detector("refusal_burst", window=30, threshold=2)
    log = Log()
    events = [log.refused("invalid_request", "bad form"), log.refused("too_many_requests"),
              log.refused("temporarily_unavailable"), log.record("policy.refused", outcome="refused",
                                                                 error="access_denied")]  # fmt: skip
    assert feed(det, events) == []


def test_refusal_burst_counts_gateway_refusals_by_agent() -> None:
    det = detector("refusal_burst", window=30, threshold=3)
    log = Log()
    events = [log.refused("access_denied", kind="gateway.refused", route="crm") for _ in range(3)]
    assert feed(det, events)[0].agent == AGENT


def test_refusal_burst_is_per_agent() -> None:
    det = detector("refusal_burst", window=30, threshold=3)
    log = Log()
    events = [log.refused(principal=p) for p in (AGENT, OTHER, AGENT, OTHER)]
    assert feed(det, events) == []
    assert feed(det, [log.refused(principal=OTHER)])[0].agent == OTHER


def test_refusal_burst_is_one_finding_per_burst() -> None:
    det = detector("refusal_burst", window=30, threshold=5)
    log = Log()
    found = feed(det, [log.refused(at=T0 + i * 0.1) for i in range(200)])
    assert len(found) == 1
    # a burst still going on a window later is reported again
    assert len(feed(det, [log.refused(at=T0 + 31 + i * 0.1) for i in range(10)])) == 1


def test_refusal_burst_refusal_without_principal_is_skipped() -> None:
    det = detector("refusal_burst", window=30, threshold=1)
    assert feed(det, [Log().refused(principal=None)]) == []


@pytest.mark.parametrize("marks", [{"replay": True}, {"spent": True}, {"claimed_task": "t1"}, {"claimed_principal": AGENT}])
def test_DPOP_14_refusal_burst_counts_only_proven_refusals(marks: dict[str, Any]) -> None:
    # a replayed proof, or a refusal naming only what a credential claims, proves nobody acted
    det = detector("refusal_burst", window=30, threshold=2)
    log = Log()
    assert feed(det, [log.refused("invalid_dpop_proof", **marks) for _ in range(5)]) == []
    assert len(feed(det, [log.refused("invalid_dpop_proof") for _ in range(2)])) == 1  # the same, proven


# -- dpop_replay --------------------------------------------------------------------------


def test_DPOP_12_replay_detected_by_the_audit_marker_and_never_proven() -> None:
    det = detector("dpop_replay")
    log = Log()
    (found,) = feed(det, [log.refused("invalid_dpop_proof", "some reason", replay=True)])
    assert found.severity == "high" and found.task == "t1" and found.subject == "t1"
    # whoever sent it may have captured it: the principal on the record is a claim, not an agent
    assert not found.proven and found.agent is None
    assert (found.evidence["claimed_task"], found.evidence["claimed_principal"]) == ("t1", AGENT)


def test_DPOP_12_unattributed_replay_is_counted_by_the_task_the_token_names() -> None:
    det = detector("dpop_replay")
    event = Log().refused("invalid_dpop_proof", replay=True, principal=None, task=None, claimed_task="t9",
                          claimed_principal=AGENT)  # fmt: skip
    (found,) = feed(det, [event])
    assert (found.task, found.subject, found.agent, found.proven) == ("t9", "t9", None, False)
    assert found.evidence["claimed_principal"] == AGENT
    # naming nothing, a replay is pinned on nothing
    assert feed(det, [Log().refused("invalid_dpop_proof", replay=True, principal=None, task=None)]) == []


def test_DPOP_12_replay_detected_from_a_gateway_refusal_with_the_marker() -> None:
    det = detector("dpop_replay")
    event = Log().refused("invalid_dpop_proof", "replayed jti for jkt abc", kind="gateway.refused", replay=True)
    assert is_replay(event) and len(feed(det, [event])) == 1


@pytest.mark.parametrize("reason", ["replayed jti for jkt abc", "htm mismatch: proof has already been used",
                                    "typ 'replayed jti' is not dpop+jwt"])  # fmt: skip
def test_DPOP_12_reason_text_alone_is_not_a_replay(reason: str) -> None:
    # the reason can echo values the caller chose (a proof's htm, a token's typ): only the
    # marker set by the replay check itself counts, or anyone could get a task suspended
    event = Log().refused("invalid_dpop_proof", reason)
    assert not is_replay(event) and feed(detector("dpop_replay"), [event]) == []


def test_DPOP_12_other_proof_errors_are_not_replays() -> None:
    det = detector("dpop_replay")
    log = Log()
    events = [log.refused("invalid_dpop_proof", "htu mismatch"), log.refused("invalid_dpop_proof", "iat too old"),
              log.refused("invalid_grant", "replayed jti", replay=True)]  # fmt: skip
    assert feed(det, events) == []


def test_dpop_replay_threshold() -> None:
    det = detector("dpop_replay", threshold=2)
    log = Log()
    assert feed(det, [log.refused("invalid_dpop_proof", replay=True)]) == []
    assert len(feed(det, [log.refused("invalid_dpop_proof", replay=True)])) == 1
    # replays against another task start from zero, whoever the records name
    assert feed(det, [log.refused("invalid_dpop_proof", replay=True, task="t2")]) == []
    assert len(feed(det, [log.refused("invalid_dpop_proof", replay=True, principal=None, task=None,
                                      claimed_task="t2")])) == 1  # fmt: skip


# -- use_after_end -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("invalid_grant", "task is suspended"),
        ("invalid_grant", "task is completed"),
        ("invalid_grant", "task t-123 is expired"),
        ("invalid_grant", "revoked or unknown parent jti"),
        ("invalid_token", "revoked: jti j1 task t1"),
    ],
)
def test_use_after_end_detected(error: str, reason: str) -> None:
    det = detector("use_after_end")
    event = Log().refused(error, reason, after_end=True)
    assert is_after_end(event)
    (finding,) = feed(det, [event])
    assert finding.subject == "t1" and finding.task == "t1" and finding.severity == "medium"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("invalid_grant", "task is not assigned to this workload"),
        ("invalid_grant", "task token limit reached"),
        ("invalid_grant", "workload token has already been used"),
        ("invalid_token", "access token has expired"),
        ("access_denied", "task is suspended"),  # not a grant/token refusal
    ],
)
def test_use_after_end_other_refusals_are_not_matched(error: str, reason: str) -> None:
    assert feed(detector("use_after_end"), [Log().refused(error, reason)]) == []


@pytest.mark.parametrize("reason", ["task is suspended", "revoked: jti j1 task t1"])
def test_use_after_end_reason_text_alone_is_not_matched(reason: str) -> None:
    # the marker is set by the ended-task / revoked-token checks; text alone can be forged
    assert feed(detector("use_after_end"), [Log().refused("invalid_grant", reason)]) == []


@pytest.mark.parametrize("marks", [{"replay": True}, {"claimed_task": "t1"}, {"principal": None}])
def test_DPOP_14_use_after_end_counts_only_proven_refusals(marks: dict[str, Any]) -> None:
    det = detector("use_after_end")
    assert feed(det, [Log().refused("invalid_grant", "task is suspended", after_end=True, **marks)]) == []
    assert len(feed(det, [Log().refused("invalid_grant", "task is suspended", after_end=True)])) == 1


def test_use_after_end_marker_on_another_error_is_not_matched() -> None:
    assert feed(detector("use_after_end"), [Log().refused("access_denied", "x", after_end=True)]) == []


def test_use_after_end_subject_is_the_task() -> None:
    det = detector("use_after_end", threshold=2)
    log = Log()
    assert feed(det, [log.refused("invalid_grant", "task is suspended", task="a", after_end=True)]) == []
    assert feed(det, [log.refused("invalid_grant", "task is suspended", task="b", after_end=True)]) == []
    assert len(feed(det, [log.refused("invalid_grant", "task is suspended", task="a", after_end=True)])) == 1


# -- gateway_unusual -----------------------------------------------------------------------


def test_gateway_new_path_after_learning() -> None:
    det = detector("gateway_unusual", learn=5)
    log = Log()
    assert feed(det, [log.call(f"/v1/items/{i}") for i in range(5)]) == []
    found = feed(det, [log.call("/v1/admin/users")])
    assert len(found) == 1 and "path `/v1/admin/users`" in found[0].reason
    assert found[0].evidence["route"] == "crm" and found[0].evidence["known_paths"] == ["/v1/items/*"]
    assert feed(det, [log.call("/v1/admin/users")]) == []  # learnt: reported once


def test_gateway_path_shapes_fold_identifiers_and_drop_the_query() -> None:
    assert path_shape("/v1/items/123") == "/v1/items/*"
    assert path_shape("/v1/items/3f2a9c1e-0b4d-4c1e-9a7b-2c8d1e0f4a5b?x=1") == "/v1/items/*"
    assert path_shape("/v2/search") == "/v2/search"  # "v2" is a name, not an id
    assert path_shape("/deadbeef") == "/deadbeef"  # hex letters only: a word


def test_gateway_known_paths_on_another_route_or_agent_are_separate() -> None:
    det = detector("gateway_unusual", learn=3)
    log = Log()
    feed(det, [log.call("/a") for _ in range(3)])
    assert feed(det, [log.call("/b", route="erp")]) == []  # erp has no history yet
    assert feed(det, [log.call("/b", principal=OTHER)]) == []  # nor has OTHER


def test_gateway_new_hour_needs_a_history_spanning_the_span() -> None:
    det = detector("gateway_unusual", learn=3, span=86400)
    start = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC).timestamp()
    log = Log(start)
    # working hours 09-10 for two days; calls at 11 on day one are not judged (history < a day)
    events = [log.call(at=start + h * 1800) for h in range(3)]  # 09:00, 09:30, 10:00
    assert feed(det, events) == []
    assert feed(det, [log.call(at=start + 2 * 3600)]) == []  # 11:00 on day one: span not reached
    day2 = start + 86400
    assert feed(det, [log.call(at=day2), log.call(at=day2 + 3600)]) == []  # known hours 09, 10
    found = feed(det, [log.call(at=day2 + 18 * 3600)])  # 03:00 the next night
    assert len(found) == 1 and "hour 03:00 UTC" in found[0].reason and found[0].evidence["hour"] == 3


def test_gateway_calls_while_learning_are_silent() -> None:
    det = detector("gateway_unusual", learn=10, span=0)
    log = Log()
    assert feed(det, [log.call(f"/p{i}", at=T0 + i * 3600) for i in range(10)]) == []


def test_gateway_refusals_are_not_calls() -> None:
    det = detector("gateway_unusual", learn=0, span=0)
    assert feed(det, [Log().refused(kind="gateway.refused", route="crm", path="/x")]) == []


# -- deep_delegation -----------------------------------------------------------------------


def test_deep_delegation_beyond_norm_plus_margin() -> None:
    det = detector("deep_delegation", learn=4, margin=1)
    log = Log()
    assert feed(det, [log.issued(depth=d % 2) for d in range(4)]) == []  # deepest so far 1
    assert feed(det, [log.issued(depth=2)]) == []  # 1 + margin: within the norm
    found = feed(det, [log.issued(depth=4, principal="spiffe://tether.local/svc/d")])
    assert len(found) == 1 and found[0].agent == AGENT  # the task's agent, not the asking service
    assert found[0].evidence["depth"] == 4 and found[0].evidence["deepest"] == 2
    assert found[0].evidence["actors"] == [SVC_B] * 4


def test_deep_delegation_while_learning_is_silent() -> None:
    det = detector("deep_delegation", learn=4, margin=0)
    log = Log()
    assert feed(det, [log.issued(depth=0), log.issued(depth=3), log.issued(depth=0), log.issued(depth=0)]) == []
    assert feed(det, [log.issued(depth=3)]) == []  # 3 was seen while learning


def test_deep_delegation_is_per_agent() -> None:
    det = detector("deep_delegation", learn=2, margin=0)
    log = Log()
    feed(det, [log.issued(depth=0, agent=AGENT), log.issued(depth=0, agent=AGENT)])
    assert feed(det, [log.issued(depth=2, agent=OTHER)]) == []
    assert len(feed(det, [log.issued(depth=1, agent=AGENT)])) == 1


# -- common --------------------------------------------------------------------------------


def test_detectors_read_chain_records_and_exported_dicts_alike() -> None:
    det = detector("dpop_replay")
    event = AuditEvent(kind="token.refused", outcome="refused", principal=AGENT, task="t1",
                       error="invalid_dpop_proof", detail={"reason": "replayed jti for jkt x", "replay": True})  # fmt: skip
    record = link(event, seq=1, ts=T0, prev=GENESIS)
    assert as_event(record) == as_event(record.as_json())
    assert len(feed(det, [as_event(record)])) == 1


def test_monitor_records_are_ignored_by_every_detector() -> None:
    detectors = build_detectors(parse_detectors({d: {"learn": 0} for d in ("new_audience", "gateway_unusual")}))
    log = Log()
    own = [log.record("alert.raised", outcome="alert", principal="monitor", detector="refusal_burst", agent=AGENT),
           log.record("task.suspended", principal="monitor")]  # fmt: skip
    assert all(d.observe(e) == [] for d in detectors for e in own)


def test_finding_key_is_one_per_subject_and_window() -> None:
    det = detector("dpop_replay")
    log = Log()
    a = feed(det, [log.refused("invalid_dpop_proof", replay=True, at=T0 + 1)])[0]
    b = feed(det, [log.refused("invalid_dpop_proof", replay=True, at=T0 + 2)])[0]
    c = feed(det, [log.refused("invalid_dpop_proof", replay=True, at=T0 + 61)])[0]
    d = feed(det, [log.refused("invalid_dpop_proof", replay=True, task="t2", at=T0 + 2)])[0]
    assert a.key == b.key and len({a.key, c.key, d.key}) == 3


def test_disabled_detectors_are_not_built_and_defaults_cover_all_eleven() -> None:
    names = {d.name for d in build_detectors(parse_detectors({"new_audience": {"enabled": False}}))}
    assert names == set(DEFAULTS) - {"new_audience"} and len(DEFAULTS) == 11
    assert settings("refusal_burst").actions == ("alert", "risk", "suspend")


def test_detector_state_is_bounded_per_agent() -> None:
    det = detector("new_audience", learn=1)
    log = Log()
    for i in range(10_500):
        det.observe(log.issued(agent=f"spiffe://tether.local/agent/{i}"))
    assert len(det.agents) == 10_000  # type: ignore[attr-defined]  # new_audience state, not in the protocol
