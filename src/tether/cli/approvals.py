"""``tether approvals list|show|approve|deny`` — an approver decides held requests, over HTTP.

The approver authenticates with an ID token from the organisation's OIDC provider (``[approvals]
issuer``), sent as ``Authorization: Bearer`` (RFC 6750 §2.1): from ``--id-token-file`` or the
environment variable ``TETHER_APPROVER_TOKEN``, never from the command line (shell history,
``ps``) and never echoed. The request is shown in plain words, as the STS stored and redacted it
(APR-05). Exit codes: 0 done, 1 refused by the STS (its error and description printed), 2 usage.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from tether.cli.common import config_or_exit, sts_trust
from tether.cli.output import console, fail, print_json, print_mapping, print_table, styled

if TYPE_CHECKING:
    import httpx

__all__ = ["TOKEN_ENV", "app", "parse_window"]

TOKEN_ENV = "TETHER_APPROVER_TOKEN"
MAX_TOKEN_FILE = 16 * 1024

app = typer.Typer(no_args_is_help=True, help="Approve or deny requests held for a human's decision.")

UrlOpt = Annotated[str | None, typer.Option(help="STS URL (default: the issuer in tether.toml)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="tether.toml (for the default URL and TLS trust)")]
TokenOpt = Annotated[Path | None, typer.Option("--id-token-file", help=f"file holding your ID token (default: ${TOKEN_ENV})")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

_WINDOW = re.compile(r"(\d{1,7})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """``600``, ``90s``, ``10m``, ``1h``, ``1d`` → seconds (``ValueError`` otherwise)."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"`{text}` is not a duration such as 90s, 10m or 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _token(path: Path | None) -> str:
    if path is not None:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_TOKEN_FILE + 1)
        except OSError as exc:
            fail(f"--id-token-file: {exc.strerror or exc}", code=2)
        if len(raw) > MAX_TOKEN_FILE:
            fail("--id-token-file: the file is too large for an ID token", code=2)
        token = raw.decode("ascii", errors="replace").strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token or any(c.isspace() for c in token):
        fail(f"an approver ID token is needed: --id-token-file FILE or ${TOKEN_ENV}", code=2)
    return token


def _refused(response: httpx.Response) -> NoReturn:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        fail(f"the STS refused: {body['error']}: {body.get('error_description', '')}")
    fail(f"the STS answered HTTP {response.status_code}")


class _Api:
    def __init__(self, url: str | None, config: Path | None, token_file: Path | None) -> None:
        cfg = config_or_exit(config) if (config is not None or url is None) else None
        base = url or (cfg.issuer if cfg is not None else "")
        if not base.startswith(("https://", "http://")):
            fail("--url must be an http(s) URL", code=2)
        self.base = base.rstrip("/")
        self.token = _token(token_file)
        self.verify = sts_trust(cfg) if cfg is not None else True

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            with httpx.Client(timeout=10.0, trust_env=False, verify=self.verify, follow_redirects=False) as http:
                response = http.request(method, self.base + path, headers=headers, json=json, params=params)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the STS: {type(exc).__name__}")
        if not response.is_success:
            _refused(response)
        try:
            return response.json()
        except ValueError:
            fail("the STS answered with something that is not JSON")


def _approval_id(value: str) -> str:
    if not re.fullmatch(r"apr_[A-Za-z0-9_-]{22}", value):
        fail(f"`{value[:60]}` is not an approval id (apr_…)", code=2)
    return value


