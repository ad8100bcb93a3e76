"""The HTTP floor: the smallest useful ASGI handler, served by the same uvicorn/httptools/uvloop stack.

It reads the request body (as the token endpoint must) and answers a small JSON body.
Nothing tether does per request can be cheaper than this plus its signature work.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

__all__ = ["app"]

_BODY = b'{"ok":true}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": _BODY})
