"""Agent SDK: one ``httpx.Auth`` that exchanges per audience and proves possession per request.

from tether.agent import Agent, DevIdentity
session = Agent("http://127.0.0.1:8700", identity).session(task_id)
httpx.Client(auth=session.auth())
httpx2.AsyncClient(auth=session.mcp_auth())   # the MCP client SDK (mcp extra)
"""

from tether.agent.auth import DiscoveryError, DPoPAuth, SessionEnded
from tether.agent.exchange import ExchangeError
from tether.agent.identity import DevIdentity, FileIdentity, IdentitySource, WorkloadApiIdentity, identity_from_environment
from tether.agent.onward import Onward
from tether.agent.proof import DPoPKey
from tether.agent.session import Agent, TaskSession

__all__ = [
    "Agent",
    "DPoPAuth",
    "DPoPKey",
    "DevIdentity",
    "DiscoveryError",
    "ExchangeError",
    "FileIdentity",
    "IdentitySource",
    "Onward",
    "SessionEnded",
    "TaskSession",
    "WorkloadApiIdentity",
    "identity_from_environment",
]
