"""``tether.rules.approval``: what an approval covers, who may decide, what it yields (SECURITY APR-01..03, APR-05).

Pure: every test passes values in and reads the answer or the exact wire code of the
refusal. The tctx equivalences (key order, number spelling, whitespace) are also a property
test: re-serialising a call never changes what was approved.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import AccessDenied, AuthorizationPending, ExpiredToken, InvalidGrant, InvalidRequest, OAuthError
from tether.model import Approval, ApprovalClaim, ApprovalStatus, Task
from tether.rules.approval import (
    MIN_SECRET_MATCH,
    REDACTED,
    SUBJECT_GROUP,
    ApprovalBinding,
    ApprovalRequired,
    Approver,
    InvalidAuthorizationDetails,
    approval_claim,
    approval_view,
    check_approver,
    check_call,
    check_grant,
    check_pending,
    check_use,
    parse_authorization_details,
    redact,
    redeem,
    tool_call_context,
    valid_approval_id,
    valid_group,
)
from tether.rules.tool_call import DEFAULT_MAX_ARGUMENT_BYTES, MAX_TOOL_NAME, ToolCall, parse_tool_call

NOW = 1_800_000_000
AGENT = "spiffe://tether.local/agent/pay"
SVC = "spiffe://tether.local/svc/b"
USER = "user:carol@example.com"
CREATOR = "spiffe://tether.local/orchestrator"
ALICE = "user:alice@example.com"
BOB = "user:bob@example.com"
APR_ID = "apr_" + "A" * 22
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"
PAY = "https://pay.example"


def details(*entries: Any) -> str:
    return json.dumps(list(entries))


def call_entry(tool: str = "pay", **arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "tool": tool, "arguments": arguments}


def binding(**changes: Any) -> ApprovalBinding:
    base = ApprovalBinding(
        task="tsk_1",
        agent=AGENT,
        client=AGENT,
        sub=USER,
        aud=PAY,
        scope=frozenset({"pay:write"}),
        actors=(),
        kind="hop",
        jkt=JKT,
        x5t=None,
        tctx=tool_call_context("pay", {"amount": 10}),
    )
    return dataclasses.replace(base, **changes)


def task(**changes: Any) -> Task:
    base = Task(
        id="tsk_1",
        agent=AGENT,
        audiences=(PAY,),
        scopes=frozenset({"pay:write"}),
        created_at=NOW - 60,
        expires_at=NOW + 900,
        max_depth=3,
        max_tokens=100,
        on_behalf_of=USER,
        purpose="pay the invoice",
        created_by=CREATOR,
    )
    return dataclasses.replace(base, **changes)


def approval(**changes: Any) -> Approval:
    bound = binding()
    base = Approval(
        id=APR_ID,
        task="tsk_1",
        digest=bound.digest(),
        request=bound.canonical(),
        view={"tool": "pay"},
        groups=("finance",),
        policies=("payments-need-finance",),
        created_at=NOW - 10,
        expires_at=NOW + 290,
        request_mac="m",
    )
    return dataclasses.replace(base, **changes)


def approved(**changes: Any) -> Approval:
    decision: dict[str, Any] = {"status": ApprovalStatus.APPROVED, "decided_by": ALICE, "decided_at": NOW - 5, "uses": 1,
                                "until": NOW + 60}  # fmt: skip
    return approval(**{**decision, **changes})


def refused(kind: type[OAuthError], error: str, fn: Any, *args: Any, **kwargs: Any) -> OAuthError:
    with pytest.raises(kind) as caught:
        fn(*args, **kwargs)
    assert caught.value.error == error, caught.value
    return caught.value


# -- tool_call_context: canonical equivalences and differences (APR-01) ------------------------
def test_apr01_tctx_ignores_key_order_and_whitespace() -> None:
    a = json.loads('{"amount": 10, "to": {"iban": "DE00", "name": "Acme"}}')
    b = json.loads('{"to":{"name":"Acme","iban":"DE00"},  "amount":10}')
    assert list(a) != list(b)
    assert tool_call_context("pay", a) == tool_call_context("pay", b)


@pytest.mark.parametrize(("x", "y"), [(10, 10.0), (1e15, 1000000000000000), (0.5, 5e-1), (-0.0, 0)])
def test_apr01_tctx_number_spellings_of_the_same_value_agree(x: float, y: float) -> None:
    assert tool_call_context("pay", {"amount": x}) == tool_call_context("pay", {"amount": y})


def test_apr01_tctx_is_the_parsed_details_and_the_tools_call_digest_alike() -> None:
    parsed = parse_authorization_details(details(call_entry(amount=10, to="acme")))
    via_call = parse_tool_call({"name": "pay", "arguments": {"to": "acme", "amount": 10.0}})
    assert tool_call_context(parsed.name, parsed.arguments) == tool_call_context(via_call.name, via_call.arguments)
    assert len(tool_call_context("pay", {})) == 43  # SHA-256, base64url without padding


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("pay", {"amount": 11}),  # a changed value
        ("pay", {"amount": "10"}),  # a string is not the number
        ("pay", {"amount": 10, "memo": None}),  # an extra member, even null
        ("pay", {}),  # a missing member
        ("refund", {"amount": 10}),  # the same arguments to another tool
        ("pay", {"Amount": 10}),  # member names are case-sensitive
        ("pay", {"amount": [10]}),  # a different shape
        ("pay", {"amount": True}),  # true is not 1
    ],
)
def test_apr01_tctx_differs_for_any_other_call(tool: str, arguments: dict[str, Any]) -> None:
    assert tool_call_context(tool, arguments) != tool_call_context("pay", {"amount": 10})


def test_apr01_tctx_argument_values_are_not_confusable_with_the_tool_name() -> None:
    # {"arguments", "tool"} is hashed as one object: moving text between the two changes the hash
    assert tool_call_context("a", {"b": 1}) != tool_call_context("ab", {})
    assert tool_call_context("pay", {"tool": "refund"}) != tool_call_context("refund", {"tool": "pay"})


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=8),
                       st.floats(allow_nan=False, allow_infinity=False))  # fmt: skip
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json, max_size=5), st.randoms(use_true_random=False))
def test_apr01_tctx_is_stable_under_reserialisation(arguments: dict[str, Any], rnd: Any) -> None:
    """Any client's re-serialisation (key order, indentation) names the same call."""
    items = list(arguments.items())
    rnd.shuffle(items)
    text = json.dumps(dict(items), indent=rnd.choice([None, 1, 4]), ensure_ascii=rnd.choice([True, False]))
    assert tool_call_context("t", json.loads(text)) == tool_call_context("t", arguments)


