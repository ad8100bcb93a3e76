"""Review of the border (rvfed): what a malicious peer signs is held to B's own rules for the same
values (FED-01, FED-02). A peer's ``purp`` becomes the linked task's purpose (shown in the console,
the CLI and the audit log), its ``txn``/``jti`` go into link rows and audit records, and its
principals become ``fed:<peer>/…`` names in B's own tokens. B refuses (``invalid_grant``, audited,
nothing spent or linked) what it would refuse from a local orchestrator: control or bidi
characters, oversized values, and names that no longer fit a principal once namespaced — rather
than issuing a session B's own verifier then rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fedinkit import Border, claims_of, mark, refused, two_domains


@pytest.fixture(scope="module")
def border(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Border]:
    with two_domains(tmp_path_factory.mktemp("claims")) as pair:
        yield pair


def _forged(border: Border, foreign: str, **changes: Any) -> str:
    """``foreign``'s claims changed, signed with A's own key: what a compromised A could send."""
    return border.a.sts.ctx.keyring.sign({**claims_of(foreign), **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"purp": "pay invoice \u202etxt.exe"}, "purp"),  # bidi override (Trojan Source)
        ({"purp": "line one\nline two"}, "purp"),
        ({"purp": "x" * 300}, "purp"),  # B's tasks take at most 256 characters
        ({"txn": "tsk_\x1b[31mred"}, "txn"),
        ({"txn": "tsk_\u00e9t\u00e9"}, "txn"),
        ({"jti": "jti\r\nforged: 1"}, "jti"),
        ({"sub": "user:" + "x" * 2040}, "principal"),  # 2045 characters: 2051 as fed:a/…
        ({"act": {"sub": "k8s:" + "y" * 2042}}, "principal"),
    ],
)
def test_fed02_a_peer_value_b_would_refuse_locally_is_refused_at_the_border(
    border: Border, changes: dict[str, Any], reason: str
) -> None:
    foreign, key = border.hop_to_b(border.a_task(max_depth=3)["id"])
    forged = _forged(border, foreign, **changes)
    since = mark(border.b)
    refused(border.b, border.cross(border.at_b(key), forged), since=since, status=400, error="invalid_grant",
            reason=reason, secrets=(forged,))  # fmt: skip
    assert not [r for r in border.b.audit() if r.seq > since and r.kind in ("federation.linked", "token.issued")]


def test_fed02_printable_values_within_bounds_still_cross(border: Border) -> None:
    foreign, key = border.hop_to_b(border.a_task()["id"])
    forged = _forged(border, foreign, purp="Quarterly report: wiki search (draft #2)", sub="user:" + "x" * 2030)
    response = border.cross(border.at_b(key), forged)
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["purp"] == "Quarterly report: wiki search (draft #2)"
