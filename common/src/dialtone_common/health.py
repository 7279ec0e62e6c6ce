"""A tiny HTTP server for ``/metrics`` (Prometheus text), ``/healthz`` and ``/livez``, for the
services that have no web framework of their own. asyncio only: no threads, no extra dependency.

``/healthz`` is readiness: 503 while the service cannot do its work (NATS or PostgreSQL away, or
draining). ``/livez`` is liveness: 200 whenever the process answers at all. An orchestrator must
restart a process only when it is wedged, never because a server it depends on is away (the
restart would not bring the server back) or because it is draining its calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """Serves ``GET /metrics`` (the service's own ``registry``) and ``GET /healthz``. ``check``
    returns None when healthy, else why not."""

    def __init__(
        self, host: str, port: int, check: Callable[[], str | None] = lambda: None, *, registry: CollectorRegistry
    ) -> None:
        self.host, self.port, self._check, self._registry = host, port, check, registry
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
            elif path.startswith("/livez"):
                status, ctype, body = "200 OK", "text/plain", b"alive\n"
            elif path.startswith("/healthz"):
                problem = self._check()
                status = "200 OK" if problem is None else "503 Service Unavailable"
                ctype, body = "text/plain", (problem or "ok").encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