# -- parse_authorization_details (RFC 9396) -----------------------------------------------------
def test_authorization_details_parsed() -> None:
    call = parse_authorization_details(details(call_entry(amount=10)))
    assert isinstance(call, ToolCall) and call.name == "pay" and dict(call.arguments) == {"amount": 10}
    bare = parse_authorization_details(details({"type": "tool_call", "tool": "ping"}))
    assert dict(bare.arguments) == {}  # arguments absent: a tool without input, as in tools/call


BAD_DETAILS = [
    ("not json", "not valid JSON"),
    ("", "not valid JSON"),
    ('[{"type":"tool_call","tool":"pay","tool":"refund","arguments":{}}]', "not valid JSON"),  # duplicate key
    ('[{"type":"tool_call","tool":"pay","arguments":{"a":1,"a":2}}]', "not valid JSON"),  # duplicate in arguments
    ('[{"type":"tool_call","tool":"pay","arguments":{"x":NaN}}]', "not valid JSON"),
    ("{}", "array of one object"),
    ('{"type":"tool_call","tool":"pay"}', "array of one object"),  # an object, not an array
    ("[]", "array of one object"),
    (details(call_entry(), call_entry()), "array of one object"),  # two entries
    (details(call_entry(), {"type": "payment_initiation"}), "array of one object"),
    ('["tool_call"]', "array of one object"),
    ("[[]]", "array of one object"),
    ("null", "array of one object"),
    (details({"type": "payment_initiation", "tool": "pay"}), "type is supported"),
    (details({"tool": "pay"}), "type is supported"),
    (details({"type": "TOOL_CALL", "tool": "pay"}), "type is supported"),
    (details({"type": ["tool_call"], "tool": "pay"}), "type is supported"),
    (details({**call_entry(), "locations": ["https://pay.example"]}), "unknown member `locations`"),
    (details({**call_entry(), "actions": ["write"]}), "unknown member `actions`"),
    (details({"type": "tool_call", "arguments": {}}), "needs `tool`"),
    (details({"type": "tool_call", "tool": 7}), "invalid tool call"),
    (details({"type": "tool_call", "tool": ""}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay money"}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay;rm"}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "x" * (MAX_TOOL_NAME + 1)}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay", "arguments": [1, 2]}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay", "arguments": "amount=10"}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay", "arguments": 10}), "invalid tool call"),
    (details({"type": "tool_call", "tool": "pay", "arguments": True}), "invalid tool call"),
    (details(call_entry(amount=2**53)), "invalid tool call"),  # beyond I-JSON (RFC 7493 §2.2)
]


