"""WEB-03: no inline script, inline style or remote asset in any console template or the script (CSP: 'self' only)."""

from __future__ import annotations

import re
from pathlib import Path

import tether.console

ROOT = Path(tether.console.__file__).parent
TEMPLATES = sorted((ROOT / "templates").glob("*.html"))


def test_web03_templates_have_no_inline_script_style_or_remote_assets() -> None:
    assert len(TEMPLATES) >= 8
    for template in TEMPLATES:
        text = template.read_text(encoding="utf-8")
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert re.search(r'\bsrc="/static/', tag), f"{template.name}: inline script {tag}"
        assert not re.search(r"<style\b|\sstyle=", text), f"{template.name}: inline style"
        assert not re.search(r"\son[a-z]+=", text), f"{template.name}: inline event handler"
        assert not re.search(r'(?:src|href)="(?:https?:)?//', text), f"{template.name}: remote asset"


def test_web03_script_builds_no_html_from_event_data() -> None:
    script = (ROOT / "static" / "console.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert "textContent" in script  # event data is written as text only
