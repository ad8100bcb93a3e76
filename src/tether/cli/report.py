"""``tether report [--format md|html|json] [--out FILE] [--fail-on SEVERITY] [--measure]``.

Reads the live configuration and store (never the master key, never a secret) and
prints the posture of the deployment control by control. ``--fail-on high`` exits 1
when any finding is at or above that severity, so a deployment pipeline can gate on
it; configuration problems and bad arguments exit 2.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tether.cli.common import admin_client, config_or_exit, errors_to_exit
from tether.cli.output import console, fail

if TYPE_CHECKING:
    from tether.config import Config
    from tether.report.model import LagFacts, Setting

__all__ = ["report"]


class Format(enum.StrEnum):
    md = "md"
    html = "html"
    json = "json"


class Severity(enum.StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


def _lag(cfg: Config, url: str | None, identity_file: Path | None) -> LagFacts:
    import asyncio

    from tether.report.measure import measure_revocation_lag

    client = admin_client(cfg, url, identity_file)
    try:
        return asyncio.run(measure_revocation_lag(cfg, client))
    finally:
        client.close()


def _running(cfg: Config, url: str | None, identity_file: Path | None) -> tuple[Mapping[str, Setting], str]:
    """The settings the running STS reports (``GET /settings`` as the admin), or none and why not.

    The STS's own view is the one that counts: ``TETHER_*`` variables in its environment
    override the file, and this shell's environment says nothing about them.
    """
    import httpx

    from tether.client import StsError
    from tether.errors import ConfigError
    from tether.keys.sealed import SealError
    from tether.report.evidence import remote_settings

    target = url or cfg.issuer
    try:
        client = admin_client(cfg, url, identity_file)
        try:
            return remote_settings(client.api("GET", "/settings")), f"the running STS at {target}"
        finally:
            client.close()
    except (StsError, httpx.HTTPError, ConfigError, SealError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        return {}, f"the configuration file; the running STS at {target} could not be asked ({reason})"


def report(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (default ./tether.toml)")] = None,
    format_: Annotated[Format, typer.Option("--format", "-f", help="md (default), html or json")] = Format.md,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the report to FILE instead of stdout")] = None,
    fail_on: Annotated[Severity | None, typer.Option("--fail-on", help="exit 1 if any finding is at or above SEVERITY")] = None,
    measure: Annotated[
        bool, typer.Option(help="measure the revocation lag at the running STS (creates and cancels a probe task)")
    ] = False,
    url: Annotated[
        str | None, typer.Option(help="the running STS, asked for its settings and for --measure (default: the issuer)")
    ] = None,
    identity_file: Annotated[
        Path | None, typer.Option(help="admin JWT-SVID file for /settings and --measure instead of the dev issuer")
    ] = None,
) -> None:
    """The posture of this deployment, control by control, mapped to OWASP ASI, CSA MAESTRO and NIST AI RMF."""
    import asyncio

    from tether.report.controls import run_controls
    from tether.report.evidence import gather
    from tether.report.model import severity_rank
    from tether.report.render import render

    cfg = config_or_exit(config)
    with errors_to_exit():
        lag = _lag(cfg, url, identity_file) if measure else None
        evidence = asyncio.run(gather(cfg, now=time.time(), lag=lag, running=_running(cfg, url, identity_file)))
    result = run_controls(evidence)
    text = render(result, format_.value)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write `{out}`: {exc.strerror or exc}", code=2)
        counts = ", ".join(f"{n} {s}" for s, n in result.counts().items() if n) or "no findings"
        console.print(f"report written to {out}: {counts}", markup=False)
    if fail_on is not None and result.fails_at(fail_on.value):
        limit = severity_rank(fail_on.value)
        found = [r for r in result.findings() if severity_rank(r.severity or "info") >= limit]
        fail(f"{len(found)} finding(s) at or above --fail-on {fail_on.value} (worst: {result.worst()})")
