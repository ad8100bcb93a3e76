"""All CLI output goes through here: rich tables for people, JSON for scripts, one-line errors.

Everything printed as a string is plain text. Task purposes, agent ids, scopes, audiences,
route owners and alert reasons are chosen by whoever created them, so a string is never
read as rich markup (``[link=…]``, ``[conceal]``, an unbalanced ``[/bold]`` that would make
a whole table fail), never as an emoji code, and its control characters — an ESC that
starts a terminal escape sequence, a carriage return that overwrites the line — are shown
as ``\\x1b``-style escapes. Styling is only ever tether's own: ``styled`` parts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

__all__ = ["PlainConsole", "console", "fail", "plain", "print_json", "print_mapping", "print_table", "styled"]


def plain(text: str) -> str:
    """``text`` with every character that is not printable (but newlines and tabs) as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in text)


class PlainConsole(Console):
    """A console that renders every string as literal text (no markup, no emoji, no control codes)."""

    def render_str(self, text: str, **options: Any) -> Text:
        options.update(markup=False, emoji=False)
        return super().render_str(plain(text), **options)


def styled(*parts: str | tuple[str, str]) -> Text:
    """tether's own styling: ``styled(("created", "green"), " ", path)``; every part is literal text."""
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(plain(part[0]), style=Style.parse(part[1]))
        else:
            out.append(plain(part))
    return out


console = PlainConsole(highlight=False)
_err = PlainConsole(stderr=True, highlight=False)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit (2 for configuration errors)."""
    _err.print(styled(("error:", "bold red"), " ", message), soft_wrap=True)
    raise SystemExit(code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def print_mapping(title: str, values: Mapping[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in values.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(v if isinstance(v, Text) else str(v) if v is not None else "-" for v in row))
    console.print(table)
