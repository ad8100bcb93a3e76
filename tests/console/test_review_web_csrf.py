"""Review of the console's CSRF refusals (SECURITY WEB-02, WEB-05): a forged POST proves nothing.

A POST whose CSRF token is missing or wrong carries the human's cookie only because the browser
attaches it to every request, including one another site's page sends: the human did not
necessarily send it. Such a refusal must not be pinned on the human (no audit record naming
them as the actor, nothing the refusal detectors count against them), and another site must not
be able to write one audit record per forged request (it is counted per source instead).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from consolekit import RunningConsole, running_console

from tether.console.web import COOKIE
from tether.monitor.base import is_proven
from tether.monitor.events import as_event


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningConsole]:
    with running_console(tmp_path_factory.mktemp("review-csrf"), extra_toml="[audit]\nrefusal_interval = 3600\n") as running:
        yield running


def test_web02_forged_post_is_not_blamed_on_the_human_whose_cookie_it_carried(console: RunningConsole) -> None:
    alice = console.login("operator", "console:alice-csrf")
    before = len(console.sts.audit())
    for _ in range(5):  # another site's page posting again and again with alice's ambient cookie
        refused = alice.post("/logout", {"csrf": "forged"}, headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert alice.get("/").status_code == 200  # nothing happened
    written = [r for r in console.sts.audit()[before:] if r.kind == "console.refused"]
    assert written, "a forged POST must still be audited"
    assert all(r.principal is None for r in written), [r.principal for r in written]
    assert len(written) == 1, "forged POSTs are counted per source, not written one by one"
    assert not is_proven(as_event(written[0]))  # the refusal detectors never count it against alice


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"csrf=x", "text/plain"),  # <form enctype="text/plain">
        (b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\nx\r\n--b--\r\n', "multipart/form-data; boundary=b"),
        (b"csrf=a&csrf=b", "application/x-www-form-urlencoded"),  # repeated field
        (b"x=" + b"a" * (70 * 1024), "application/x-www-form-urlencoded"),  # over the form limit
    ],
)
def test_web02_unreadable_forged_form_is_not_blamed_on_the_human_either(
    console: RunningConsole, body: bytes, content_type: str
) -> None:
    bob = console.login("operator", f"console:bob-{content_type.split('/', maxsplit=1)[0]}-{len(body)}")
    before = len(console.sts.audit())
    headers = {"Content-Type": content_type, "Origin": "https://evil.example", "Cookie": f"{COOKIE}={bob.cookie}"}
    refused = bob.http.post(console.url + "/logout", content=body, headers=headers)
    assert 400 <= refused.status_code < 500 and "Traceback" not in refused.text
    assert bob.get("/").status_code == 200
    written = [r for r in console.sts.audit()[before:] if r.kind == "console.refused"]
    assert written and all(r.principal is None for r in written), [r.principal for r in written]
