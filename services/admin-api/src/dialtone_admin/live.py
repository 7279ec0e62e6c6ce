"""Live calls, known only from their heartbeats on ``dt.v1.live.<call_id>`` (core NATS).

Nothing is stored: a call is live while its bridge keeps publishing, and disappears
``ttl`` seconds after the last heartbeat (the bridge died, or the call ended).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dialtone_proto import subjects
from dialtone_proto.live import LiveCall
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

log = logging.getLogger(__name__)


class LiveCalls:
    """The latest heartbeat of every live call.

    Args:
        ttl: seconds after its last heartbeat that a call counts as gone.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(self, ttl: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._calls: dict[str, tuple[LiveCall, float]] = {}
        self._sub: Subscription | None = None
        # Called with (call, new) on every heartbeat; new: the first heard of this call.
        self.listeners: list[Callable[[LiveCall, bool], None]] = []
        self._ended: dict[str, float] = {}  # calls known to have ended, for one ttl: late heartbeats

    async def start(self, nc: Client) -> None:
        """Subscribe to every call's heartbeat."""
        self._sub = await nc.subscribe(subjects.LIVE_ALL, cb=self._on_message)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            call = LiveCall.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc.errors()[0]["msg"])
            return
        self.seen(call)

    def seen(self, call: LiveCall) -> None:
        """Record a heartbeat."""
        now = self._clock()
        if (ended := self._ended.get(call.call_id)) is not None and now - ended <= self._ttl:
            return
        new = call.call_id not in self._calls
        self._calls[call.call_id] = (call, self._clock())
        for listener in self.listeners:
            listener(call, new)

    def forget(self, call_id: str) -> None:
        """The call ended: it leaves the view now rather than at its heartbeats' expiry."""
        self._calls.pop(call_id, None)
        now = self._clock()
        for old in [c for c, t in self._ended.items() if now - t > self._ttl]:
            del self._ended[old]
        self._ended[call_id] = now

    def snapshot(self) -> list[LiveCall]:
        """The calls heard from within ``ttl``, oldest call first; forgets the others."""
        now = self._clock()
        for call_id in [c for c, (_, t) in self._calls.items() if now - t > self._ttl]:
            del self._calls[call_id]
        return sorted((call for call, _ in self._calls.values()), key=lambda c: (c.started_at, c.call_id))
