"""The store's circuit breaker as a pure state machine (``tether.store.circuit``), on a hand-moved clock.

Every transition from every state, the probe schedule (doubling, capped), one probe at a time,
and the threshold: closed → open only on connectivity failures reported while closed.
"""

from __future__ import annotations

import itertools
import math

import pytest

from tether.store.circuit import Circuit, CircuitState


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(**settings: float) -> tuple[Circuit, Clock]:
    clock = Clock()
    return Circuit(clock=clock, **settings), clock  # type: ignore[arg-type]


def test_a_new_circuit_is_closed_and_allows() -> None:
    circuit, _ = make()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.allows()
    assert circuit.probe_in() == math.inf
    assert not circuit.start_probe(), "nothing to probe while closed"
    assert circuit.open_for() == 0.0


def test_the_first_failure_opens_it_and_refuses() -> None:
    circuit, clock = make()
    assert circuit.failed() is True
    assert circuit.state is CircuitState.OPEN
    assert not circuit.allows()
    assert circuit.openings == 1
    clock.advance(0.02)
    assert circuit.open_for() == pytest.approx(0.02)


def test_a_threshold_counts_consecutive_failures_and_a_success_resets_the_count() -> None:
    circuit, _ = make(threshold=3)
    assert circuit.failed() is False
    assert circuit.failed() is False
    circuit.succeeded()  # the database answered in between: not consecutive
    assert circuit.failed() is False
    assert circuit.failed() is False
    assert circuit.allows()
    assert circuit.failed() is True
    assert circuit.state is CircuitState.OPEN


def test_successes_while_closed_never_open_it() -> None:
    circuit, _ = make()
    for _ in range(100):
        circuit.succeeded()
    assert circuit.state is CircuitState.CLOSED


def test_reports_while_open_change_nothing() -> None:
    """Operations that started before it opened finish later: neither outcome moves the circuit."""
    circuit, _ = make()
    circuit.failed()
    before = circuit.probe_in()
    assert circuit.failed() is False
    circuit.succeeded()
    assert circuit.state is CircuitState.OPEN
    assert circuit.probe_in() == before
    assert circuit.openings == 1


def test_the_first_probe_waits_first_delay() -> None:
    circuit, clock = make(first_delay=0.05)
    circuit.failed()
    assert circuit.probe_in() == pytest.approx(0.05)
    assert not circuit.start_probe(), "not due yet"
    assert circuit.state.value == "open"
    clock.advance(0.05)
    assert circuit.probe_in() == 0.0
    assert circuit.start_probe()
    assert circuit.state is CircuitState.HALF_OPEN


def test_one_probe_at_a_time_and_no_operations_while_half_open() -> None:
    circuit, clock = make()
    circuit.failed()
    clock.advance(10)
    assert circuit.start_probe()
    assert not circuit.start_probe(), "a second prober must not start while one runs"
    assert not circuit.allows()
    assert circuit.probe_in() == math.inf
    assert circuit.failed() is False  # an operation reporting while half-open changes nothing
    assert circuit.state is CircuitState.HALF_OPEN


def test_a_successful_probe_closes_it_and_reports_how_long_it_was_open() -> None:
    circuit, clock = make()
    circuit.failed()
    clock.advance(3.0)
    assert circuit.start_probe()
    assert circuit.probe_succeeded() == pytest.approx(3.0)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.allows()
    assert circuit.open_for() == 0.0


def test_failed_probes_double_the_delay_up_to_the_cap() -> None:
    circuit, clock = make(first_delay=0.05, max_delay=1.0, factor=2.0)
    circuit.failed()
    delays = []
    for _ in range(8):
        clock.advance(circuit.probe_in())
        assert circuit.start_probe()
        circuit.probe_failed()
        assert circuit.state is CircuitState.OPEN
        delays.append(circuit.probe_in())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert circuit.failed_probes == 8


def test_a_reopened_circuit_starts_again_from_first_delay() -> None:
    circuit, clock = make(first_delay=0.05, max_delay=1.0)
    circuit.failed()
    for _ in range(6):
        clock.advance(circuit.probe_in())
        circuit.start_probe()
        circuit.probe_failed()
    clock.advance(circuit.probe_in())
    circuit.start_probe()
    circuit.probe_succeeded()
    assert circuit.failed() is True
    assert circuit.probe_in() == pytest.approx(0.05), "a new outage probes soon again"
    assert circuit.openings == 2


def test_probe_outcomes_without_a_probe_are_refused() -> None:
    circuit, _ = make()
    with pytest.raises(RuntimeError):
        circuit.probe_succeeded()
    with pytest.raises(RuntimeError):
        circuit.probe_failed()
    circuit.failed()
    with pytest.raises(RuntimeError):
        circuit.probe_succeeded()


@pytest.mark.parametrize(
    "settings",
    [{"threshold": 0}, {"first_delay": 0.0}, {"first_delay": 2.0, "max_delay": 1.0}, {"factor": 0.5}],
)
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Circuit(clock=Clock(), **settings)  # type: ignore[arg-type]


def test_every_sequence_of_events_keeps_the_invariants() -> None:
    """Exhaustively, every sequence of up to 6 events from a fresh circuit (threshold 2):

    operations are allowed exactly while closed; a probe can only start when open and due;
    the probe delay stays within [first_delay, max_delay]; half-open only follows a started probe.
    """
    events = ("fail", "ok", "tick", "start", "probe_ok", "probe_fail")
    for sequence in itertools.product(events, repeat=6):
        circuit, clock = make(threshold=2, first_delay=0.05, max_delay=0.4)
        for event in sequence:
            state = circuit.state
            if event == "fail":
                opened = circuit.failed()
                assert opened == (state is CircuitState.CLOSED and circuit.state is CircuitState.OPEN)
            elif event == "ok":
                circuit.succeeded()
                assert circuit.state is state
            elif event == "tick":
                clock.advance(0.25)
            elif event == "start":
                due = state is CircuitState.OPEN and circuit.probe_in() == 0.0
                assert circuit.start_probe() == due
                assert circuit.state is (CircuitState.HALF_OPEN if due else state)
            elif state is CircuitState.HALF_OPEN:
                (circuit.probe_succeeded if event == "probe_ok" else circuit.probe_failed)()
                assert circuit.state is (CircuitState.CLOSED if event == "probe_ok" else CircuitState.OPEN)
            else:
                with pytest.raises(RuntimeError):
                    (circuit.probe_succeeded if event == "probe_ok" else circuit.probe_failed)()
            assert circuit.allows() == (circuit.state is CircuitState.CLOSED)
            if circuit.state is CircuitState.OPEN:
                assert 0.0 <= circuit.probe_in() <= 0.4
            else:
                assert circuit.probe_in() == math.inf
