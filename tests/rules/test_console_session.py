"""Pure rules of the console's sessions, CSRF tokens and login links (SECURITY WEB-01, WEB-02, WEB-04)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import AccessDenied
from tether.rules.console_roles import APPROVER, OPERATOR, VIEWER, grant, may
from tether.rules.console_session import (
    LoginLink,
    Session,
    SessionInvalid,
    check_csrf,
    csrf_token,
    link_key,
    logout_key,
    open_link,
    open_session,
    seal_link,
    seal_session,
)

KEY = b"k" * 32
OTHER = b"o" * 32
T0 = 1_800_000_000
SESSION = Session("sid-1", "user:ann@example.com", frozenset({VIEWER}), frozenset({"ops"}), "oidc", T0, T0, "Ann")


def _open(sealed: str | None, now: float = T0 + 10, idle: int = 1800, max_age: int = 43200) -> Session:
    return open_session(KEY, sealed, now=now, idle=idle, max_age=max_age)


def test_web01_session_round_trips_and_touch_moves_only_seen() -> None:
    assert _open(seal_session(KEY, SESSION)) == SESSION
    touched = SESSION.touched(T0 + 99)
    assert touched.seen == T0 + 99 and touched.iat == T0 and touched.sid == SESSION.sid


@pytest.mark.parametrize("value", [None, "", "a", "a.b.c", "é.x", "x" * 5000])
def test_web01_absent_or_malformed_cookie_is_no_session(value: str | None) -> None:
    with pytest.raises(SessionInvalid):
        _open(value)


def test_web01_cookie_sealed_under_another_key_or_edited_is_refused() -> None:
    with pytest.raises(SessionInvalid, match="does not verify"):
        open_session(OTHER, seal_session(KEY, SESSION), now=T0, idle=60, max_age=60)
    payload, tag = seal_session(KEY, SESSION).split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["r"] = [OPERATOR, VIEWER]  # promote itself
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode() + "." + tag
    with pytest.raises(SessionInvalid, match="does not verify"):
        _open(forged)


def test_web01_login_link_is_never_a_session_nor_the_reverse() -> None:
    link = seal_link(KEY, LoginLink("console:ops", OPERATOR, T0 + 300, "n1"))
    with pytest.raises(SessionInvalid):
        _open(link)
    with pytest.raises(AccessDenied):
        open_link(KEY, seal_session(KEY, SESSION), now=T0)


def test_web01_idle_timeout_and_absolute_timeout() -> None:
    sealed = seal_session(KEY, SESSION)
    assert _open(sealed, now=T0 + 1799).sid == "sid-1"
    with pytest.raises(SessionInvalid, match="idle"):
        _open(sealed, now=T0 + 1800)
    recent = seal_session(KEY, SESSION.touched(T0 + 43_000))
    assert _open(recent, now=T0 + 43_199).sid == "sid-1"
    with pytest.raises(SessionInvalid, match="absolute"):
        _open(recent, now=T0 + 43_200)


def test_web01_session_seen_in_the_future_or_before_login_is_refused() -> None:
    for seen in (T0 - 1, T0 + 10_000):
        bad = Session("s", "p", frozenset({VIEWER}), frozenset(), "link", T0, seen)
        with pytest.raises(SessionInvalid, match="inconsistent"):
            _open(seal_session(KEY, bad), now=T0 + 10)


@settings(max_examples=60)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_web02_csrf_token_of_one_session_never_verifies_for_another(sid: str, other: str) -> None:
    check_csrf(KEY, sid, csrf_token(KEY, sid))
    if other != sid:
        with pytest.raises(AccessDenied):
            check_csrf(KEY, other, csrf_token(KEY, sid))


@pytest.mark.parametrize("presented", [None, "", 5, "x" * 101, "é", csrf_token(OTHER, "sid-1")])
def test_web02_missing_or_wrong_csrf_token_is_refused(presented: object) -> None:
    with pytest.raises(AccessDenied, match="CSRF"):
        check_csrf(KEY, "sid-1", presented)


def test_web04_link_round_trip_expiry_and_forgery() -> None:
    link = LoginLink("console:ops", VIEWER, T0 + 300, "nonce")
    sealed = seal_link(KEY, link)
    assert open_link(KEY, sealed, now=T0 + 299) == link
    with pytest.raises(AccessDenied, match="expired"):
        open_link(KEY, sealed, now=T0 + 300)
    with pytest.raises(AccessDenied, match="not valid"):
        open_link(OTHER, sealed, now=T0)
    with pytest.raises(AccessDenied, match="not valid"):
        open_link(KEY, sealed[:-2] + ("AA" if not sealed.endswith("AA") else "BB"), now=T0)


def test_web04_store_keys_are_distinct_per_nonce_and_per_purpose() -> None:
    assert link_key("a") != link_key("b") and logout_key("a") != logout_key("b")
    assert link_key("a") != logout_key("a")


def test_web05_roles_by_list_or_group_and_viewer_implied() -> None:
    members = {OPERATOR: ["user:op@x"], VIEWER: [], APPROVER: []}
    groups = {APPROVER: ["finance"], VIEWER: ["staff"]}
    assert grant("user:op@x", [], members=members, group_roles=groups) == {OPERATOR, VIEWER}
    assert grant("user:f@x", ["finance"], members=members, group_roles=groups) == {APPROVER, VIEWER}
    assert grant("user:s@x", ["staff"], members=members, group_roles=groups) == {VIEWER}
    assert grant("user:nobody@x", ["other"], members=members, group_roles=groups) == frozenset()
    assert grant("USER:OP@X", [], members=members, group_roles=groups) == frozenset()  # exact principals


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        ({VIEWER}, {"view"}),
        ({VIEWER, OPERATOR}, {"view", "act"}),
        ({VIEWER, APPROVER}, {"view", "approve"}),
        (set(), set()),
    ],
)
def test_web05_what_each_role_may_do(roles: set[str], allowed: set[str]) -> None:
    for kind in ("view", "act", "approve", "admin", ""):
        assert may(roles, kind) is (kind in allowed)
