"""``mcp_unusual`` and ``mcp_drift`` over crafted ``mcp.call`` / ``mcp.drift`` records (pure), both edges pinned."""

from __future__ import annotations

from typing import Any

from monitorkit import AGENT, OTHER, T0, Log, detector, feed, settings

from tether.monitor.detectors import build_detectors
from tether.monitor.events import Event
from tether.monitor.mcp import argument_shape
from tether.monitor.settings import parse_detectors


def call(log: Log, tool: str = "read_file", shape: list[str] | None = None, *, route: str = "files",
         principal: str = AGENT, **kw: Any) -> Event:  # fmt: skip
    return log.record("mcp.call", principal=principal, route=route, tool=tool, arguments_digest="d1gest",
                      argument_shape=["path:string"] if shape is None else shape, **kw)  # fmt: skip


def test_mcp_unusual_on_by_default_alert_only() -> None:
    s = settings("mcp_unusual")
    assert s.enabled and s.actions == ("alert",) and s.params == {"learn": 20, "shape_learn": 5}
    assert settings("mcp_drift").severity == "high"
    assert {d.name for d in build_detectors(parse_detectors({}))} >= {"mcp_unusual", "mcp_drift"}


def test_mcp_unusual_new_tool_fires_exactly_after_learning() -> None:
    det = detector("mcp_unusual", learn=3)
    log = Log()
    # during learning a new tool is the baseline: the third distinct-or-not call is still learning
    assert feed(det, [call(log), call(log), call(log, "list_directory")]) == []
    found = feed(det, [call(log, "write_file", ["content:string", "path:string"])])
    assert len(found) == 1
    finding = found[0]
    assert finding.detector == "mcp_unusual" and finding.agent == AGENT and finding.severity == "medium"
    assert "first call of tool `write_file`" in finding.reason
    assert finding.evidence["known_tools"] == ["list_directory", "read_file"] and finding.evidence["history"] == 3
    assert finding.evidence["arguments_digest"] == "d1gest"
    # a known tool with its known shape stays quiet (positive control on the same history)
    assert feed(det, [call(log), call(log, "list_directory"), call(log, "write_file", ["content:string",
                                                                                        "path:string"])]) == []  # fmt: skip


def test_mcp_unusual_learning_boundary() -> None:
    det = detector("mcp_unusual", learn=3)
    log = Log()
    assert feed(det, [call(log), call(log), call(log, "write_file")]) == []  # the 3rd call (history 2) learns


def test_mcp_unusual_new_argument_shape_after_shape_learning() -> None:
    det = detector("mcp_unusual", learn=1, shape_learn=2)
    log = Log()
    assert feed(det, [call(log), call(log, shape=["also:string", "path:string"])]) == []  # 1 call of it: learning
    det = detector("mcp_unusual", learn=1, shape_learn=2)
    log = Log()
    feed(det, [call(log), call(log)])
    found = feed(det, [call(log, shape=["also:string", "path:string"])])
    assert len(found) == 1 and "never seen in 2 calls" in found[0].reason
    assert found[0].evidence["argument_shape"] == "also:string,path:string"
    assert found[0].evidence["known_shapes"] == ["path:string"]
    assert feed(det, [call(log, shape=["path:string"])]) == []  # the known shape: quiet


def test_mcp_unusual_per_agent_and_route() -> None:
    det = detector("mcp_unusual", learn=2)
    log = Log()
    feed(det, [call(log), call(log)])
    assert feed(det, [call(log, "write_file", principal=OTHER)]) == []  # another agent: its own learning
    assert feed(det, [call(log, "write_file", route="other")]) == []  # another route: its own learning
    assert len(feed(det, [call(log, "write_file")])) == 1


def test_mcp_unusual_ignores_other_kinds_and_records_without_a_tool() -> None:
    det = detector("mcp_unusual", learn=0)
    log = Log()
    assert feed(det, [log.call("/v1/items"), log.record("mcp.call", route="files"),
                      log.record("mcp.call", principal=None, route="files", tool="x")]) == []  # fmt: skip


def test_argument_shape_normalizes() -> None:
    assert argument_shape(["b:number", "a:string"]) == "a:string,b:number"
    assert argument_shape([]) == ""
    assert argument_shape("a:string") is None and argument_shape([1]) is None and argument_shape(None) is None


def test_mcp_drift_alerts_per_route() -> None:
    det = detector("mcp_drift")
    log = Log()
    found = feed(det, [log.record("mcp.drift", outcome="alert", route="files", tool="read_file",
                                  pinned_digest="p1", current_digest="c2", at=T0)])  # fmt: skip
    assert len(found) == 1
    finding = found[0]
    assert finding.severity == "high" and finding.agent == AGENT and "`read_file` differs" in finding.reason
    assert finding.evidence["current_digest"] == "c2" and finding.subject == "mcp-route:files"
    gone = feed(detector("mcp_drift"), [log.record("mcp.drift", route="files", tool="read_file", pinned_digest="p1")])
    assert "`read_file` is gone upstream" in gone[0].reason
    other_agent = feed(det, [log.record("mcp.drift", principal=OTHER, route="files", tool="read_file", at=T0 + 1)])[0]
    assert other_agent.key == finding.key  # one alert per route and minute, whichever agent hit it
    assert feed(det, [log.record("mcp.pinned", route="files"), call(log)]) == []
