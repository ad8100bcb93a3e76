"""The gateway's own stdio transport for the SDK ``Client``: messages bounded as they are read.

MCP "Transports" §stdio: the client starts the server as a subprocess and they exchange
newline-delimited JSON-RPC messages over its stdin and stdout. The SDK's ``stdio_client`` does
this, but its stdout reader keeps a growing ``str`` and re-splits it for every 64 KiB chunk
(quadratic) with no bound, so one large tool result costs the gateway seconds of CPU and
twice its size in memory before ``max_result_bytes`` can refuse it (review finding F1).

``StdioTransport`` is the same transport with a different reader: ``tether.mcp.lines.LineReader``
(linear, at most ``limit`` bytes per message). A message over the limit means the stream can
no longer be trusted to be framed, and the result cannot be returned anyway, so the upstream
is killed at once (its whole process group, SIGKILL), the read stream is ended, and every
pending request fails promptly with the SDK's "Connection closed" error; ``overflows`` counts
such refusals so ``tether.mcp.upstream`` can report the call as too large rather than as a
broken upstream. Everything else is what ``upstream`` relied on: the process is started in a
session of its own with only the environment given, its stderr goes where it is told, and on
exit it is shut down as the MCP lifecycle says (close stdin, wait, then terminate the process
tree; "Lifecycle" §Shutdown) by the SDK's own shutdown helpers. POSIX only, as tether is.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from tether.mcp.lines import LineReader, LineTooLong

if TYPE_CHECKING:
    from anyio.abc import Process

__all__ = ["StdioTransport"]

log = logging.getLogger("tether.mcp")

#: seconds to wait for the event loop to see a killed upstream exit
_REAP_WAIT = 2.0
#: seconds the writer may take to flush accepted messages before stdin is closed (as the SDK)
_FLUSH_WAIT = 0.5
#: undecodable lines logged per upstream (each by type only: their content is the upstream's)
_LOGGED_BAD_LINES = 5


class StdioTransport:
    """An MCP client transport to a subprocess; an async context manager yielding (read, write) streams.

    ``process`` is the running subprocess once entered; ``overflows`` is how many messages
    were refused for size (0 or 1: the first ends the connection); ``failed`` says the
    connection was ended by such a refusal."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str], cwd: str | None, errlog: TextIO | Any,
                 limit: int, label: str) -> None:  # fmt: skip
        if not command:
            raise ValueError("an empty command")
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.limit = limit
        self.label = label
        self.process: Process | None = None
        self.overflows = 0
        self._errlog = errlog
        self._bad_lines = 0
        self._context = self._run()

    @property
    def failed(self) -> bool:
        return self.overflows > 0

    async def __aenter__(self) -> Any:
        return await self._context.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:  # fmt: skip
        return await self._context.__aexit__(kind, exc, tb)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[Any]:
        import anyio
        import anyio.lowlevel
        from mcp.client.stdio import _drain_stdout, _stop_server_process
        from mcp.shared.message import SessionMessage

        process = await anyio.open_process(
            self.command, env=self.env, stderr=self._errlog, cwd=self.cwd, start_new_session=True
        )
        self.process = process
        # no await until the task group is entered, or a cancellation here would leak the process (as the SDK)
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        writer_done = anyio.Event()
        shutting_down = False

        async def deliver(line: bytes) -> bool:
            """Hand one line to the session; False once the session is gone."""
            message = self._parse(line)
            if message is None:
                return True
            try:
                await read_writer.send(message)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return False
            return True

        async def stdout_reader() -> None:
            assert process.stdout is not None
            reader = LineReader(self.limit)
            try:
                async with read_writer:
                    try:
                        async for chunk in process.stdout:  # one chunk at a time: no read-ahead while blocked
                            for line in reader.feed(chunk):
                                if not await deliver(line):
                                    return
                        rest = reader.end()  # a last message without its newline is still delivered
                        if rest is not None:
                            await deliver(rest)
                    except LineTooLong as exc:
                        await self._refuse(process, exc)
                        await read_writer.aclose()  # the pending calls fail now, not after the drain
                    finally:
                        await _drain_stdout(process)
            except anyio.ClosedResourceError:
                pass  # our own shutdown closed stdout under the read
            except (anyio.BrokenResourceError, OSError):
                if not shutting_down:
                    log.info("MCP upstream %s: reading its stdout failed", self.label)

        async def stdin_writer() -> None:
            assert process.stdin is not None
            try:
                async with write_reader:
                    async for session_message in write_reader:
                        data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                        await process.stdin.send(data.encode() + b"\n")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                await read_writer.aclose()  # the server may live on: end the session rather than hang a request
            finally:
                writer_done.set()

        async def shutdown() -> None:
            read_stream.close()  # the reader moves on to draining, so a server blocked writing can exit
            write_stream.close()
            with anyio.move_on_after(_FLUSH_WAIT):
                await writer_done.wait()
            await _stop_server_process(process)
            for stream in (read_stream, write_stream, read_writer, write_reader):
                await stream.aclose()
            await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stdout_reader)
            tasks.start_soon(stdin_writer)
            try:
                yield read_stream, write_stream
            finally:
                shutting_down = True
                with anyio.CancelScope(shield=True):  # every wait inside is bounded; the process must not leak
                    await shutdown()
                tasks.cancel_scope.cancel()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _parse(self, line: bytes) -> Any:
        """One line as a SessionMessage; None for a blank line or one that is not JSON-RPC (logged by type only)."""
        import mcp_types as types
        from mcp.shared.message import SessionMessage

        if not line.strip():
            return None
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError as exc:
            self._bad_lines += 1
            if self._bad_lines <= _LOGGED_BAD_LINES:
                log.info("MCP upstream %s: a line of its stdout is not a JSON-RPC message (%s)", self.label,
                         type(exc).__name__)  # fmt: skip
            return None

    async def _refuse(self, process: Process, exc: LineTooLong) -> None:
        """Kill the upstream that sent a message over the limit, and wait (bounded) until it is seen to exit.

        The kill comes before the read stream ends, so the pending call's failure finds the
        upstream already gone (``Upstream.alive`` is False) and the gateway starts a fresh one."""
        import anyio

        self.overflows += 1
        log.warning("MCP upstream %s sent %s; it is stopped", self.label, exc)
        if process.returncode is None:  # not yet reaped, so the pid (and its group id) is still ours
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        with anyio.move_on_after(_REAP_WAIT):
            while process.returncode is None:
                await anyio.sleep(0.01)
