"""Warm Realtime sockets (part of the Realtime engine's edge, with ``realtime_engine``): a few connections to the Realtime API opened ahead of any call, so that
a call's session needs only its ``session.update`` (one round trip) instead of a new socket's
set-up (about 1.5 s in practice: TLS, the upgrade, the session's creation).

A warm socket is open and has said ``session.created``; nothing has been configured on it, and no
audio has gone to it, so it costs nothing while it waits (the Realtime API bills tokens). The
agent's instructions, tools and voice are set when a call takes it (``RealtimeConnection.open``).
Sockets older than ``max_age_s`` are closed and replaced, well within the API's session lifetime,
and a socket that the server closed is never handed out. A call that finds the pool empty opens a
socket of its own, as without a pool.

``REALTIME_WARM_SOCKETS`` sets how many each bridge keeps (0, the default, keeps none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from dialtone_bridge import metrics as m
from dialtone_bridge.socket_engine import open_socket

log = logging.getLogger(__name__)

RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after failed opens, in turn (the last repeats)


class WarmSockets:
    """Keeps ``size`` Realtime sockets for ``model`` open and ready. ``start``, ``take``, ``close``."""

    def __init__(self, url: str, model: str, api_key: str | None, size: int, max_age_s: float = 600.0) -> None:
        sep = "&" if "?" in url else "?"
        self.url, self.model, self._key = f"{url}{sep}model={model}", model, api_key
        self.size, self.max_age_s = size, max_age_s
        self._ready: deque[tuple[float, ClientConnection]] = deque()  # (opened at, socket), oldest first
        self._wanted = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        if self.size > 0 and self._task is None:
            self._task = asyncio.create_task(self._keep(), name="warm-sockets")

    @property
    def ready(self) -> int:
        return len(self._ready)

    def take(self) -> ClientConnection | None:
        """A warm socket for a call (it is the caller's to close), or None: open one yourself."""
        now = time.monotonic()
        while self._ready:
            opened, ws = self._ready.popleft()
            if ws.state is State.OPEN and now - opened < self.max_age_s:
                self._wanted.set()
                m.WARM_SOCKETS.labels("used").inc()
                m.WARM_READY.set(len(self._ready))
                return ws
            self._discard(ws)
        self._wanted.set()
        if self.size > 0:
            m.WARM_SOCKETS.labels("missed").inc()
        return None

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._ready:
            _, ws = self._ready.popleft()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        m.WARM_READY.set(0)

    def _discard(self, ws: ClientConnection) -> None:
        m.WARM_SOCKETS.labels("expired").inc()
        task = asyncio.create_task(ws.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _keep(self) -> None:
        failures = 0
        while not self._closed:
            now = time.monotonic()
            while self._ready and (now - self._ready[0][0] >= self.max_age_s or self._ready[0][1].state is not State.OPEN):
                self._discard(self._ready.popleft()[1])
            if len(self._ready) < self.size:
                # Every missing socket at once (a burst of calls empties the pool in a moment).
                opened = await asyncio.gather(*(self._open() for _ in range(self.size - len(self._ready))))
                for ws in opened:
                    if ws is not None:
                        self._ready.append((time.monotonic(), ws))
                m.WARM_READY.set(len(self._ready))
                if any(ws is None for ws in opened):
                    failures += 1
                    await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S)) - 1])
                else:
                    failures = 0
                continue
            self._wanted.clear()
            oldest = self._ready[0][0] if self._ready else now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), max(1.0, oldest + self.max_age_s - now))

    async def _open(self) -> ClientConnection | None:
        """A new socket, once the server has created its session; None if it could not be opened."""
        ws = None
        try:
            ws = await open_socket(self.url, self._key)
            async with asyncio.timeout(10):
                first = orjson.loads(await ws.recv())
            if first.get("type") != "session.created":
                raise ValueError(f"expected session.created, got {first.get('type')!r}")
            ws, opened = None, ws
            return opened
        except (OSError, InvalidHandshake, InvalidStatus, ConnectionClosed, TimeoutError, ValueError) as exc:
            m.WARM_SOCKETS.labels("failed").inc()
            log.warning("warm Realtime socket could not be opened: %s", exc)
            return None
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)
