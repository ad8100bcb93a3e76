"""``console.lineage``: a task's token rows as a delegation forest (pure, no I/O)."""

from __future__ import annotations

import random
from typing import Any

from tether.console.lineage import EXPIRED, LIVE, REVOKED, Node, build_forest, summarize, walk
from tether.store.records import IssuedToken

NOW = 1_000_000


def tok(jti: str, parent: str | None = None, **fields: Any) -> IssuedToken:
    values: dict[str, Any] = {
        "jti": jti,
        "kind": "hop" if parent else "session",
        "sub": "spiffe://tether.local/agent",
        "client_id": "spiffe://tether.local/agent",
        "aud": "http://b",
        "scope": "wiki:write wiki:read",
        "jkt": "jkt-" + jti,
        "iat": NOW - 10,
        "exp": NOW + 60,
        "depth": 0,
        "task_id": "t1",
        "parent_jti": parent,
    }
    values.update(fields)
    return IssuedToken(**values)


def flat(forest: list[Node]) -> dict[str, Node]:
    return {step.node.jti: step.node for step in walk(forest) if step.node is not None}


def shape(forest: list[Node] | tuple[Node, ...]) -> list[Any]:
    return [(n.jti, shape(n.children)) if n.children else n.jti for n in forest]


def test_session_hop_and_actor_hop_nest_by_parent() -> None:
    rows = [tok("s"), tok("h1", "s", iat=NOW - 9), tok("a1", "h1", iat=NOW - 8, client_id="spiffe://tether.local/b"),
            tok("h2", "s", iat=NOW - 7)]  # fmt: skip
    forest = build_forest(rows, now=NOW)
    assert shape(forest) == [("s", [("h1", ["a1"]), "h2"])]
    nodes = flat(forest)
    assert nodes["s"].kind == "session" and nodes["h1"].kind == "hop"
    assert nodes["a1"].actor == "spiffe://tether.local/b" and nodes["a1"].holder == "spiffe://tether.local/agent"
    assert nodes["h1"].actor is None  # the agent holds its own hop: no separate actor
    assert nodes["s"].scope == ("wiki:read", "wiki:write") and nodes["s"].aud == "http://b"
    assert all(n.state == LIVE and not n.orphan for n in nodes.values())


def test_orphan_whose_parent_is_not_in_the_rows_is_a_root() -> None:
    forest = build_forest([tok("s"), tok("h", "gone", iat=NOW - 5)], now=NOW)
    assert shape(forest) == ["s", "h"]
    assert flat(forest)["h"].orphan and not flat(forest)["s"].orphan


def test_revocation_cuts_the_whole_branch_but_not_siblings() -> None:
    rows = [tok("s"), tok("h1", "s", iat=NOW - 9, revoked_at=NOW - 1), tok("a1", "h1", iat=NOW - 8),
            tok("a2", "a1", iat=NOW - 7), tok("h2", "s", iat=NOW - 6)]  # fmt: skip
    nodes = flat(build_forest(rows, now=NOW))
    assert nodes["h1"].state == REVOKED and not nodes["h1"].inherited
    assert nodes["a1"].state == REVOKED and nodes["a1"].inherited
    assert nodes["a2"].state == REVOKED and nodes["a2"].inherited
    assert nodes["s"].state == LIVE and nodes["h2"].state == LIVE
    summary = summarize(build_forest(rows, now=NOW))
    assert summary.revoked == ("a1", "a2", "h1") and summary.live == 2 and summary.total == 5


def test_revoked_root_cuts_everything_even_expired_descendants() -> None:
    rows = [tok("s", revoked_at=NOW - 1), tok("h", "s", exp=NOW - 1)]
    nodes = flat(build_forest(rows, now=NOW))
    assert nodes["h"].state == REVOKED  # revoked outranks expired: the branch is cut


def test_expiry_is_at_exp_inclusive() -> None:
    rows = [tok("s", exp=NOW), tok("h", "s", exp=NOW + 1)]
    nodes = flat(build_forest(rows, now=NOW))
    assert nodes["s"].state == EXPIRED and nodes["h"].state == LIVE
    summary = summarize(build_forest(rows, now=NOW))
    assert (summary.live, summary.expired, summary.revoked) == (1, 1, ())


def test_binding_kinds() -> None:
    rows = [tok("d"), tok("m", jkt="", x5t="x5t-m"), tok("b", jkt=""), tok("both", x5t="x5t-b")]
    nodes = flat(build_forest(rows, now=NOW))
    assert (nodes["d"].binding, nodes["d"].thumbprint) == ("dpop", "jkt-d")
    assert (nodes["m"].binding, nodes["m"].thumbprint) == ("mtls", "x5t-m")
    assert (nodes["b"].binding, nodes["b"].thumbprint) == ("bearer", "")
    assert (nodes["both"].binding, nodes["both"].thumbprint) == ("dpop+mtls", "jkt-both x5t-b")


def test_ordering_is_stable_whatever_the_input_order() -> None:
    rows = [tok("s"), tok("b", "s", iat=NOW - 5), tok("a", "s", iat=NOW - 5), tok("c", "s", iat=NOW - 9),
            tok("r2", iat=NOW - 20)]  # fmt: skip
    expected = shape(build_forest(rows, now=NOW))
    assert expected == ["r2", ("s", ["c", "a", "b"])]  # by iat, then jti
    for seed in range(20):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert shape(build_forest(shuffled, now=NOW)) == expected


def test_deep_chain_builds_and_walks_without_recursion() -> None:
    depth = 5000  # far beyond Python's recursion limit
    rows = [tok("n0")] + [tok(f"n{i}", f"n{i - 1}", iat=NOW - 10 + i) for i in range(1, depth)]
    forest = build_forest(rows, now=NOW)
    steps = list(walk(forest))
    items = [s for s in steps if s.op == "item"]
    assert len(items) == depth and items[-1].level == depth
    assert sum(s.op == "open" for s in steps) == sum(s.op == "close" for s in steps) == depth - 1


def test_cycles_and_self_parents_never_loop() -> None:
    rows = [tok("x", "y", iat=NOW - 2), tok("y", "x", iat=NOW - 1), tok("self", "self")]
    forest = build_forest(rows, now=NOW)
    nodes = flat(forest)
    assert set(nodes) == {"x", "y", "self"}  # each exactly once
    assert shape(forest) == ["self", ("x", ["y"])]  # true roots first, then each cycle at its oldest member


def test_duplicate_ids_keep_the_first_row() -> None:
    forest = build_forest([tok("s"), tok("s", aud="http://other")], now=NOW)
    assert len(flat(forest)) == 1 and flat(forest)["s"].aud == "http://b"


def test_walk_steps_carry_aria_positions_and_balance() -> None:
    rows = [tok("s"), tok("h1", "s", iat=NOW - 9), tok("h2", "s", iat=NOW - 8), tok("r", iat=NOW)]
    steps = list(walk(build_forest(rows, now=NOW)))
    ops = [(s.op, s.node.jti if s.node else None, s.level, s.position, s.siblings) for s in steps]
    assert ops == [
        ("item", "s", 1, 1, 2),
        ("open", None, 2, 0, 0),
        ("item", "h1", 2, 1, 2),
        ("item", "h2", 2, 2, 2),
        ("close", None, 2, 0, 0),
        ("item", "r", 1, 2, 2),
    ]


def test_empty_rows_make_an_empty_forest() -> None:
    assert build_forest([], now=NOW) == [] and list(walk([])) == []
    assert summarize([]).total == 0
