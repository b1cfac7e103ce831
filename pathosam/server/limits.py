"""ASGI middleware for request bodies: a size limit (413) and a read time limit (408).

A client that declares a body (``Content-Length``) and sends it slowly or never would otherwise
hold a connection and a request forever: the whole body must arrive within ``body_timeout``
seconds of the request's start (``--body-timeout``), else the request is answered ``408`` and
the connection closed. A body over ``max_bytes`` (``--max-request-mb``) is answered ``413``:
at once when the declared ``Content-Length`` is too large, else as soon as the count passes the
limit. The rest of a refused body is read and discarded for a moment (at most ``max_bytes``
more, at most :data:`DRAIN_SECONDS`), so that the client can read the answer instead of a reset
connection.
"""

from __future__ import annotations

import time

import anyio
from fastapi.responses import JSONResponse

__all__ = ["BodyLimit", "DRAIN_SECONDS"]

#: Longest time spent discarding the rest of a refused body before answering.
DRAIN_SECONDS = 2.0


class _Refused(BaseException):
    """Raised from ``receive`` when the body is too large or too slow (a BaseException so that no
    handler in between turns it into another error)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413, bodies not complete after
    ``body_timeout`` seconds get 408, both as ``{"detail": ...}`` JSON."""

    def __init__(self, app, max_bytes: int, body_timeout: float | None = 60.0) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.body_timeout = float(body_timeout) if body_timeout and body_timeout > 0 else None

    def _message(self, status: int) -> str:
        if status == 413:
            return f"request body larger than {self.max_bytes / (1 << 20):g} MiB (see --max-request-mb)"
        return (f"request body not received within {self.body_timeout:g} s (see --body-timeout); "
                "the client declared more bytes than it sent")

    async def _reject(self, status: int, receive, send, more: bool) -> None:
        budget = self.max_bytes
        with anyio.move_on_after(DRAIN_SECONDS if status == 413 else 0):
            while more and budget > 0:
                msg = await receive()
                if msg["type"] != "http.request":
                    break
                budget -= len(msg.get("body", b""))
                more = msg.get("more_body", False)
        resp = JSONResponse({"detail": self._message(status)}, status,
                            headers={"Connection": "close"} if more else None)
        await resp({"type": "http"}, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(413, receive, send, True)
                    return
        deadline = None if self.body_timeout is None else time.monotonic() + self.body_timeout
        received = 0
        complete = False
        started = False

        async def limited_receive():
            nonlocal received, complete
            if complete or deadline is None:
                msg = await receive()
            else:
                with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)) as scope_:
                    msg = await receive()
                if scope_.cancelled_caught:
                    raise _Refused(408)
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                complete = not msg.get("more_body", False)
                if received > self.max_bytes:
                    raise _Refused(413)
            elif msg["type"] == "http.disconnect":
                complete = True
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as refused:
            if not started:
                await self._reject(refused.status, receive, send, not complete)
