"""Loading a directory of ``.cedar`` files into one validated, versioned policy set.

Each file is cut into statements at top-level ``;`` (outside strings and comments), and
each statement is parsed and validated against ``tether.cedarschema`` on its own, so
a problem is reported as ``file:line: reason``. A set with any problem is refused as
a whole (``PolicyLoadError``): the caller keeps the previous set in force. Policies
are named by their ``@id`` annotation, else ``file:line``; ``@shadow`` marks a policy
log-only. The version is a hash of every file's name and content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from tether.errors import TetherError
from tether.filemodes import others_can_write
from tether.rules.approval import ANNOTATION, CREATOR_ANNOTATION, valid_group

__all__ = [
    "LoadedPolicy",
    "PolicyLoadError",
    "PolicyProblem",
    "PolicyVersion",
    "context_attributes",
    "directory_fingerprint",
    "load_directory",
    "load_texts",
    "read_directory",
    "schema",
    "schema_text",
    "split_statements",
]

MAX_POLICY_FILES = 256
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class PolicyLoadError(TetherError):
    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems[:5]) + (" …" if len(problems) > 5 else ""))


@dataclass(frozen=True)
class LoadedPolicy:
    id: str
    file: str
    line: int
    effect: str
    shadow: bool
    #: ``@approval("group")``: a request this permit determines is held for that group's yes (``rules.approval``)
    approval: str | None = None
    #: ``@approval_creator("allowed")``: the task's creator may give that approval (APR-02)
    creator_may_approve: bool = False


@dataclass(frozen=True)
class PolicyVersion:
    """An immutable, validated policy set; swapped as a whole on reload."""

    version: str
    policies: tuple[LoadedPolicy, ...]
    enforced: Any  # cedarpy.PolicySet of non-shadow policies
    full: Any  # cedarpy.PolicySet of every policy (None when there are no shadow policies)
    sources: Mapping[str, str] = field(default_factory=dict)
    #: context attributes any policy reads (``None``: a policy uses ``context`` as a whole)
    context_attributes: frozenset[str] | None = None

    @property
    def shadow_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.policies if p.shadow)

    @functools.cached_property
    def approvals(self) -> Mapping[str, LoadedPolicy]:
        """The policies that hold requests for approval, by id."""
        return {p.id: p for p in self.policies if p.approval is not None}


def schema_text() -> str:
    return (resources.files("tether.policy") / "tether.cedarschema").read_text(encoding="utf-8")


_SCHEMA: list[Any] = []


def schema() -> Any:
    """The parsed tether schema (parsed once per process)."""
    if not _SCHEMA:
        _SCHEMA.append(cedarpy.Schema.from_str(schema_text()))
    return _SCHEMA[0]


def split_statements(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line, statement)`` for each top-level ``;``-terminated statement.

    Understands ``"…"`` strings with backslash escapes and ``//`` comments, which is all
    the lexical structure Cedar has where a ``;`` could hide. A trailing statement without
    ``;`` is yielded too, so the parser reports it.
    """
    line, start, start_line, i = 1, 0, None, 0
    in_string = in_comment = False
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
            in_comment = False
        elif in_comment:
            pass
        elif in_string:
            if char == "\\":
                i += 1
            elif char == '"':
                in_string = False
        elif char == "/" and text.startswith("//", i):
            in_comment = True
        else:
            if start_line is None and not char.isspace():
                start_line = line
            if char == '"':
                in_string = True
            elif char == ";":
                yield (start_line or line), text[start : i + 1]
                start, start_line = i + 1, None
        i += 1
    if start_line is not None:
        yield start_line, text[start:]


def _statement(file: str, line: int, chunk: str, problems: list[PolicyProblem]) -> dict[str, Any] | None:
    try:
        est = json.loads(cedarpy.policies_to_json_str(chunk))
    except ValueError as exc:
        problems.append(PolicyProblem(file, line, f"syntax error: {exc}"))
        return None
    if est.get("templates"):
        problems.append(PolicyProblem(file, line, "policy templates are not supported"))
        return None
    policies = list(est.get("staticPolicies", {}).values())
    if len(policies) != 1:
        problems.append(PolicyProblem(file, line, "expected exactly one policy"))
        return None
    result = cedarpy.validate_policies(chunk, schema())
    for error in result.errors:
        problems.append(PolicyProblem(file, line, f"does not match the schema: {error.error}"))
    return dict(policies[0]) if result.validation_passed else None


def _approval(annotations: Mapping[str, Any], effect: str, where: PolicyProblem, problems: list[PolicyProblem]) -> str | None:
    """``@approval("group")``: only on a ``permit`` (a forbid refuses; there is nothing to approve),
    naming a group (``rules.approval.valid_group``) or ``subject``."""
    if ANNOTATION not in annotations:
        return None
    group = annotations[ANNOTATION]
    if effect != "permit":
        problems.append(PolicyProblem(where.file, where.line, f"@{ANNOTATION} only applies to a permit"))
        return None
    if not valid_group(group):
        example = f'@{ANNOTATION}("finance")'
        problems.append(PolicyProblem(where.file, where.line, f"@{ANNOTATION} must name an approver group, e.g. {example}"))
        return None
    return str(group)


