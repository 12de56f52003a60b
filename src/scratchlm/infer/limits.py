"""The request body limit, counted as the bytes arrive (Content-Length or chunked alike).

A pure ASGI middleware: it reads the body before the app does, at most `max_bytes` of it, and
answers 413 the moment the count passes the limit - a client that declares a large
Content-Length is refused before anything is read, and one that sends `Transfer-Encoding:
chunked` is cut off after max_bytes, never parsed, never held whole in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int, reply: Callable[..., Any]):
        self.app, self.max_bytes, self.reply = app, max_bytes, reply

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, None)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Callable, send: Callable, size: int | None) -> None:  # fmt: skip
        what = f"{size} bytes" if size is not None else f"over {self.max_bytes} bytes"
        message = f"the request body is {what}; at most {self.max_bytes}"
        await self.reply(413, message, code="request_too_large")(scope, receive, send)
