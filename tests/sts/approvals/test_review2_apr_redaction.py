"""Review 2 of issue 17: what approvers read never carries a vaulted secret or a token (SECURITY APR-05).

The view redacted vaulted values and token-shaped strings only where they were string *values*:
the same secret as an object member's *name*, or a numeric secret sent as a JSON number, was
stored in the view, shown by ``GET /approvals`` and sent in the webhook.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hold_kit import PLAIN, approval_row, assert_held, details, hold_sts, hop, new_task, session_token, tctx_of

from helpers import QUIET_MONITOR, Client, RunningSts
from tether.gateway.vault import store_secret

TOML = QUIET_MONITOR + "\n[approvals]\nttl = 120\ninterval = 2\nmax_pending = 20\n"
SECRET = "sk-live-0a1b2c3d4e5f"
PIN = "7302915548"


@pytest.fixture(scope="module")
def sts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSts]:
    with hold_sts(tmp_path_factory.mktemp("review2-redaction"), extra_toml=TOML) as server:
        store_secret(server.config, "payments-api-key", SECRET, actor="test")
        store_secret(server.config, "card-pin", PIN, actor="test")
        yield server


def held_view(sts: RunningSts, arguments: dict[str, object]) -> dict[str, object]:
    client = Client(sts)
    session = session_token(sts, client, new_task(sts))
    approval_id = assert_held(hop(client, session, PLAIN, authorization_details=details("transfer", **arguments)))
    view = approval_row(sts, approval_id).view
    assert view["tctx"] == tctx_of("transfer", arguments)  # the hash still covers what was asked
    return view


def test_review2_apr05_vaulted_secret_as_a_member_name_is_redacted(sts: RunningSts) -> None:
    view = held_view(sts, {"to": "acct-1", "headers": {SECRET: "x-api-key"}})
    assert SECRET not in str(view), view


def test_review2_apr05_token_as_a_member_name_is_redacted(sts: RunningSts) -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    view = held_view(sts, {"to": "acct-1", "cache": {token: 1}})
    assert token not in str(view), view


def test_review2_apr05_vaulted_secret_sent_as_a_number_is_redacted(sts: RunningSts) -> None:
    view = held_view(sts, {"to": "acct-1", "pin": int(PIN)})
    assert PIN not in str(view), view


def test_review2_apr05_ordinary_arguments_are_shown_as_sent(sts: RunningSts) -> None:
    """Control: names and numbers that hold no secret are left alone."""
    view = held_view(sts, {"to": "acct-1", "amount": 1200, "meta": {"ref": "inv-77"}})
    assert view["arguments"] == {"to": "acct-1", "amount": 1200, "meta": {"ref": "inv-77"}}


def test_review2_apr05_a_redacted_member_name_never_hides_another_member(sts: RunningSts) -> None:
    view = held_view(sts, {"to": "acct-1", "h": {SECRET: "a", "[redacted]": "b", SECRET + "2": "c"}})
    shown = view["arguments"]
    assert isinstance(shown, dict)
    assert sorted(shown["h"].values()) == ["a", "b", "c"], view
    assert SECRET not in str(view)
