"""One live MCP client connection to a route's upstream, on the official SDK (the ``mcp`` extra, imported lazily).

The gateway is an MCP *client* of the upstream (MCP 2025-06-18 "Architecture"): it lists the
upstream's tools and relays calls it has authorized. Two transports (MCP "Transports"):

* stdio: the upstream is started as a subprocess. Its environment is a minimal safe one
  (``PATH``, ``HOME``, locale, temp dir — what a program needs to start) plus the route's
  ``env``: never the gateway's own environment, which holds the master key, database URLs and
  whatever else the operator exported. The SDK starts it in its own session (process group)
  and on close shuts it down as the MCP lifecycle says (close stdin, wait, then terminate the
  whole process tree). Its stderr is logged line by line, redacted and escaped, under the
  route's name (``tether.mcp.stderr``; SECURITY.md MCP-14): never passed through to the
  gateway's own stderr, where it could forge log lines. The transport is tether's own
  (``tether.mcp.stdio``): the SDK's reads an unbounded line in quadratic time.
* streamable HTTP: the route's vaulted secret is injected as configured (header template,
  basic auth or query parameter; ``tether.gateway.inject``), redirects are left to the SDK
  (same origin only), and the agent's own token is never sent (MCP authorization spec,
  "Token Passthrough" is forbidden). A ``credential = "hop"`` route's client carries an
  ``auth`` instead: a token tether minted for the upstream's own audience.

Both transports bound every message from the upstream while reading it
(``tether.mcp.lines.message_limit`` of the route's ``max_result_bytes``; review finding F1):
a tool call whose answer goes over it raises the gateway's ``ResultTooLarge`` without the
answer ever being held whole, and a stdio upstream that sent it is killed.

The SDK's context managers (the transport's task group, the client session) must be entered
and exited by one task. ``connect`` therefore starts an owner task that enters them and waits;
the ``Upstream`` handle it returns can be used from any task of the same event loop (the SDK
session multiplexes concurrent requests), and ``aclose`` tells the owner to exit.

Every failure is an ``UpstreamError`` whose message is safe to show a client: no secret
(every encoding of the injected one is scrubbed from what the upstream said), no URL with a
query secret, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl

from tether.errors import TetherError
from tether.gateway.inject import encodings, inject
from tether.gateway.mcp_results import ResultTooLarge
from tether.mcp.lines import message_limit
from tether.mcp.stderr import StderrLog, close_stderr_log, open_stderr_log
from tether.mcp.stdio import StdioTransport

if TYPE_CHECKING:
    from tether.gateway.mcp_routes import McpRoute
    from tether.mcp.http_cap import ResponseCap

__all__ = ["MAX_LISTED_TOOLS", "SAFE_ENVIRONMENT", "Upstream", "UpstreamError", "connect", "stdio_environment"]

log = logging.getLogger("tether.mcp")

#: variables of the gateway's environment a stdio upstream inherits (the SDK adds its own
#: short list of the same kind: HOME, LOGNAME, PATH, SHELL, TERM, USER)
SAFE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
                    "SYSTEMROOT")  # fmt: skip
#: pages of a ``tools/list`` walk (MCP "Pagination"), and tools in all, before the upstream is refused
MAX_LIST_PAGES = 100
MAX_LISTED_TOOLS = 2000
#: seconds ``aclose`` waits for the owner task (the SDK's own shutdown is bounded at a few seconds)
_CLOSE_WAIT = 15.0
_MAX_MESSAGE = 200


class UpstreamError(TetherError):
    """The upstream could not be started, reached, listed or called; the message is safe for a client.

    ``code`` is the JSON-RPC error code when the upstream itself answered with an error
    (JSON-RPC 2.0 §5.1), else None (tether could not get an answer)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def stdio_environment(route: McpRoute) -> dict[str, str]:
    """The environment a stdio upstream is given: the safe variables of ours, then the route's ``env``."""
    env = {name: os.environ[name] for name in SAFE_ENVIRONMENT if name in os.environ}
    env.update(dict(route.env))
    return env