@pytest.mark.parametrize(("text", "words"), BAD_DETAILS)
def test_authorization_details_malformed_refused(text: str, words: str) -> None:
    error = refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details, text)
    assert words in error.description
    assert error.status == 400


def test_authorization_details_unknown_member_name_is_bounded_in_the_message() -> None:
    error = refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details,
                    details({**call_entry(), "z" * 5000: 1}))  # fmt: skip
    assert len(error.description) < 120


def test_authorization_details_oversize_refused_before_parsing() -> None:
    huge = details(call_entry(blob="x" * (3 * DEFAULT_MAX_ARGUMENT_BYTES)))
    error = refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details, huge)
    assert "too large" in error.description


def test_authorization_details_arguments_over_the_cap_refused_not_truncated() -> None:
    just_over = details(call_entry(blob="x" * 200))
    refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details, just_over,
            max_bytes=100)  # fmt: skip
    assert parse_authorization_details(details(call_entry(blob="x" * 50)), max_bytes=100).name == "pay"


def test_authorization_details_too_deep_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details,
            details(call_entry(nested=deep)))  # fmt: skip


def test_authorization_details_lone_surrogate_refused() -> None:
    refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details,
            '[{"type":"tool_call","tool":"pay","arguments":{"a":"\\ud800"}}]')  # fmt: skip
    refused(InvalidAuthorizationDetails, "invalid_authorization_details", parse_authorization_details, '["\ud800"]')


# -- ApprovalBinding: every field is in the digest (APR-01) -------------------------------------
CHANGES: dict[str, Any] = {
    "task": "tsk_2",
    "agent": "spiffe://tether.local/agent/other",
    "client": SVC,
    "sub": "user:dave@example.com",
    "aud": "https://pay2.example",
    "scope": frozenset({"pay:write", "pay:read"}),
    "actors": (SVC,),
    "kind": "session",
    "jkt": "1" * 43,
    "x5t": X5T,
    "tctx": None,
}


def test_binding_changes_cover_every_field() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(ApprovalBinding)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_apr01_binding_digest_changes_with_each_field(field: str) -> None:
    assert binding(**{field: CHANGES[field]}).digest() != binding().digest()


def test_apr01_binding_digest_stable_and_order_insensitive_for_scope_only() -> None:
    assert binding().digest() == binding().digest()
    assert binding(scope=frozenset({"a", "b"})).digest() == binding(scope=frozenset({"b", "a"})).digest()
    # the actor chain is ordered: the same actors in another order are another chain
    assert binding(actors=(SVC, AGENT)).digest() != binding(actors=(AGENT, SVC)).digest()
    assert binding(jkt=None).digest() != binding().digest()


def test_binding_canonical_is_json() -> None:
    canonical = binding(actors=(SVC,)).canonical()
    assert json.loads(json.dumps(canonical)) == canonical and canonical["scope"] == ["pay:write"]


# -- redact (APR-05) ----------------------------------------------------------------------------
FIELDS = ("password", "api_key", "card_number")


def test_apr05_redact_fields_at_any_depth_case_insensitive() -> None:
    value = {
        "Password": "hunter2",
        "to": {"name": "Acme", "API_KEY": "k", "nested": [{"card_NUMBER": "4111111111111111"}, {"ok": 1}]},
        "amount": 10,
    }
    assert redact(value, fields=FIELDS) == {
        "Password": REDACTED,
        "to": {"name": "Acme", "API_KEY": REDACTED, "nested": [{"card_NUMBER": REDACTED}, {"ok": 1}]},
        "amount": 10,
    }


