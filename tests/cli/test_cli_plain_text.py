"""Stored text is printed as plain text (issue 21 finding 8): no rich markup, emoji codes or terminal escapes.

A task purpose (or an agent id, scope, route owner, alert reason) is chosen by whoever created
it. Before the fix ``[link=…]`` added a hyperlink to the operator's terminal, ``[conceal]`` hid
text, and an unbalanced ``[/bold]`` made ``tether task list`` fail for every task.
"""

from __future__ import annotations

import io

from cli_support import tether

from helpers import RunningSts, create_task
from tether.cli.output import PlainConsole, print_table, styled

MARKUP = "[/bold] [link=https://evil.example]click[/link] [conceal]hidden[/conceal] :skull:"


def test_task_list_and_show_print_markup_in_stored_text_literally(shared_sts: RunningSts) -> None:
    task = create_task(shared_sts, purpose=MARKUP, scopes=["wiki:read"])
    config = str(shared_sts.config.path)
    listed = tether("task", "list", "--config", config, env={"COLUMNS": "400"})
    assert listed.returncode == 0, listed.stderr  # an unbalanced [/bold] used to fail the whole list
    assert task["id"] in listed.stdout
    shown = tether("task", "show", task["id"], "--config", config, env={"COLUMNS": "400"})
    assert shown.returncode == 0, shown.stderr
    assert MARKUP in shown.stdout, shown.stdout  # every bracket and word shown, nothing interpreted
    assert "\x1b]8;" not in shown.stdout  # no hyperlink escape sequence


def render(*values: object) -> str:
    out = io.StringIO()
    console = PlainConsole(file=out, force_terminal=True, width=400, color_system="standard", highlight=False)
    console.print(*values)
    return out.getvalue()


def test_control_characters_are_shown_as_escapes_never_sent_to_the_terminal() -> None:
    hostile = "agent\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\ \rover\x07"
    shown = render(hostile)
    assert "\x1b]8" not in shown and "\r" not in shown and "\x07" not in shown
    assert "\\x1b]8;;https://evil.example" in shown and "\\r" in shown


def test_table_cells_and_titles_are_literal() -> None:
    out = io.StringIO()
    from tether.cli import output

    saved = output.console
    output.console = PlainConsole(file=out, width=1000)
    try:
        print_table(f"title {MARKUP}", ["purpose"], [[MARKUP], ["\x1b[31mred"]])
    finally:
        output.console = saved
    text = out.getvalue()
    assert text.count("[/bold] [link=https://evil.example]click[/link] [conceal]hidden[/conceal]") == 2
    assert "\\x1b[31mred" in text


def test_tethers_own_styles_still_apply() -> None:
    """Positive control: styling that tether itself asks for is rendered as style, not text."""
    shown = render(styled(("created", "green"), " [not markup]"))
    assert "\x1b[32mcreated" in shown and "[not markup]" in shown