def _clean(text: str, secret_forms: list[bytes]) -> str:
    """Upstream-supplied text fit for a client: secrets scrubbed, printable, short."""
    for form in secret_forms:
        text = text.replace(form.decode("utf-8", "replace"), "[REDACTED]")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:_MAX_MESSAGE]


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups: what the SDK's task groups wrap."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Upstream:
    """A connected upstream. Create with ``connect``; usable from any task of its event loop."""

    def __init__(self, route: str, *, timeout: float, secret_forms: list[bytes], max_result_bytes: int = 1_048_576,
                 meter: StdioTransport | ResponseCap | None = None) -> None:  # fmt: skip
        self.route = route
        self._timeout = timeout
        self._secret_forms = secret_forms
        self._max_result_bytes = max_result_bytes
        #: the transport's count of messages refused for size (``overflows``)
        self._meter = meter
        self._client: Any = None
        self._process: Any = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stderr: tuple[IO[str], asyncio.ReadTransport, StderrLog] | None = None

    @property
    def pid(self) -> int | None:
        """The stdio process id (None for an HTTP upstream)."""
        pid = getattr(self._process, "pid", None)
        return pid if isinstance(pid, int) else None

    @property
    def alive(self) -> bool:
        """Connected, not closed, and (stdio) its process has not exited nor been stopped for an oversized message."""
        if self._client is None or self._task is None or self._task.done():
            return False
        if isinstance(self._meter, StdioTransport) and self._meter.failed:
            return False
        return self._process is None or getattr(self._process, "returncode", None) is None

    def _live(self) -> Any:
        if not self.alive:
            raise UpstreamError(f"the MCP upstream of route `{self.route}` is not connected")
        return self._client

    def _overflows(self) -> int:
        return 0 if self._meter is None else self._meter.overflows

    def _failure(self, what: str, exc: BaseException, overflows: int | None = None) -> UpstreamError:
        """A client-safe error for ``exc``: what the upstream said if it answered with a JSON-RPC
        error, else only what failed (the exception text may hold a URL or a secret).

        ``overflows`` is the transport's count of oversized messages before the request: if it
        grew, the request failed because a message was refused while it was read."""
        from mcp.shared.exceptions import MCPError

        exc = _leaf(exc)
        if isinstance(exc, UpstreamError):
            return exc
        if overflows is not None and self._overflows() > overflows:
            return UpstreamError(f"the MCP upstream of route `{self.route}` sent a message over the size limit"
                                 f" during {what}")  # fmt: skip
        if isinstance(exc, MCPError):
            said = _clean(exc.message, self._secret_forms)
            return UpstreamError(f"the MCP upstream of route `{self.route}` answered {what} with an error: {said}",
                                 code=exc.code)  # fmt: skip
        if isinstance(exc, TimeoutError):
            return UpstreamError(f"the MCP upstream of route `{self.route}` did not answer {what} in time")
        log.info("MCP upstream %s: %s failed (%s)", self.route, what, type(exc).__name__)
        return UpstreamError(f"the MCP upstream of route `{self.route}` failed {what}")

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool definition (MCP ``tools/list``, all pages) as JSON, as the upstream sent it."""
        client = self._live()
        overflows = self._overflows()
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        cursors: set[str] = set()
        try:
            with _deadline(self._timeout):
                for _ in range(MAX_LIST_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in page.tools)
                    if len(tools) > MAX_LISTED_TOOLS:
                        raise UpstreamError(f"the MCP upstream of route `{self.route}` lists more than"
                                            f" {MAX_LISTED_TOOLS} tools")  # fmt: skip
                    cursor = page.next_cursor
                    if cursor is None:
                        return tools
                    if cursor in cursors:
                        raise UpstreamError(f"the MCP upstream of route `{self.route}` paginates tools/list in a loop")
                    cursors.add(cursor)
        except Exception as exc:  # noqa: BLE001 - the SDK and its transports raise many types; a client sees one
            raise self._failure("tools/list", exc, overflows) from None
        raise UpstreamError(f"the MCP upstream of route `{self.route}` lists tools over more than {MAX_LIST_PAGES} pages")

    async def call_tool(self, name: str, arguments: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Call one tool (MCP ``tools/call``); the ``CallToolResult`` as JSON.

        A tool that ran and failed is a result with ``isError: true`` (MCP "Error Handling"),
        not an exception; an upstream that answers with a JSON-RPC error raises ``UpstreamError``
        with its ``code``. An answer over the transport's message limit is never read whole: it
        raises ``ResultTooLarge`` (the gateway's refusal, as for a result over the cap)."""
        client = self._live()
        overflows = self._overflows()
        try:
            with _deadline(timeout):
                result = await client.call_tool(name, dict(arguments), read_timeout_seconds=timeout)
        except Exception as exc:  # noqa: BLE001 - the SDK and its transports raise many types; a client sees one
            if self._overflows() > overflows:
                raise self._too_large() from None
            raise self._failure("tools/call", exc) from None
        dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped

    def _too_large(self) -> ResultTooLarge:
        limit = getattr(self._meter, "limit", 0)
        stopped = "; the upstream was stopped" if isinstance(self._meter, StdioTransport) else ""
        return ResultTooLarge(f"the tool result exceeds the route's cap of {self._max_result_bytes} bytes (a message"
                              f" of more than {limit} bytes was refused while it was read{stopped}); it was not"
                              " returned")  # fmt: skip

    async def aclose(self) -> None:
        """Disconnect: an HTTP session is ended, a stdio process (and its process tree) stopped."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        if self._client is None:  # still connecting: stop now (the SDK shields the process shutdown)
            await _cancel(task)
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_WAIT)
        except TimeoutError:
            await _cancel(task)

    async def _own(self, client: Any, transport: object, http_client: Any, ready: asyncio.Future[None]) -> None:
        """The owner task: enters the SDK's context managers, waits for ``aclose``, exits them."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if http_client is not None:
                    await stack.enter_async_context(http_client)
                try:
                    await stack.enter_async_context(client)
                finally:
                    if self._stderr is not None:
                        self._stderr[0].close()  # the process has its copy of the write end (or never started)
                self._process = getattr(transport, "process", None)
                self._client = client
                ready.set_result(None)
                await self._stop.wait()
        except Exception as exc:  # noqa: BLE001 - whatever ended the connection, connect() gets an UpstreamError
            if not ready.done():
                ready.set_exception(self._failure("the MCP handshake", exc))
            else:
                log.info("MCP upstream %s: the connection ended (%s)", self.route, type(exc).__name__)
        finally:
            self._client = None
            if not ready.done():  # cancelled before it connected
                ready.set_exception(UpstreamError(f"the MCP upstream of route `{self.route}` was not connected"))
            if self._stderr is not None:
                await close_stderr_log(*self._stderr)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})  # the task's own end, without taking the caller's cancellation for it


