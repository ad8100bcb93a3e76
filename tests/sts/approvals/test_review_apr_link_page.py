"""Review of issue 17: the link page shows what is bound, not what the requester wants seen (SECURITY APR-05).

``html.escape`` stops markup, not text that renders as other text: a right-to-left override
(U+202E) makes the payee ``\\u202eEMCA`` *look like* ``ACME`` while ``tctx`` binds the former;
zero-width and other format characters hide differences the same way. The page (like the CLI,
``tether.cli.output.plain``) must show every such character as a visible escape.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from approvals_api_kit import ALICE, ApprovalsEnv, approvals_env

HIDDEN = ["\u202e", "\u202d", "\u2066", "\u200b", "\u200d", "\ufeff", "\u00ad", "\x1b", "\r"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsEnv]:
    with approvals_env(tmp_path_factory.mktemp("review-link-page")) as environment:
        yield environment


def test_review_apr05_link_page_shows_invisible_and_reordering_characters_escaped(env: ApprovalsEnv) -> None:
    task = env.task()  # a purpose is printable text already (task creation refuses the rest)
    arguments = {"to": "\u202eEMCA", "iban": "DE89\u200b3704", "amount": 5, "memo\u2066": "x\u00ady\ufeff\x1b[2J\r"}
    approval = env.hold(task, arguments=arguments)
    page = env.api("GET", env.link(approval.id, ALICE, "approve"), None)
    assert page.status_code == 200, page.text
    for char in HIDDEN:
        assert char not in page.text, repr(char)
    for shown in ("\\u202eEMCA", "DE89\\u200b3704", "memo\\u2066", "x\\u00ady\\ufeff"):
        assert shown in page.text, shown
    assert "ACME" not in page.text  # control: nothing renders the bound payee as the one it imitates


def test_review_apr05_link_page_keeps_ordinary_text(env: ApprovalsEnv) -> None:
    """Control: printable non-ASCII text (names, currencies) is shown as it is, with its newlines."""
    approval = env.hold(env.task(purpose="Zahlung für Müller"), arguments={"to": "Société Générale €", "n": "a\nb"})
    page = env.api("GET", env.link(approval.id, ALICE, "approve"), None)
    assert "Société Générale €" in page.text
    assert "Zahlung für Müller" in page.text
