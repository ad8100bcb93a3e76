"""The rings, enforced: pure rules, and a map of which packages may not import which.

STYLE rule 1: ``tether.rules`` is pure — no clock, environment, randomness, event loop,
storage or HTTP. Every module under ``src/tether/rules`` is parsed with ``ast`` and its
imports checked against the forbidden list; the tether modules the rules depend on
(transitively) are held to the same list, so purity cannot be bypassed through a helper
such as ``tether.clock``.

The ring map (``RINGS``) holds each listed module, and every tether module it imports at
run time (transitively), to a list of forbidden imports; a failure names the module, the
forbidden import and the chain of imports that reaches it. Imports under
``if TYPE_CHECKING:`` are not run and do not count for the map.
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


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST, *, runtime_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``runtime_only``, not the body of an ``if TYPE_CHECKING:``."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if runtime_only and _is_type_checking(node):
            assert isinstance(node, ast.If)
            todo.extend([node.test, *node.orelse])
        else:
            todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(source: str, module: str, *, is_package: bool = False, runtime_only: bool = False) -> set[str]:
    """Fully qualified names imported by ``source`` (relative imports resolved against ``module``)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in _nodes(ast.parse(source), runtime_only=runtime_only):
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


# --- the ring map -------------------------------------------------------------------------------

#: ring → (the modules or packages it holds, the imports forbidden to them and to what they import)
RINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "services import no Starlette and nothing from tether.web": (
        ("tether.sts.exchange", "tether.sts.tasks", "tether.sts.introspection", "tether.sts.attribution"),
        ("starlette", "tether.web"),
    ),
    "the store imports nothing from the STS, the gateway or audit checkpoints": (
        ("tether.store",),
        ("tether.sts", "tether.gateway", "tether.audit.checkpoint"),
    ),
    "config imports no feature package": (
        ("tether.config",),
        ("tether.gateway", "tether.monitor", "tether.sts", "tether.resource", "tether.agent", "tether.report", "tether.cli"),
    ),
    "the resource and agent SDKs import nothing from the store": (("tether.resource", "tether.agent"), ("tether.store",)),
}


def _modules_in(name: str) -> list[str]:
    """``name`` and, for a package, every module below it."""
    path = _path_of(name)
    assert path is not None, f"{name} is not a module of src/"
    if path.name != "__init__.py":
        return [name]
    return sorted(_module_name(p) for p in path.parent.rglob("*.py"))


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def ring_violations(holds: tuple[str, ...], forbidden: tuple[str, ...], sources: dict[str, str] | None = None) -> list[str]:
    """One line per forbidden import reachable at run time from a module of ``holds``, with its chain.

    ``sources`` replaces the text of some modules (the checker's own test adds an import that way).
    """
    sources = sources or {}
    found: dict[str, str] = {}
    for start in [m for name in holds for m in _modules_in(name)]:
        via: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            module = todo.pop()
            path = _path_of(module)
            if path is None:  # ``from tether.x import name`` where name is not a module
                continue
            text = sources.get(module) or path.read_text(encoding="utf-8")
            for name in sorted(imports_of(text, module, is_package=path.name == "__init__.py", runtime_only=True)):
                if _is_under(name, forbidden):
                    chain = [module]
                    while (parent := via[chain[-1]]) is not None:
                        chain.append(parent)
                    found.setdefault(f"{start} imports {name}", " -> ".join([*reversed(chain), name]))
                elif name.startswith("tether.") and name not in via:
                    via[name] = module
                    todo.append(name)
    return [f"{what} (via {chain})" for what, chain in sorted(found.items())]


@pytest.mark.parametrize("ring", sorted(RINGS))
def test_ring_map_holds(ring: str) -> None:
    holds, forbidden = RINGS[ring]
    violations = ring_violations(holds, forbidden)
    assert violations == [], f"{ring}:\n  " + "\n  ".join(violations)


def test_ring_checker_reports_an_added_import_with_its_chain() -> None:
    """Positive control for the map: ``import starlette`` added to a service is reported, and so is an
    import that reaches tether.web through another module."""
    holds, forbidden = RINGS["services import no Starlette and nothing from tether.web"]
    exchange = (SRC / "tether" / "sts" / "exchange.py").read_text(encoding="utf-8")
    assert ring_violations(holds, forbidden) == []
    added = ring_violations(holds, forbidden, {"tether.sts.exchange": exchange + "\nimport starlette\n"})
    assert added == ["tether.sts.exchange imports starlette (via tether.sts.exchange -> starlette)"]
    context = (SRC / "tether" / "sts" / "context.py").read_text(encoding="utf-8")
    indirect = ring_violations(holds, forbidden, {"tether.sts.context": context + "\nfrom tether.web import errors\n"})
    assert "tether.sts.tasks imports tether.web (via tether.sts.tasks -> tether.sts.context -> tether.web)" in indirect


def test_type_only_imports_do_not_count_for_the_map() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tether.gateway.routes import GatewayRoute\n"
    assert "tether.gateway.routes" in imports_of(source, "tether.config.model")
    assert "tether.gateway.routes" not in imports_of(source, "tether.config.model", runtime_only=True)
    assert "tether.gateway.routes" in imports_of(source.replace("TYPE_CHECKING:", "True:"), "x", runtime_only=True)


def test_every_config_loader_registers_the_feature_tables() -> None:
    """``tether.config`` knows no feature: a module that loads a config imports ``tether.features`` so that
    ``[[gateway.routes]]`` and ``[monitor.detectors.*]`` are validated (an unregistered table refuses to load)."""
    loaders = []
    for path in sorted((SRC / "tether").rglob("*.py")):
        module = _module_name(path)
        if _is_under(module, ("tether.config",)):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if called & {"load_config", "parse_config"}:
            loaders.append(module)
            names = imports_of(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
            assert "tether.features" in names, f"{module} loads a config but does not import tether.features"
    assert {"tether.cli.common", "tether.sts.asgi", "tether.provision"} <= set(loaders)


def test_the_store_and_the_audit_service_name_one_checkpoint_kind() -> None:
    """The store names the checkpoint kind itself (it may not import tether.audit.checkpoint): the same one."""
    from tether.audit.checkpoint import CHECKPOINT_KIND
    from tether.store.rows import CHECKPOINT_KIND as STORE_CHECKPOINT_KIND

    assert STORE_CHECKPOINT_KIND == CHECKPOINT_KIND