def load_texts(files: Mapping[str, str]) -> PolicyVersion:
    """Parse and validate policy files (``name → text``); raises ``PolicyLoadError``."""
    problems: list[PolicyProblem] = []
    loaded: list[LoadedPolicy] = []
    enforced: dict[str, Any] = {}
    full: dict[str, Any] = {}
    for name in sorted(files):
        for line, chunk in split_statements(files[name]):
            est = _statement(name, line, chunk, problems)
            if est is None:
                continue
            annotations = est.get("annotations") or {}
            policy_id = str(annotations.get("id") or f"{name}:{line}")
            if policy_id in full:
                problems.append(PolicyProblem(name, line, f"duplicate policy id `{policy_id}`"))
                continue
            shadow = "shadow" in annotations and str(annotations["shadow"]).lower() != "false"
            approval = _approval(annotations, str(est.get("effect")), PolicyProblem(name, line, ""), problems)
            creator = annotations.get(CREATOR_ANNOTATION)
            if creator is not None and (creator != "allowed" or approval is None):
                problems.append(PolicyProblem(name, line, f'@{CREATOR_ANNOTATION}("allowed") goes with @{ANNOTATION}'))
            loaded.append(LoadedPolicy(policy_id, name, line, str(est.get("effect")), shadow, approval, creator == "allowed"))
            full[policy_id] = est
            if not shadow:
                enforced[policy_id] = est
    if problems:
        raise PolicyLoadError(problems)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\x00" + files[name].encode() + b"\x00")
    return PolicyVersion(
        version=digest.hexdigest()[:16],
        policies=tuple(loaded),
        enforced=_policy_set(enforced),
        full=_policy_set(full) if len(full) != len(enforced) else None,
        sources=dict(files),
        context_attributes=context_attributes(list(full.values())),
    )


def context_attributes(node: Any) -> frozenset[str] | None:
    """Every ``context.x`` / ``context has x`` a policy EST reads; ``None`` if ``context`` is used whole.

    Passing only these to Cedar makes evaluation cheaper and decisions cacheable, and
    cannot change a decision: an attribute no policy reads cannot affect one.
    """
    found: set[str] = set()

    def walk(value: Any, parent_reads_attr: bool) -> bool:
        if isinstance(value, dict):
            for op in (".", "has"):
                body = value.get(op)
                if isinstance(body, dict) and body.get("left") == {"Var": "context"} and isinstance(body.get("attr"), str):
                    found.add(body["attr"])
                    return True
            if value == {"Var": "context"} and not parent_reads_attr:
                return False
            return all(walk(v, False) for v in value.values())
        if isinstance(value, list):
            return all(walk(v, False) for v in value)
        return True

    return frozenset(found) if walk(node, False) else None


def _policy_set(policies: Mapping[str, Any]) -> Any:
    return cedarpy.PolicySet.from_json_str(json.dumps({"staticPolicies": dict(policies), "templates": {}, "templateLinks": []}))


def _cedar_files(directory: Path) -> list[Path]:
    """The policy files, refused if the directory or a file is writable by group or others (``tether.filemodes``)."""
    if not directory.is_dir():
        raise PolicyLoadError([PolicyProblem(str(directory), 0, "policy directory does not exist")])
    writable = "is writable by group or others (chmod go-w)"
    if others_can_write(directory):
        raise PolicyLoadError([PolicyProblem(str(directory), 0, f"policy directory {writable}")])
    files = sorted(p for p in directory.iterdir() if p.suffix == ".cedar" and p.is_file())
    if len(files) > MAX_POLICY_FILES:
        raise PolicyLoadError([PolicyProblem(str(directory), 0, f"more than {MAX_POLICY_FILES} policy files")])
    unsafe = [p.name for p in files if others_can_write(p)]
    if unsafe:
        raise PolicyLoadError([PolicyProblem(name, 0, f"policy file {writable}") for name in unsafe])
    return files


def read_directory(directory: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in _cedar_files(directory):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PolicyLoadError([PolicyProblem(path.name, 0, f"cannot be read: {exc.strerror or exc}")]) from exc
        if len(data) > MAX_FILE_BYTES:
            raise PolicyLoadError([PolicyProblem(path.name, 0, f"file exceeds {MAX_FILE_BYTES} bytes")])
        try:
            out[path.name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyLoadError([PolicyProblem(path.name, 0, "file is not UTF-8")]) from exc
    return out


def load_directory(directory: Path) -> PolicyVersion:
    return load_texts(read_directory(directory))


_RACY_NS = 2_000_000_000


def directory_fingerprint(directory: Path, *, now_ns: int | None = None) -> tuple[Any, ...]:
    """Changes whenever a ``.cedar`` file is added, removed, renamed or rewritten.

    Name, modification time and size identify a file; a file modified in the last two
    seconds is also identified by its content hash, because an edit within one timestamp
    tick that keeps the size would otherwise go unseen (git's "racy" rule).
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        entries = []
        with os.scandir(directory) as listing:
            for entry in listing:
                if not entry.name.endswith(".cedar"):
                    continue
                stat = entry.stat()
                recent = now_ns - stat.st_mtime_ns < _RACY_NS
                digest = hashlib.sha256(Path(entry.path).read_bytes()).hexdigest() if recent else ""
                entries.append((entry.name, stat.st_mtime_ns, stat.st_size, stat.st_mode, digest))
        info = os.stat(directory)
        return (os.path.realpath(directory), info.st_mtime_ns, info.st_mode, tuple(sorted(entries)))
    except OSError:
        return ("missing",)
