"""The frameworks a tether deployment is judged against, and which control answers which item.

Names and ids as published: the OWASP Top 10 for Agentic Applications 2026 (OWASP
GenAI Security Project, ASI01–ASI10, December 2025); the OWASP Top 10 for LLM Applications
2025 (LLM01–LLM10, November 2024), cited by the controls over MCP tools; the seven layers of CSA MAESTRO
(v1.0, February 2025; the ten-layer v2 is still in open review); and NIST AI RMF 1.0
(NIST AI 100-1, January 2023) functions and subcategories. A mapping says that the
control produces evidence for the item, not that it satisfies the item on its own:
tether governs identities and access, so the items about model behaviour (goal hijack,
code execution, memory poisoning) are listed as not covered rather than claimed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ASI",
    "LLM",
    "MAESTRO",
    "MAPPINGS",
    "NIST_FUNCTIONS",
    "NIST_SUBCATEGORIES",
    "FrameworkRefs",
    "mapping_for",
    "nist_function",
]

#: OWASP Top 10 for Agentic Applications 2026
ASI: Mapping[str, str] = {
    "ASI01": "Agent Goal Hijack",
    "ASI02": "Tool Misuse and Exploitation",
    "ASI03": "Identity and Privilege Abuse",
    "ASI04": "Agentic Supply Chain Vulnerabilities",
    "ASI05": "Unexpected Code Execution",
    "ASI06": "Memory and Context Poisoning",
    "ASI07": "Insecure Inter-Agent Communication",
    "ASI08": "Cascading Failures",
    "ASI09": "Human-Agent Trust Exploitation",
    "ASI10": "Rogue Agents",
}

#: OWASP Top 10 for LLM Applications 2025
LLM: Mapping[str, str] = {
    "LLM01": "Prompt Injection",
    "LLM02": "Sensitive Information Disclosure",
    "LLM03": "Supply Chain",
    "LLM04": "Data and Model Poisoning",
    "LLM05": "Improper Output Handling",
    "LLM06": "Excessive Agency",
    "LLM07": "System Prompt Leakage",
    "LLM08": "Vector and Embedding Weaknesses",
    "LLM09": "Misinformation",
    "LLM10": "Unbounded Consumption",
}

#: CSA MAESTRO (Multi-Agent Environment, Security, Threat, Risk, and Outcome) layers
MAESTRO: Mapping[str, str] = {
    "L1": "Foundation Models",
    "L2": "Data Operations",
    "L3": "Agent Frameworks",
    "L4": "Deployment Infrastructure",
    "L5": "Evaluation and Observability",
    "L6": "Security and Compliance",
    "L7": "Agent Ecosystem",
}

NIST_FUNCTIONS: Mapping[str, str] = {
    "GOVERN": "A culture of risk management is cultivated and present.",
    "MAP": "Context is recognized and risks related to context are identified.",
    "MEASURE": "Identified risks are assessed, analyzed, or tracked.",
    "MANAGE": "Risks are prioritized and acted upon based on a projected impact.",
}

#: the NIST AI RMF 1.0 subcategories the controls cite (short titles of the outcome)
NIST_SUBCATEGORIES: Mapping[str, str] = {
    "GOVERN 1.4": "risk management process established through transparent policies and controls",
    "GOVERN 1.5": "ongoing monitoring and periodic review of the risk management process",
    "GOVERN 2.1": "roles, responsibilities and lines of communication documented",
    "GOVERN 3.2": "roles for human-AI configurations and oversight defined",
    "GOVERN 6.1": "policies address risks of third-party entities",
    "MAP 3.3": "targeted application scope specified and documented",
    "MAP 4.2": "internal risk controls for components identified and documented",
    "MEASURE 1.2": "effectiveness of existing controls regularly assessed",
    "MEASURE 2.4": "functionality and behaviour monitored in production",
    "MEASURE 2.6": "evaluated for safety; can fail safely",
    "MEASURE 2.7": "security and resilience evaluated and documented",
    "MEASURE 2.8": "transparency and accountability risks examined and documented",
    "MEASURE 3.1": "existing and emergent risks regularly identified and tracked",
    "MANAGE 1.3": "responses to high-priority risks developed, planned and documented",
    "MANAGE 2.4": "mechanisms to supersede, disengage or deactivate systems behaving outside intended use",
    "MANAGE 3.1": "risks from third-party resources monitored and controlled",
    "MANAGE 4.1": "post-deployment monitoring plans implemented, including incident response",
    "MANAGE 4.3": "incidents and errors tracked, responded to and communicated",
}


@dataclass(frozen=True)
class FrameworkRefs:
    """The framework items one control produces evidence for."""

    asi: tuple[str, ...]
    maestro: tuple[str, ...]
    nist: tuple[str, ...]
    llm: tuple[str, ...] = ()


def _m(asi: str, maestro: str, nist: str, llm: str = "") -> FrameworkRefs:
    return FrameworkRefs(tuple(asi.split()), tuple(maestro.split()), tuple(s.strip() for s in nist.split(",")),
                         tuple(llm.split()))  # fmt: skip


MAPPINGS: Mapping[str, FrameworkRefs] = {
    "TOK-01": _m("ASI03 ASI10", "L6 L7", "MEASURE 2.7, MANAGE 1.3"),
    "TOK-02": _m("ASI03 ASI07", "L6 L7", "MEASURE 2.7"),
    "DPOP-01": _m("ASI03 ASI07", "L6", "MEASURE 2.7"),
    "DPOP-02": _m("ASI03 ASI07", "L6", "MEASURE 2.7"),
    "TASK-01": _m("ASI02 ASI08 ASI10", "L3 L7", "MAP 3.3, MANAGE 1.3"),
    "BEARER-01": _m("ASI02 ASI03 ASI04", "L4 L6 L7", "GOVERN 2.1, GOVERN 6.1, MANAGE 3.1"),
    "VAULT-01": _m("ASI03 ASI04", "L4 L6", "GOVERN 6.1, MANAGE 3.1"),
    "POL-01": _m("ASI02 ASI03", "L6", "GOVERN 1.4, MAP 4.2"),
    "POL-02": _m("ASI02 ASI03", "L6", "GOVERN 1.4, MEASURE 1.2"),
    "POL-03": _m("ASI02 ASI03 ASI10", "L6", "GOVERN 1.4, MANAGE 1.3"),
    "MON-01": _m("ASI02 ASI08 ASI10", "L5", "MEASURE 2.4, MANAGE 4.1"),
    "MON-02": _m("ASI02 ASI03 ASI10", "L5", "MEASURE 2.4, MEASURE 3.1, MANAGE 2.4"),
    "MON-03": _m("ASI02 ASI10", "L5", "MEASURE 3.1, MANAGE 4.3"),
    "KEY-01": _m("ASI03", "L4 L6", "MEASURE 2.7"),
    "KEY-02": _m("ASI03", "L4 L6", "MEASURE 2.7, GOVERN 1.5"),
    "AUD-01": _m("ASI10", "L5 L6", "MEASURE 2.8, MANAGE 4.3"),
    "AUD-02": _m("ASI10", "L5 L6", "MEASURE 2.8"),
    "REV-01": _m("ASI03 ASI08 ASI10", "L4 L7", "MANAGE 2.4, MEASURE 2.6"),
    "ID-01": _m("ASI03 ASI04 ASI07", "L4 L6 L7", "GOVERN 6.1, MEASURE 2.7"),
    "ADM-01": _m("ASI03", "L6", "GOVERN 2.1, GOVERN 3.2"),
    "NET-01": _m("ASI07", "L4", "MEASURE 2.7"),
    # MCP tools: an allowlist bounds what an agent may do (excessive agency), a pinned catalogue
    # keeps the tools the ones approved (supply chain: a rug pull), drift alerts say it was tried
    "TOOL-01": _m("ASI02 ASI03", "L3 L7", "MAP 3.3, GOVERN 2.1, MANAGE 3.1", "LLM06"),
    "TOOL-02": _m("ASI04 ASI02", "L3 L7", "GOVERN 6.1, MANAGE 3.1, MEASURE 2.7", "LLM03 LLM06"),
    "TOOL-03": _m("ASI04 ASI02", "L5 L7", "MEASURE 2.4, MANAGE 3.1, MANAGE 4.3", "LLM03"),
    # human approval of held requests: oversight defined and wired (GOVERN 3.2), high-risk actions held
    # (excessive agency), approvers actually reached (a request nobody answers is oversight in name only)
    "APPR-01": _m("ASI09 ASI02 ASI03", "L6 L7", "GOVERN 3.2, GOVERN 2.1", "LLM06"),
    "APPR-02": _m("ASI02 ASI03 ASI09", "L6 L7", "GOVERN 3.2, MANAGE 1.3, MAP 4.2", "LLM06"),
    "APPR-03": _m("ASI09", "L5 L6", "GOVERN 3.2, MEASURE 2.4", "LLM06"),
}


def mapping_for(control: str) -> FrameworkRefs:
    return MAPPINGS[control]


def nist_function(subcategory: str) -> str:
    """``"MEASURE 2.7"`` → ``"MEASURE"``."""
    return subcategory.split(" ", 1)[0]
