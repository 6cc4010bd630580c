"""Request limits in front of the routes (pure ASGI, before any body is parsed):

415 when a POST's Content-Type is not application/json; 413 when its body is larger than
API_MAX_BODY_BYTES, from Content-Length before anything is read, and while reading (chunked
bodies, or a Content-Length that lies). The body is read at most max_bytes + one chunk far,
then handed to the app as one message. A body that is not UTF-8 is a 422 (as FastAPI's own
"JSON decode error"), not FastAPI's 400.

Only a request that a POST route matches (path and method) is checked: any other gets the
router's own answer (404, 405).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match

from app.errors import error_response

JSON = "application/json"


class BodyLimits:
    def __init__(self, app, max_bytes: int, router):
        self.app = app
        self.max_bytes = max_bytes
        self.router = router

    def _routed(self, scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not self._routed(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        if content_type is None or content_type.split(";")[0].strip().lower() != JSON:
            reason = (f"Content-Type must be {JSON}, got {content_type!r}" if content_type
                      else f"Content-Type must be {JSON}")
            await error_response(415, reason)(scope, receive, send)
            return
        too_large = f"body larger than {self.max_bytes} bytes (API_MAX_BODY_BYTES)"
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await error_response(413, too_large)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await error_response(413, too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"body is not UTF-8: {exc.reason} at byte {exc.start}"
            await JSONResponse(
                {"detail": [{"type": "json_invalid", "loc": ["body", exc.start],
                             "msg": "JSON decode error", "input": {},
                             "ctx": {"error": reason}}],
                 "error": reason}, status_code=422)(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
