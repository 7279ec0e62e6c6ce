"""A TCP load balancer for tests: what Caddy or a Kubernetes Service is in front of several
media-gateways in production.

:class:`Balancer` listens on one port and hands each new TCP connection to the next *healthy*
backend, round-robin; it then pipes the bytes both ways, untouched, until either side closes, so
HTTP webhooks and WebSocket media streams alike pass through as they would through a layer-4 proxy.

Health is active, as Caddy's ``health_uri`` or a readiness probe: every ``interval`` (0.2 s) each
backend's ``health_url`` is fetched, and only a backend whose last check answered 200 gets new
connections. A backend is not healthy until its first check passes. Connections already open are
never touched by a failed check (a draining gateway keeps its calls). A connection that arrives
while no backend is healthy is closed at once. If connecting to the chosen backend fails (nothing
listens there any more), that backend counts as unhealthy until its next check passes and the next
healthy one is tried; ``connect_failures`` counts such failures.

Several media-gateways behind one public URL, as in production: give every gateway the same
``PUBLIC_BASE_URL = lb.url`` (signatures are computed over the public URL) and dial through it,
``dial(lb.url, token, public_base_url=lb.url)``. The Twilio simulator POSTs the webhook to its
``base_url`` and opens the TwiML's stream URL on ``base_url``'s host (with the stream URL's path),
so both go through the balancer, each on a connection of its own: one call's webhook and its
media stream may land on different gateways, which is what Twilio does too. Note that with plain
round-robin, calls placed one after another alternate webhook, stream, webhook, stream: every
webhook lands on one gateway and every stream on the other. ``policy="least_connections"`` spreads
the long-lived streams instead (the short webhook connections are closed by then).

Usage::

    async with Balancer([Backend("127.0.0.1", 8000, "http://127.0.0.1:8000/healthz")]) as lb:
        await lb.wait_healthy()
        ...  # clients use lb.url
        lb.connections[("127.0.0.1", 8000)]  # connections handed to that backend so far
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import aiohttp

__all__ = ["Backend", "Balancer"]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Backend:
    """One server behind the balancer: where it listens and the URL that says it is ready."""

    host: str
    port: int
    health_url: str

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


class Balancer:
    """Round-robin TCP load balancer over the backends whose health check last answered 200.

    ``policy="least_connections"`` (Caddy's ``least_conn``, IPVS's ``lc``) sends a new connection
    to a healthy backend with the fewest connections open now, round-robin among equals.

    Attributes:
        connections: connections handed to each backend so far, by ``(host, port)``.
        active: connections open now through each backend, by ``(host, port)``.
        refused: connections closed at once because no backend was healthy.
        connect_failures: connections to a backend that failed (another healthy one was tried).
    """

    def __init__(
        self,
        backends: Iterable[Backend] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 0.2,
        check_timeout: float = 1.0,
        policy: Literal["round_robin", "least_connections"] = "round_robin",
    ) -> None:
        if policy not in ("round_robin", "least_connections"):
            raise ValueError(f"unknown policy {policy!r}")
        self.host, self._want_port, self.policy = host, port, policy
        self.interval, self.check_timeout = interval, check_timeout
        self.connections: Counter[tuple[str, int]] = Counter()
        self.active: Counter[tuple[str, int]] = Counter()
        self.refused = 0
        self.connect_failures = 0
        self._backends: list[Backend] = []
        self._healthy: dict[Backend, bool] = {}
        self._checkers: dict[Backend, asyncio.Task] = {}
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._next = 0
        self._server: asyncio.Server | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pending = list(backends)
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Balancer:
        # A fresh connection per check: an idle keep-alive connection would hold up a backend's
        # graceful shutdown (which waits for its open connections).
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self._server = await asyncio.start_server(self._accept, self.host, self._want_port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.set_backends(self._pending)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, stop checking, and close every connection still open."""
        if self._server is not None:
            self._server.close()
        checkers = list(self._checkers.values())
        self._checkers.clear()
        for task in checkers:
            task.cancel()
        await asyncio.gather(*checkers, return_exceptions=True)
        for writer in list(self._writers):
            writer.transport.abort()  # every pipe sees its end of file and finishes
        if pipes := list(self._pipes):
            _, stuck = await asyncio.wait(pipes, timeout=2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- backends -----------------------------------------------------------------------------
    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    @property
    def healthy(self) -> list[Backend]:
        """The backends that get new connections now, in round-robin order."""
        return [b for b in self._backends if self._healthy.get(b)]

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Replace the backends. New ones are checked at once (and get no connection until a check
        passes); removed ones get no new connection, their open connections go on."""
        backends = list(dict.fromkeys(backends))
        if self._server is None:  # not started yet: checked when it starts
            self._pending = backends
            return
        for gone in set(self._backends) - set(backends):
            self._healthy.pop(gone, None)
            if task := self._checkers.pop(gone, None):
                task.cancel()
        self._backends = backends
        for backend in backends:
            if backend not in self._checkers:
                self._healthy.setdefault(backend, False)
                self._checkers[backend] = asyncio.create_task(self._check_loop(backend), name=f"check {backend.health_url}")

    def add(self, backend: Backend) -> None:
        self.set_backends([*self._backends, backend])

    def remove(self, backend: Backend | tuple[str, int]) -> None:
        address = backend.address if isinstance(backend, Backend) else tuple(backend)
        self.set_backends([b for b in self._backends if b.address != address])

    async def wait_healthy(self, count: int | None = None, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` backends (default: all of them) are healthy."""
        deadline = time.monotonic() + timeout
        while len(self.healthy) < (len(self._backends) if count is None else count):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"balancer: {len(self.healthy)} of {len(self._backends)} backends healthy after {timeout}s"
                )
            await asyncio.sleep(0.02)

    async def _check_loop(self, backend: Backend) -> None:
        while True:
            self._healthy[backend] = await self._check(backend)
            await asyncio.sleep(self.interval)

    async def _check(self, backend: Backend) -> bool:
        assert self._http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=self.check_timeout)
            async with self._http.get(backend.health_url, timeout=timeout) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    def _pick(self, tried: set[Backend]) -> Backend | None:
        candidates = [b for b in self.healthy if b not in tried]
        if not candidates:
            return None
        if self.policy == "least_connections":
            fewest = min(self.active[b.address] for b in candidates)
            candidates = [b for b in candidates if self.active[b.address] == fewest]
        # Round-robin over the configured order: the next healthy backend at or after the cursor.
        order = self._backends
        for step in range(len(order)):
            backend = order[(self._next + step) % len(order)]
            if backend in candidates:
                self._next = (order.index(backend) + 1) % len(order)
                return backend
        return None

    # ---- connections --------------------------------------------------------------------------
    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        self._writers.add(client_writer)
        try:
            await self._serve(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only close() cancels a pipe; the stream protocol's done-callback would report the
            # cancellation as an error of its own.
            client_writer.transport.abort()
        finally:
            self._writers.discard(client_writer)
            self._pipes.discard(task)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        tried: set[Backend] = set()
        while True:
            backend = self._pick(tried)
            if backend is None:
                self.refused += 1
                client_writer.close()
                with contextlib.suppress(OSError):
                    await client_writer.wait_closed()
                return
            tried.add(backend)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can time out a connect that
                # has just succeeded and drop the open socket unclosed.
                async with asyncio.timeout(self.check_timeout):
                    upstream_reader, upstream_writer = await asyncio.open_connection(backend.host, backend.port)
            except (OSError, TimeoutError):
                self.connect_failures += 1
                self._healthy[backend] = False  # until its next check passes
                continue
            break
        address = backend.address
        self.connections[address] += 1
        self.active[address] += 1
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pump(client_reader, client_writer, upstream_writer),
                self._pump(upstream_reader, upstream_writer, client_writer),
            )
        finally:
            self.active[address] -= 1
            self._writers.discard(upstream_writer)
            for writer in (client_writer, upstream_writer):
                writer.close()
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, source: asyncio.StreamWriter, writer: asyncio.StreamWriter) -> None:
        """Copy one direction (``reader`` of the ``source`` socket into ``writer``) until its end
        of file, then pass the end of file on (a half close: the other direction goes on until its
        own end). A reset on either socket closes both."""
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except OSError:
            # The peer reset, or the other end is gone: nothing more can pass either way.
            writer.transport.abort()
            source.transport.abort()