def _words(approval: dict[str, Any]) -> dict[str, Any]:
    """The request in plain words: who asks, for what, on whose behalf, what the tool call is."""
    view = approval.get("request") or {}
    shown: dict[str, Any] = {
        "approval": approval.get("id"),
        "status": approval.get("status"),
        "agent": view.get("agent"),
        "requested by": view.get("requester"),
        "on behalf of": view.get("on_behalf_of"),
        "task": approval.get("task"),
        "task purpose": view.get("purpose") or "-",
        "audience": view.get("audience"),
        "scope": " ".join(view.get("scope") or []) or "-",
    }
    if view.get("actors"):
        shown["acting services"] = " → ".join(view["actors"])
    if "tool" in view:
        shown["tool"] = view.get("tool")
        shown["arguments"] = view.get("arguments")
        shown["tctx"] = view.get("tctx")
    shown["approver groups"] = " ".join(approval.get("groups") or [])
    shown["expires at"] = approval.get("expires_at")
    if approval.get("decided_by"):
        shown["decided by"] = approval["decided_by"]
        shown["decided at"] = approval.get("decided_at")
        if approval.get("reason"):
            shown["reason"] = approval["reason"]
        if approval.get("status") == "approved":
            shown["tokens granted"] = approval.get("uses")
            shown["usable until"] = approval.get("until")
    return shown


def _show(approval: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(approval)
    else:
        print_mapping(f"approval {approval.get('id')}", _words(approval))


@app.command("list")
def list_(
    status: Annotated[str, typer.Option(help="pending, approved, denied, expired or all")] = "pending",
    task: Annotated[str | None, typer.Option(help="only this task's approvals")] = None,
    limit: Annotated[int, typer.Option(help="at most this many", min=1, max=1000)] = 100,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    id_token_file: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the approvals you may decide (pending ones by default), newest first."""
    wanted = None if status == "all" else status
    params = {k: v for k, v in {"status": wanted, "task": task, "limit": str(limit)}.items() if v}
    body = _Api(url, config, id_token_file).call("GET", "/approvals", params=params)
    if json_out:
        print_json(body)
        return
    rows = []
    for item in body.get("approvals", []):
        view = item.get("request") or {}
        rows.append((item.get("id"), item.get("status"), view.get("agent"), view.get("audience"), view.get("tool"),
                     " ".join(item.get("groups") or []), item.get("expires_at")))  # fmt: skip
    print_table("approvals", ["id", "status", "agent", "audience", "tool", "groups", "expires_at"], rows)


@app.command()
def show(
    approval_id: str, url: UrlOpt = None, config: ConfigOpt = None, id_token_file: TokenOpt = None, json_out: JsonOpt = False
) -> None:
    """Show one held request in plain words."""
    _show(_Api(url, config, id_token_file).call("GET", f"/approvals/{_approval_id(approval_id)}"), json_out)


@app.command()
def approve(
    approval_id: str,
    uses: Annotated[int, typer.Option(help="tokens the approval may yield", min=1)] = 1,
    window: Annotated[str | None, typer.Option(help="how long it may be used, e.g. 10m (default: [approvals] ttl)")] = None,
    reason: Annotated[str, typer.Option(help="why (recorded in the audit log)")] = "",
    url: UrlOpt = None,
    config: ConfigOpt = None,
    id_token_file: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve a held request: the agent's next poll receives its token."""
    seconds = 0
    if window is not None:
        try:
            seconds = parse_window(window)
        except ValueError as exc:
            fail(f"--window: {exc}", code=2)
    body = {"uses": uses, "window": seconds, "reason": reason}
    approval = _Api(url, config, id_token_file).call("POST", f"/approvals/{_approval_id(approval_id)}/approve", json=body)
    if not json_out:
        console.print(styled(("approved", "green"), f" {approval.get('id')}"))
    _show(approval, json_out)


@app.command()
def deny(
    approval_id: str,
    reason: Annotated[str, typer.Option(help="why (recorded in the audit log)")] = "",
    url: UrlOpt = None,
    config: ConfigOpt = None,
    id_token_file: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deny a held request: the agent's next poll is refused with access_denied."""
    approval = _Api(url, config, id_token_file).call(
        "POST", f"/approvals/{_approval_id(approval_id)}/deny", json={"reason": reason}
    )
    if not json_out:
        console.print(styled(("denied", "red"), f" {approval.get('id')}"))
    _show(approval, json_out)
