"""``[[approver_groups]]``: who may approve a held request, by name or by the provider's group claim.

A group lists approver principals (``members``, as ``[approvals] principal`` renders them from
the provider's claims) and/or values of the provider's ``group_claim`` (``idp_groups``) that make
a member. ``subject`` is reserved: it names the end user a task acts for (``rules.approval``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.config.identities import check_row
from tether.config.scalars import typed
from tether.errors import ConfigError
from tether.rules.approval import SUBJECT_GROUP, valid_group
from tether.rules.principal import is_principal

__all__ = ["ApproverGroup", "parse_approver_groups"]


@dataclass(frozen=True)
class ApproverGroup:
    name: str
    members: tuple[str, ...] = ()
    idp_groups: tuple[str, ...] = ()


def _strings(key: str, value: Any) -> tuple[str, ...]:
    items = typed(key, value, list)
    if not all(isinstance(v, str) and v for v in items):
        raise ConfigError(key, "must be a list of non-empty strings")
    return tuple(items)


def parse_approver_groups(data: Mapping[str, Any]) -> tuple[ApproverGroup, ...]:
    value = data.get("approver_groups", [])
    if not isinstance(value, list):
        raise ConfigError("approver_groups", "must be an array of tables")
    groups: dict[str, ApproverGroup] = {}
    for i, raw in enumerate(value):
        key = f"approver_groups[{i}]"
        row = check_row(key, raw, {"name", "members", "idp_groups"}, {"name"})
        name = typed(f"{key}.name", row["name"], str)
        if not valid_group(name) or name == SUBJECT_GROUP:
            raise ConfigError(f"{key}.name", f"must be a group name (`{SUBJECT_GROUP}` is reserved for the task's user)")
        if name in groups:
            raise ConfigError(f"{key}.name", f"group `{name}` is defined twice")
        members = _strings(f"{key}.members", row.get("members", []))
        for member in members:
            if not is_principal(member):
                raise ConfigError(f"{key}.members", f"`{member:.100}` is not a principal, e.g. `user:alice@example.com`")
        idp_groups = _strings(f"{key}.idp_groups", row.get("idp_groups", []))
        if not members and not idp_groups:
            raise ConfigError(key, "needs members or idp_groups: a group nobody is in can approve nothing")
        groups[name] = ApproverGroup(name, members, idp_groups)
    return tuple(groups.values())
