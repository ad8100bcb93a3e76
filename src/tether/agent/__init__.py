"""Agent SDK: one ``httpx.Auth`` that exchanges per audience and proves possession per request.

from tether.agent import Agent, DevIdentity
session = Agent("http://127.0.0.1:8700", identity).session(task_id)
httpx.Client(auth=session.auth())
httpx2.AsyncClient(auth=session.mcp_auth())   # the MCP client SDK (mcp extra)

Over mTLS with an X.509-SVID (RFC 8705): Agent(sts_url, x509=FileX509Identity(cert, key, bundle)),
then session.client() presents the SVID and follows its rotation.
"""

from tether.agent.auth import DiscoveryError, DPoPAuth, SessionEnded
from tether.agent.exchange import ApprovalDenied, ApprovalExpired, ApprovalPending, ExchangeError
from tether.agent.identity import DevIdentity, FileIdentity, IdentitySource, WorkloadApiIdentity, identity_from_environment
from tether.agent.onward import Onward
from tether.agent.proof import DPoPKey
from tether.agent.session import Agent, TaskSession
from tether.agent.x509 import (
    AsyncX509Transport,
    FileX509Identity,
    WorkloadApiX509Identity,
    X509Credential,
    X509Source,
    X509Transport,
)

__all__ = [
    "Agent",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalPending",
    "AsyncX509Transport",
    "DPoPAuth",
    "DPoPKey",
    "DevIdentity",
    "DiscoveryError",
    "ExchangeError",
    "FileIdentity",
    "FileX509Identity",
    "IdentitySource",
    "Onward",
    "SessionEnded",
    "TaskSession",
    "WorkloadApiIdentity",
    "WorkloadApiX509Identity",
    "X509Credential",
    "X509Source",
    "X509Transport",
    "identity_from_environment",
]
