"""Review 2: the overview's latest alerts are stored text, shown as the alerts page shows them (WEB-03).

An alert record's detail is audit data, and data in the store is not trusted because it is in the
store (a database writer appends a record with a valid hash). Its ``severity`` must not choose the
badge's CSS classes (``low sr-only`` would hide it, ``critical`` style it), and its reason and
agent must show bidi controls as escapes, as ``/alerts`` does (``shown.plain``), not reorder text.
"""

from __future__ import annotations

import re
from pathlib import Path

from consolekit import running_console
from recordskit import append


def test_web03_a_stored_alert_chooses_no_css_class_and_shows_bidi_controls_on_the_overview(tmp_path: Path) -> None:
    with running_console(tmp_path) as console:
        now = console.sts.clock.now()
        append(console.runtime.config, "alert.raised", now=now, outcome="alert", task="tsk_x",
               detail={"detector": "det\u202eector", "severity": "low sr-only", "agent": "spiffe://a/\u202eevil",
                       "reason": "harmless\u202eexe.txt"})  # fmt: skip
        page = console.login("viewer", "console:review2").get("/")
    assert page.status_code == 200
    badges = re.findall(r'<span class="badge ([^"]*)">low sr-only</span>', page.text)
    assert badges, "the severity is shown"
    assert all("sr-only" not in classes.split() for classes in badges), badges
    assert "\u202e" not in page.text
    assert "harmless\\u202eexe.txt" in page.text and "spiffe://a/\\u202eevil" in page.text
