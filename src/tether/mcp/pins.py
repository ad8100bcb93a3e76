"""The pinned tool catalogue of each MCP route: an operator approval, kept in a MAC'd file.

``tether mcp pin NAME`` lists the upstream's tools and records ``name -> digest``
(``tether.mcp.catalogue.tool_digest``) in ``<data_dir>/mcp-pins/<route>.json``; the gateway
then serves only pinned tools whose definition still digests the same.

Why a file and not the store: a pin is an operator approval, reviewed and versioned like the
policy directory and ``tether.toml`` (it can be diffed, backed up and shipped with the
configuration), not runtime state that replicas write. Why a MAC: whoever can write the data
directory must not be able to approve a tool. The file carries an HMAC-SHA256 (RFC 2104) over
the RFC 8785 canonical JSON of its content, under a key derived from the master key with HKDF
(RFC 5869, info ``tether mcp pins v1``); a file whose MAC does not verify is refused
(``PinsTampered``) and the route then serves no tool at all: fail closed, with an error saying
to re-pin. The route name is inside the MAC, so one route's pins cannot be copied to another.
Rotating the master key invalidates every pin file (``rekey_pins`` re-MACs them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tether.audit.chain import AuditEvent, AuditRecord
from tether.config import Config
from tether.errors import TetherError
from tether.filemodes import OWNER_DIR
from tether.keys.sealed import key_id, load_master_key
from tether.mcp.catalogue import tool_digest
from tether.rules.tool_call import canonical_json, valid_tool_name

if TYPE_CHECKING:
    from tether.store.protocol import Store

__all__ = [
    "PINS_DIR",
    "PinnedCatalogue",
    "PinsRolledBack",
    "PinsTampered",
    "check_current",
    "load_pins",
    "pin_tools",
    "pinned_event",
    "pins_key",
    "pins_path",
    "record_pins",
    "rekey_pins",
    "save_pins",
]

PINS_DIR = "mcp-pins"
_INFO = b"tether mcp pins v1"
_VERSION = 1


class PinsTampered(TetherError):
    """A pin file whose MAC does not verify (edited, copied from another route, or another master key)."""


@dataclass(frozen=True)
class PinnedCatalogue:
    route: str
    #: tool name -> ``tool_digest`` of its approved definition
    tools: Mapping[str, str] = field(default_factory=dict)
    pinned_at: float = 0.0
    #: who approved it (``operator:cli``)
    pinned_by: str = ""


def pins_key(master: bytes) -> bytes:
    """HMAC key for pin files (HKDF-SHA256, RFC 5869, info ``tether mcp pins v1``)."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO).derive(master)


def pins_path(config: Config, route: str) -> Path:
    if not route or "/" in route or route.startswith("."):
        raise ValueError("not a route name")
    return config.data_dir / PINS_DIR / f"{route}.json"


def pin_tools(route: str, tools: Sequence[Mapping[str, Any]], *, now: float, by: str) -> PinnedCatalogue:
    """A catalogue approving ``tools`` (a ``tools/list`` result) as they are now.

    Refuses (``ValueError``) a listing naming a tool twice or with a name MCP does not allow:
    such a catalogue cannot be approved, since a client could not tell which definition it gets."""
    pinned: dict[str, str] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not valid_tool_name(name):
            raise ValueError("the upstream lists a tool without a valid MCP tool name")
        if name in pinned:
            raise ValueError(f"the upstream lists tool `{name}` twice")
        pinned[name] = tool_digest(tool)
    return PinnedCatalogue(route=route, tools=dict(sorted(pinned.items())), pinned_at=now, pinned_by=by)


def _content(catalogue: PinnedCatalogue, kek: str) -> dict[str, Any]:
    return {
        "v": _VERSION,
        "route": catalogue.route,
        "tools": dict(catalogue.tools),
        "pinned_at": catalogue.pinned_at,
        "pinned_by": catalogue.pinned_by,
        "kek": kek,
    }