def test_apr05_redacted_field_hides_a_whole_structure() -> None:
    assert redact({"password": {"old": "a", "new": "b"}}, fields=FIELDS) == {"password": REDACTED}


def test_apr05_redact_vaulted_secrets_inside_any_string() -> None:
    secret = "sk_live_0123456789"
    out = redact({"note": f"use {secret} please", "list": [secret], "other": "fine"}, fields=(), secrets=[secret])
    assert out == {"note": REDACTED, "list": [REDACTED], "other": "fine"}


def test_apr05_short_secrets_are_ignored() -> None:
    short = "x" * (MIN_SECRET_MATCH - 1)
    assert redact({"a": f"{short}!"}, fields=(), secrets=[short]) == {"a": f"{short}!"}
    exact = "y" * MIN_SECRET_MATCH
    assert redact({"a": f"{exact}!"}, fields=(), secrets=[exact]) == {"a": REDACTED}


@pytest.mark.parametrize(
    "text",
    [
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # unsigned: still a token
        "see eyJraWQiOiIxIn0.e30.x in the log",
    ],
)
def test_apr05_token_shaped_strings_redacted(text: str) -> None:
    assert redact({"memo": text, "deep": [[text]]}, fields=()) == {"memo": REDACTED, "deep": [[REDACTED]]}


@pytest.mark.parametrize("text", ["eyJ", "eyJhbGci", "a.b.c", "ordinary words.", "eyJ.x.y"])
def test_apr05_ordinary_strings_kept(text: str) -> None:
    assert redact({"memo": text}, fields=()) == {"memo": text}


def test_apr05_redact_leaves_keys_numbers_and_the_input_untouched() -> None:
    value = {"amount": 10, "ok": True, "none": None, "password": "p"}
    out = redact(value, fields=FIELDS)
    assert out == {"amount": 10, "ok": True, "none": None, "password": REDACTED}
    assert value["password"] == "p"


def test_apr05_view_is_built_from_the_binding_and_the_hashed_call() -> None:
    call = parse_tool_call({"name": "pay", "arguments": {"amount": 10, "password": "hunter2"}})
    bound = binding(tctx=tool_call_context(call.name, call.arguments))
    view = approval_view(bound, task=task(), call=call, fields=FIELDS)
    assert view["tctx"] == bound.tctx == tool_call_context("pay", {"amount": 10, "password": "hunter2"})
    assert view["arguments"] == {"amount": 10, "password": REDACTED}
    assert view["tool"] == "pay" and view["audience"] == PAY and view["agent"] == AGENT
    assert view["on_behalf_of"] == USER and view["binding"] == "dpop" and view["scope"] == ["pay:write"]
    plain = approval_view(binding(tctx=None), task=task(purpose=None), call=None, fields=FIELDS)
    assert "tool" not in plain and "arguments" not in plain and plain["purpose"] == ""


# -- redeem (APR-03, RFC 8628 §3.5) -------------------------------------------------------------
def test_apr03_redeem_approved_within_window_and_uses() -> None:
    redeem(approved(), binding().digest(), now=NOW, interval=2)


def test_apr01_redeem_other_request_refused() -> None:
    error = refused(InvalidGrant, "invalid_grant", redeem, approved(), binding(aud="https://x.example").digest(),
                    now=NOW, interval=2)  # fmt: skip
    assert "does not cover this request" in error.description


def test_apr01_redeem_digest_checked_before_status() -> None:
    # an agent polling another request's id learns nothing about that approval's state
    for state in (approval(), approved(), approval(status=ApprovalStatus.DENIED)):
        refused(InvalidGrant, "invalid_grant", redeem, state, "other", now=NOW, interval=2)


def test_apr03_redeem_pending_is_authorization_pending() -> None:
    error = refused(AuthorizationPending, "authorization_pending", redeem, approval(), binding().digest(), now=NOW,
                    interval=3)  # fmt: skip
    assert error.fields == {"approval_id": APR_ID, "interval": 3, "expires_in": 290}
    assert error.status == 400


