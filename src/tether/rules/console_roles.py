"""Console roles (SECURITY WEB-05): who may look, who may act, who may decide approvals.

``viewer`` reads every page; ``operator`` also ends and suspends tasks and blocks or unblocks
agents and subjects; ``approver`` also decides approvals it is a member for (separation of duties
still applies: ``rules.approval.check_approver``). ``operator`` and ``approver`` include
``viewer``. Roles are granted by principal (``[console] viewers/operators/approvers``) or by the
provider's group claim (``[console.oidc] *_groups``) and recomputed on every request, so a role
taken away in the configuration is gone at the next click, not at the next login.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["APPROVER", "OPERATOR", "ROLES", "VIEWER", "grant", "may"]

VIEWER = "viewer"
OPERATOR = "operator"
APPROVER = "approver"
ROLES = (VIEWER, OPERATOR, APPROVER)

#: what each kind of request needs
_NEEDS = {"view": VIEWER, "act": OPERATOR, "approve": APPROVER}


def grant(
    principal: str,
    groups: Collection[str],
    *,
    members: Mapping[str, Collection[str]],
    group_roles: Mapping[str, Collection[str]],
) -> frozenset[str]:
    """The roles ``principal`` holds: listed by name in ``members[role]`` or holding a group of
    ``group_roles[role]``; any role implies ``viewer``."""
    held = set(groups)
    roles = {role for role in ROLES if principal in members.get(role, ()) or held & set(group_roles.get(role, ()))}
    if roles:
        roles.add(VIEWER)
    return frozenset(roles)


def may(roles: Collection[str], kind: str) -> bool:
    """Whether ``roles`` allow a request of ``kind`` (``view``, ``act`` or ``approve``); unknown kinds never."""
    needed = _NEEDS.get(kind)
    return needed is not None and needed in roles