def _mac(key: bytes, content: Mapping[str, Any]) -> str:
    tag = hmac.new(key, canonical_json(content).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(tag).rstrip(b"=").decode("ascii")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _save(config: Config, catalogue: PinnedCatalogue, master: bytes) -> Path:
    path = pins_path(config, catalogue.route)
    content = _content(catalogue, key_id(master))
    document = {**content, "mac": _mac(pins_key(master), content)}
    _write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def save_pins(config: Config, catalogue: PinnedCatalogue) -> Path:
    """Write the route's pin file (mode 0600, atomically replaced) and return its path."""
    return _save(config, catalogue, load_master_key(config.master_key_file))


def _parse(route: str, raw: bytes, master: bytes) -> PinnedCatalogue:
    bad = PinsTampered(f"the pinned catalogue of MCP route `{route}` does not verify; the route serves no tool"
                       f" until it is pinned again (tether mcp pin {route})")  # fmt: skip
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # a writer of the data directory may write anything
        raise bad from exc
    if not isinstance(document, dict) or not isinstance(document.get("mac"), str):
        raise bad
    content = {k: v for k, v in document.items() if k != "mac"}
    if content.get("kek") != key_id(master):
        raise PinsTampered(f"the pinned catalogue of MCP route `{route}` was made under another master key;"
                           f" pin it again (tether mcp pin {route})")  # fmt: skip
    try:
        expected = _mac(pins_key(master), content)
    except (ValueError, TypeError, RecursionError) as exc:
        raise bad from exc
    if not hmac.compare_digest(expected.encode(), str(document["mac"]).encode()):
        raise bad
    tools, pinned_at, pinned_by = content.get("tools"), content.get("pinned_at"), content.get("pinned_by")
    if (
        content.get("v") != _VERSION
        or content.get("route") != route
        or not isinstance(tools, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in tools.items())
        or not isinstance(pinned_at, int | float)
        or isinstance(pinned_at, bool)
        or not isinstance(pinned_by, str)
    ):
        raise bad
    return PinnedCatalogue(route=route, tools=dict(tools), pinned_at=float(pinned_at), pinned_by=pinned_by)


def load_pins(config: Config, route: str) -> PinnedCatalogue | None:
    """The route's pinned catalogue, ``None`` if it was never pinned.

    Raises ``PinsTampered`` if the file does not verify (edited, another route's, another
    master key's): the caller must then serve no tool of the route."""
    path = pins_path(config, route)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return _parse(route, raw, load_master_key(config.master_key_file))


def rekey_pins(config: Config, old_master: bytes, new_master: bytes) -> int:
    """Re-MAC every pin file that verifies under ``old_master`` (a master key rotation); returns
    how many. A file that does not verify is left as it is (it stays refused)."""
    directory = config.data_dir / PINS_DIR
    count = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            catalogue = _parse(path.stem, path.read_bytes(), old_master)
        except (PinsTampered, OSError):
            continue
        _save(config, catalogue, new_master)
        count += 1
    return count


class PinsRolledBack(PinsTampered):
    """A valid pin file older than the newest approval the audit log records for its route:
    written back from before a re-pin (a data-directory writer's rollback)."""


def pinned_event(catalogue: PinnedCatalogue, *, replaced: bool) -> AuditEvent:
    """The ``mcp.pinned`` approval record: route, the time of the approval and every digest."""
    detail = {"route": catalogue.route, "pinned_at": catalogue.pinned_at, "tools": dict(catalogue.tools), "replaced": replaced}
    return AuditEvent(kind="mcp.pinned", outcome="ok", principal=catalogue.pinned_by or None, detail=detail)


async def record_pins(config: Config, store: Store, catalogue: PinnedCatalogue) -> Path:
    """Save a pin file and its ``mcp.pinned`` record; an approval that is not audited is not made
    (the previous file is put back if the record cannot be written)."""
    path = pins_path(config, catalogue.route)
    before = path.read_bytes() if path.exists() else None
    save_pins(config, catalogue)
    try:
        await store.append_audit(pinned_event(catalogue, replaced=before is not None), now=catalogue.pinned_at)
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
        raise
    return path


def check_current(catalogue: PinnedCatalogue, recorded: AuditRecord | None) -> None:
    """Refuse a pin file that is not the newest approval the audit log records for its route
    (``Store.mcp_pin_latest_audit``): older, or as old with other digests. With no record (a
    catalogue pinned without the CLI) the MAC alone vouches for the file."""
    if recorded is None:
        return
    at = recorded.detail.get("pinned_at")
    newest = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
    if newest is None:
        return  # an approval recorded before pinned_at was: it orders nothing
    if catalogue.pinned_at < newest or (
        catalogue.pinned_at == newest and recorded.detail.get("tools") != dict(catalogue.tools)
    ):
        raise PinsRolledBack(
            f"pin file of route `{catalogue.route}` (pinned at {catalogue.pinned_at:.0f}) is older than the approval "
            f"the audit log records (seq {recorded.seq}, pinned at {newest:.0f}): re-pin the route"
        )
