"""The HTTP floor: the smallest useful ASGI handler, served by the same uvicorn/httptools/uvloop stack.

It reads the request body (as the token endpoint must) and answers a small JSON body.
Nothing tether does per request can be cheaper than this plus its signature work.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

__all__ = ["app", "drain", "lifespan", "respond"]

_BODY = b'{"ok":true}'


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge startup and shutdown (plain ASGI: no framework cost in the floor)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def drain(receive: Receive) -> None:
    """Read the whole request body, as the token endpoint must."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await drain(receive)
    await respond(send, 200, _BODY)
