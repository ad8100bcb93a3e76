"""STYLE rule 1: ``tether.rules`` is pure — no clock, environment, randomness, event loop, storage or HTTP.

Every module under ``src/tether/rules`` is parsed with ``ast`` and its imports checked against the
forbidden list; the tether modules the rules depend on (transitively) are held to the same list,
so purity cannot be bypassed through a helper such as ``tether.clock``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
RULES = SRC / "tether" / "rules"
FORBIDDEN = frozenset(
    {"time", "os", "random", "secrets", "asyncio", "sqlite3", "psycopg", "redis", "httpx", "starlette", "uvicorn"}
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _path_of(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Fully qualified names imported by ``source`` (relative imports resolved against ``module``)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            # __import__("time") / importlib.import_module("time") with a literal name
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def forbidden_in(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in FORBIDDEN}


def _rules_modules() -> list[Path]:
    return sorted(RULES.rglob("*.py"))


def test_rules_package_found() -> None:
    names = {p.stem for p in _rules_modules()}
    assert {"jws", "dpop", "claims", "scope", "resource", "nonce", "principal", "task", "exchange"} <= names


@pytest.mark.parametrize("path", _rules_modules(), ids=lambda p: p.name)
def test_STYLE_1_rules_module_imports_nothing_impure(path: Path) -> None:
    module = _module_name(path)
    names = imports_of(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
    assert forbidden_in(names) == set(), f"{module} imports {sorted(forbidden_in(names))}"


def test_STYLE_1_tether_modules_reachable_from_rules_are_pure() -> None:
    """Follow ``tether.*`` imports from the rules transitively; none of them may import a forbidden module."""
    seen: dict[str, set[str]] = {}
    todo = [_module_name(p) for p in _rules_modules()]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _path_of(module)
        if path is None:  # ``from tether.x import name`` where name is not a module
            continue
        names = imports_of(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
        seen[module] = names
        todo.extend(n for n in names if n == "tether" or n.startswith("tether."))
    assert "tether.rules.jws" in seen and "tether.model" in seen and "tether.errors" in seen
    offenders = {module: sorted(forbidden_in(names)) for module, names in seen.items() if forbidden_in(names)}
    assert offenders == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time", {"time"}),
        ("import os.path", {"os.path"}),
        ("from os import environ", {"os", "os.environ"}),
        ("import secrets as s", {"secrets"}),
        ("from random import choice", {"random", "random.choice"}),
        ("def f():\n    import asyncio\n", {"asyncio"}),
        ("if True:\n    from httpx import Client\n", {"httpx", "httpx.Client"}),
        ("__import__('sqlite3')", {"sqlite3"}),
        ("import importlib\nimportlib.import_module('redis')", {"redis"}),
        ("try:\n    import psycopg\nexcept ImportError:\n    pass\n", {"psycopg"}),
        ("from starlette.requests import Request", {"starlette.requests", "starlette.requests.Request"}),
        ("import uvicorn", {"uvicorn"}),
    ],
)
def test_checker_detects_forbidden_imports(source: str, expected: set[str]) -> None:
    """Positive control for the checker itself: each of these would be reported."""
    names = imports_of(source, "tether.rules.example")
    assert expected <= names
    assert forbidden_in(names) == expected


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib",
        "from tether.model import Task",
        "from . import scope",
        "import timeit",
        "from osmosis import x",
        "import randomness",
    ],
)
def test_checker_ignores_allowed_imports(source: str) -> None:
    assert forbidden_in(imports_of(source, "tether.rules.example")) == set()


def test_relative_import_resolved() -> None:
    assert "tether.rules.scope" in imports_of("from .scope import parse_scope", "tether.rules.claims")
    assert "tether.model" in imports_of("from ..model import Task", "tether.rules.claims")