def test_apr03_redeem_denied_is_access_denied() -> None:
    error = refused(AccessDenied, "access_denied", redeem, approval(status=ApprovalStatus.DENIED, decided_by=ALICE,
                    decided_at=NOW), binding().digest(), now=NOW, interval=2)  # fmt: skip
    assert error.status == 403


@pytest.mark.parametrize("at", [NOW + 290, NOW + 291, NOW + 10_000])
def test_apr03_redeem_pending_past_expiry_is_expired_without_a_sweep(at: int) -> None:
    refused(ExpiredToken, "expired_token", redeem, approval(), binding().digest(), now=at, interval=2)


def test_apr03_redeem_pending_just_before_expiry_still_pending() -> None:
    error = refused(AuthorizationPending, "authorization_pending", redeem, approval(), binding().digest(),
                    now=NOW + 289.5, interval=2)  # fmt: skip
    assert error.fields["expires_in"] == 0


def test_apr03_redeem_marked_expired_refused() -> None:
    refused(ExpiredToken, "expired_token", redeem, approval(status=ApprovalStatus.EXPIRED), binding().digest(), now=NOW,
            interval=2)  # fmt: skip


@pytest.mark.parametrize("at", [NOW + 60, NOW + 61])
def test_apr03_redeem_after_window_end_refused(at: int) -> None:
    error = refused(InvalidGrant, "invalid_grant", redeem, approved(), binding().digest(), now=at, interval=2)
    assert "used" in error.description


def test_apr03_approved_outlives_the_pending_expiry_within_its_window() -> None:
    # the approval's expiry bounds the wait for a decision, not the window the approver granted
    redeem(approved(until=NOW + 1000), binding().digest(), now=NOW + 500, interval=2)


@pytest.mark.parametrize("changes", [{"until": None}, {"uses": 0}])
def test_apr03_redeem_approved_without_window_or_uses_refused(changes: dict[str, Any]) -> None:
    refused(InvalidGrant, "invalid_grant", redeem, approved(**changes), binding().digest(), now=NOW, interval=2)


# -- check_use -------------------------------------------------------------------------------
@pytest.mark.parametrize(("uses", "count", "ok"), [(1, 1, True), (1, 2, False), (3, 3, True), (3, 4, False),
                                                   (3, 100, False)])  # fmt: skip
def test_apr03_check_use_counts_uses(uses: int, count: int, ok: bool) -> None:
    if ok:
        check_use(approved(uses=uses), count)
    else:
        error = refused(InvalidGrant, "invalid_grant", check_use, approved(uses=uses), count)
        assert "used" in error.description


def test_approval_claim_from_decision() -> None:
    assert approval_claim(approved()) == ApprovalClaim(id=APR_ID, by=ALICE, at=NOW - 5)


# -- check_pending ------------------------------------------------------------------------------
def test_check_pending() -> None:
    check_pending(approval(), now=NOW)
    refused(ExpiredToken, "expired_token", check_pending, approval(), now=NOW + 290)
    refused(ExpiredToken, "expired_token", check_pending, approval(status=ApprovalStatus.EXPIRED), now=NOW)
    for status in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED):
        error = refused(InvalidRequest, "invalid_request", check_pending, approval(status=status), now=NOW)
        assert status.value in error.description


# -- check_approver: separation of duties (APR-02) ----------------------------------------------
def finance(who: str = ALICE, *groups: str) -> Approver:
    return Approver(who, frozenset(groups or ("finance",)))


def test_apr02_member_of_the_group_may_approve() -> None:
    check_approver(approval(), finance(), task=task())


def test_apr02_agent_cannot_approve_own_request() -> None:
    error = refused(AccessDenied, "access_denied", check_approver, approval(), finance(AGENT), task=task())
    assert "party" in error.description


def test_apr02_requester_cannot_approve() -> None:
    request = binding(client=SVC, actors=(SVC,)).canonical()
    refused(AccessDenied, "access_denied", check_approver, approval(request=request), finance(SVC), task=task())


def test_apr02_any_actor_cannot_approve() -> None:
    other = "spiffe://tether.local/svc/c"
    request = binding(client=SVC, actors=(SVC, other)).canonical()
    refused(AccessDenied, "access_denied", check_approver, approval(request=request), finance(other), task=task())


