"""ASGI middleware of the admin API: request metrics (every response counted, 500s included) and
the security headers every response carries.

Both are plain ASGI rather than ``@app.middleware("http")``: they see the status actually sent, and
an exception from a handler reaches :class:`Metrics` itself, which answers it with a JSON 500 and
counts it, instead of letting it escape to the server where no metric would see it.
"""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dialtone_admin.metrics import LATENCY, REQUESTS

log = logging.getLogger(__name__)

# The dashboard and the docs load scripts, styles and images from this server only, never inline
# script (the docs page adds the hash of its one inline script), and no page may be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Metrics:
    """Count and time every HTTP request by method, route template and status sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if status is not None:
                raise  # the response has begun: nothing sane can be sent any more
            await JSONResponse({"detail": "internal server error"}, 500)(scope, receive, send_and_note)
        finally:
            route = _route_label(scope, root_path)
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
            REQUESTS.labels(scope["method"], route, str(status or 500)).inc()


def _route_label(scope: Scope, root_path: str) -> str:
    """The route template, not the raw path, so call ids do not explode the label set; for a mount
    (the static files) its prefix, which routing added to ``root_path``."""
    if (path := getattr(scope.get("route"), "path", None)) is not None:
        return path
    return scope.get("root_path", "")[len(root_path) :] or "unmatched"


class SecurityHeaders:
    """Add the security headers and ``Cache-Control`` to every response that lacks them.

    Everything but the static assets is ``no-store``: session data, transcripts and live calls must
    not linger in a browser or proxy cache. Static assets revalidate (``no-cache``) by their ETag.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = "no-cache" if scope["path"].startswith("/static/") else "no-store"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**SECURITY_HEADERS, "Cache-Control": cache}.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGet:
    """Answer ``HEAD`` wherever ``GET`` is served: the same status and headers, no body.

    FastAPI routes declare GET only, so HEAD would get 405. The request is routed (and
    authorized) as a GET; the first body message is replaced by an empty last one, and the rest of
    the response (a stream's events) is never sent: the server then reports the client gone, which
    ends a streaming response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def send_head(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, send_head)