@contextlib.contextmanager
def _deadline(seconds: float) -> Any:
    import anyio

    with anyio.fail_after(seconds):
        yield


def _http_client(route: McpRoute, secret: str | None, auth: Any = None, *, cap: ResponseCap | None = None) -> Any:
    """The upstream's HTTP client; ``cap`` bounds what each response may hold (``tether.mcp.http_cap``)."""
    import httpx2

    headers: list[tuple[str, str]] = []
    params: list[tuple[str, str | int | float | bool | None]] = []
    if route.secret:
        if not secret or route.injection is None:
            raise UpstreamError(f"the MCP upstream of route `{route.name}` needs its vault secret")
        headers, query = inject(route.injection, secret, [], [])
        params = list(parse_qsl(query, keep_blank_values=True))
    if route.hop and auth is None:
        raise UpstreamError(f"the MCP upstream of route `{route.name}` needs a hop token (an auth for its audience)")
    return httpx2.AsyncClient(
        auth=auth,
        headers=headers,
        params=params,
        follow_redirects=False,
        timeout=httpx2.Timeout(route.timeout, read=max(route.timeout, 300.0)),
        event_hooks=None if cap is None else cap.hooks,
    )


async def connect(route: McpRoute, *, secret: str | None = None, stderr: TextIO | None = None, auth: Any = None) -> Upstream:
    """Connect to the route's upstream (start it, for stdio) and complete the MCP handshake.

    ``secret`` is the opened vault value for an HTTP route that names one. ``auth`` (an
    ``httpx2.Auth``) authenticates every request to an HTTP upstream: for a ``credential = "hop"``
    route, the gateway's delegation token for the upstream's audience with a fresh DPoP proof
    per request (``tether.gateway.mcp_hop``), never the agent's own token. ``stderr`` is where
    a stdio upstream's stderr goes (default: logged, ``tether.mcp.stderr``). Raises ``UpstreamError``."""
    try:
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp_types import Implementation

        from tether.mcp.http_cap import ResponseCap
    except ImportError as exc:
        raise UpstreamError("MCP routes need the `mcp` extra (pip install 'tether[mcp]')") from exc

    http_client = None
    pipe = None
    limit = message_limit(route.max_result_bytes)
    meter: StdioTransport | ResponseCap
    if route.stdio:
        pipe = None if stderr is not None else await open_stderr_log(route.name)
        errlog: Any = stderr if pipe is None else pipe[0]
        meter = StdioTransport(route.command, env=stdio_environment(route), cwd=route.cwd or None, errlog=errlog,
                               limit=limit, label=route.name)  # fmt: skip
        transport: Any = meter
        forms: list[bytes] = []
    else:
        meter = ResponseCap(limit)
        http_client = _http_client(route, secret, auth, cap=meter)
        transport = streamable_http_client(route.url, http_client=http_client, max_sse_event_size=limit)
        forms = encodings(secret, route.injection) if secret and route.injection else []
    client = Client(transport, cache=None, client_info=Implementation(name="tether", version="1"))
    upstream = Upstream(route.name, timeout=route.timeout, secret_forms=forms, max_result_bytes=route.max_result_bytes,
                        meter=meter)  # fmt: skip
    upstream._stderr = pipe if route.stdio else None
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.add_done_callback(lambda f: None if f.cancelled() else f.exception())  # retrieved even if connect gave up
    upstream._task = asyncio.create_task(upstream._own(client, transport, http_client, ready), name=f"mcp-{route.name}")
    try:
        await asyncio.wait_for(asyncio.shield(ready), route.timeout)
    except TimeoutError:
        await upstream.aclose()
        raise UpstreamError(f"the MCP upstream of route `{route.name}` did not connect in time") from None
    except BaseException:
        await upstream.aclose()
        raise
    return upstream