def test_apr02_outsider_cannot_approve() -> None:
    error = refused(AccessDenied, "access_denied", check_approver, approval(), finance(BOB, "legal"), task=task())
    assert "`finance`" in error.description
    refused(AccessDenied, "access_denied", check_approver, approval(), Approver(BOB, frozenset()), task=task())


def test_apr02_every_named_group_is_needed_by_one_approver() -> None:
    both = approval(groups=("finance", "legal"))
    check_approver(both, finance(ALICE, "finance", "legal"), task=task())
    refused(AccessDenied, "access_denied", check_approver, both, finance(ALICE, "finance"), task=task())
    refused(AccessDenied, "access_denied", check_approver, both, finance(ALICE, "legal"), task=task())


def test_apr02_task_creator_cannot_approve_unless_the_policy_allows() -> None:
    creator = finance(CREATOR)
    error = refused(AccessDenied, "access_denied", check_approver, approval(), creator, task=task())
    assert "creator" in error.description
    check_approver(approval(creator_may_approve=True), creator, task=task())


def test_apr02_creator_exception_does_not_admit_the_creator_outside_the_group() -> None:
    refused(AccessDenied, "access_denied", check_approver, approval(creator_may_approve=True), finance(CREATOR, "ops"),
            task=task())  # fmt: skip


def test_apr02_no_recorded_creator_is_nobody() -> None:
    check_approver(approval(), finance(), task=task(created_by=None))


def test_apr02_subject_cannot_approve_for_a_named_group() -> None:
    # the end user the request acts for is a party to it: not their own approver in `finance`
    error = refused(AccessDenied, "access_denied", check_approver, approval(), finance(USER), task=task())
    assert "party" in error.description


def test_apr02_subject_group_only_the_tasks_user() -> None:
    held = approval(groups=(SUBJECT_GROUP,))
    check_approver(held, Approver(USER, frozenset()), task=task())
    error = refused(AccessDenied, "access_denied", check_approver, held, finance(ALICE, SUBJECT_GROUP), task=task())
    assert "user this task acts for" in error.description


def test_apr02_subject_group_without_an_end_user_nobody_can_approve() -> None:
    held = approval(groups=(SUBJECT_GROUP,))
    for who in (USER, ALICE, "None", ""):
        refused(AccessDenied, "access_denied", check_approver, held, Approver(who, frozenset({SUBJECT_GROUP})),
                task=task(on_behalf_of=None))  # fmt: skip


def test_apr02_subject_and_group_needs_the_user_in_the_group() -> None:
    held = approval(groups=("finance", SUBJECT_GROUP))
    check_approver(held, finance(USER), task=task())
    refused(AccessDenied, "access_denied", check_approver, held, Approver(USER, frozenset()), task=task())
    refused(AccessDenied, "access_denied", check_approver, held, finance(ALICE), task=task())


def test_apr02_agent_is_never_the_subject_approver() -> None:
    # a task an agent runs for itself (on_behalf_of = the agent) cannot be approved by the agent
    held = approval(groups=(SUBJECT_GROUP,))
    refused(AccessDenied, "access_denied", check_approver, held, Approver(AGENT, frozenset()),
            task=task(on_behalf_of=AGENT))  # fmt: skip


def test_apr02_subject_who_created_the_task_needs_the_creator_exception() -> None:
    held = approval(groups=(SUBJECT_GROUP,))
    own = task(created_by=USER)
    refused(AccessDenied, "access_denied", check_approver, held, Approver(USER, frozenset()), task=own)
    check_approver(dataclasses.replace(held, creator_may_approve=True), Approver(USER, frozenset()), task=own)


# -- check_grant ---------------------------------------------------------------------------------
def grant(uses: object = 1, window: object = 0) -> tuple[int, int]:
    return check_grant(uses, window, now=NOW, max_uses=20, max_window=3600, default_window=300)


def test_check_grant_defaults_and_bounds() -> None:
    assert grant() == (1, NOW + 300)
    assert grant(20, 3600) == (20, NOW + 3600)
    assert grant(1, 1) == (1, NOW + 1)


@pytest.mark.parametrize("uses", [0, -1, 21, True, False, 1.0, "1", None, [1]])
def test_check_grant_uses_refused(uses: object) -> None:
    error = refused(InvalidRequest, "invalid_request", grant, uses)
    assert "`uses`" in error.description


