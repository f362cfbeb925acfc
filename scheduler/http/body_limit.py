"""The request body limit: every request body of the API is two short strings or a small login form, so
anything past ``MAX_BODY_BYTES`` is refused with 413 before a route reads it."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "BodyLimit"]

MAX_BODY_BYTES = 16 * 1024  # a request is two short strings; anything larger is not one


def _too_large() -> JSONResponse:
    return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)


class BodyLimit:
    """Refuses a body declared too large (``Content-Length``) at once, and counts one as it arrives, so one
    sent without Content-Length (chunked) is held to the limit too.

    Past the limit while counting, the app is told the client left (so it stops reading) and whatever it
    answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _too_large()(scope, receive, send)
            return
        seen, over, refused = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def refuse() -> None:
            nonlocal refused
            if not refused:
                refused = True
                await _too_large()(scope, receive, send)

        async def guarded(message: Message) -> None:
            if over:
                await refuse()
            else:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over:
            await refuse()