@pytest.mark.parametrize("window", [-1, 3601, True, False, 1.5, "60", None, {}])
def test_check_grant_window_refused(window: object) -> None:
    error = refused(InvalidRequest, "invalid_request", grant, 1, window)
    assert "`window`" in error.description


# -- check_call (APR-01 at the resource) ---------------------------------------------------------
PAY_CALL = parse_tool_call({"name": "pay", "arguments": {"amount": 10}})
PAY_TCTX = tool_call_context("pay", {"amount": 10})
CLAIM = ApprovalClaim(id=APR_ID, by=ALICE, at=NOW)
OTHER_CALL = parse_tool_call({"name": "pay", "arguments": {"amount": 11}})

CALL_MATRIX: list[tuple[str | None, ApprovalClaim | None, ToolCall | None, tuple[str, ...], str | None]] = [
    # tctx, apr, call, required -> None (served) or the error
    (None, None, None, (), None),  # an ordinary request
    (None, None, PAY_CALL, (), None),  # an ordinary tool call nobody holds
    (PAY_TCTX, None, PAY_CALL, (), None),  # a tctx token serves its call
    (PAY_TCTX, CLAIM, PAY_CALL, ("finance",), None),  # the approved call
    (None, CLAIM, None, ("finance",), None),  # an approved plain request
    (PAY_TCTX, None, OTHER_CALL, (), "access_denied"),  # changed arguments
    (PAY_TCTX, CLAIM, OTHER_CALL, ("finance",), "access_denied"),  # changed arguments, even when approved
    (PAY_TCTX, None, None, (), "access_denied"),  # a tctx token on a plain HTTP request
    (PAY_TCTX, CLAIM, None, ("finance",), "access_denied"),
    (None, None, PAY_CALL, ("finance",), "approval_required"),  # held, no approval
    (PAY_TCTX, None, PAY_CALL, ("finance",), "approval_required"),  # the call named, but not approved
    (None, CLAIM, PAY_CALL, ("finance",), "approval_required"),  # approved, but not for this call
    (None, None, None, ("finance",), "approval_required"),  # a held plain request
]


@pytest.mark.parametrize(("tctx", "apr", "call", "required", "outcome"), CALL_MATRIX)
def test_apr01_check_call_matrix(tctx: str | None, apr: ApprovalClaim | None, call: ToolCall | None,
                                 required: tuple[str, ...], outcome: str | None) -> None:  # fmt: skip
    if outcome is None:
        check_call(tctx, apr, call, required=required)
        return
    with pytest.raises(AccessDenied) as caught:
        check_call(tctx, apr, call, required=required)
    assert caught.value.error == "access_denied"
    assert isinstance(caught.value, ApprovalRequired) is (outcome == "approval_required")


def test_apr01_approval_required_names_groups_and_the_call() -> None:
    with pytest.raises(ApprovalRequired) as caught:
        check_call(None, None, PAY_CALL, required=["legal", "finance"])
    error = caught.value
    assert error.groups == ("finance", "legal") and error.tctx == PAY_TCTX
    assert error.fields == {"approval_required": ["finance", "legal"], "tctx": PAY_TCTX}
    assert error.status == 403
    with pytest.raises(ApprovalRequired) as plain:
        check_call(None, None, None, required=["finance"])
    assert plain.value.tctx is None and "tctx" not in plain.value.fields


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["finance", "a", "Fin.ance_1-x", "9" * 64])
def test_valid_group(name: str) -> None:
    assert valid_group(name)


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a" * 65, "fin/ance", "ä", None, 7, ["finance"]])
def test_invalid_group(name: object) -> None:
    assert not valid_group(name)


def test_valid_approval_id() -> None:
    assert valid_approval_id(APR_ID) and valid_approval_id("apr_" + "-_aZ09" * 3 + "abcd")
    for bad in ("apr_" + "A" * 21, "apr_" + "A" * 23, "APR_" + "A" * 22, "apr_" + "A" * 21 + "=", "apr_" + "A" * 21 + "\n",
                None, 5):  # fmt: skip
        assert not valid_approval_id(bad), bad
