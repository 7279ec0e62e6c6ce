"""Bus writes coalesced per process: the audio frames that many calls publish within one short
budget go to NATS in one socket write.

nats-py writes its outgoing buffer once per event loop iteration in which something was
published. A media gateway or bridge carrying many calls publishes a 20 ms frame per call and
direction, each arriving in an iteration of its own, so it made one ``send`` system call per frame:
the largest single cost of both services in a profile (about 40 % of the gateway's CPU at 50 calls).
Held for at most ``budget_s`` (1 ms by default) and then published together, in one iteration, the
frames of every call leave in one write.

Guarantees (tests/unit in common/tests/test_coalesce.py):

- order: frames leave in the order they were given, so a call's frames are never reordered (nor
  are frames of different calls on one subject);
- nothing is dropped: every frame is published, or counted by ``on_error`` when NATS refuses it;
- the budget: the first frame of a batch waits at most ``budget_s`` (plus the event loop's own
  latency), later ones less. A batch over ``max_bytes`` goes at once.

Everything a call publishes on a subject must go through the same coalescer: a frame published
directly could overtake those still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 0.001
DEFAULT_MAX_BYTES = 256 * 1024


class Coalescer:
    """Publishes to ``nc`` in batches. ``publish`` never waits; ``flush`` sends what is held."""

    def __init__(
        self,
        nc: Client,
        budget_s: float = DEFAULT_BUDGET_S,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.nc = nc
        self.budget_s = budget_s
        self.max_bytes = max_bytes
        self.on_error = on_error
        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0
        self._due: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task | None = None
        self.batches = 0  # batches sent (for the bench's figures)
        self.published = 0

    def publish(self, subject: str, data: bytes) -> None:
        """Hold ``data`` for ``subject``; it is published within the budget, after everything held
        before it."""
        self._held.append((subject, data))
        self._held_bytes += len(data)
        if self._held_bytes >= self.max_bytes or self.budget_s <= 0:
            self._send_now()
        elif self._due is None:
            self._due = asyncio.get_running_loop().call_later(self.budget_s, self._send_now)

    def _send_now(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._held:
            return
        batch, self._held, self._held_bytes = self._held, [], 0
        previous = self._sending
        self._sending = asyncio.get_running_loop().create_task(self._send(batch, previous))

    async def _send(self, batch: list[tuple[str, bytes]], previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await previous  # batches leave in order even if one had to wait for the buffer
        self.batches += 1
        # nats-py appends each publish to its buffer without yielding (it waits only when its
        # buffer is full): the whole batch reaches the flusher together, one write.
        for subject, data in batch:
            try:
                await self.nc.publish(subject, data)
                self.published += 1
            except nats.errors.Error as exc:
                if self.on_error is not None:
                    self.on_error(subject, exc)
                else:
                    log.warning("publish to %s failed: %s", subject, exc)

    async def flush(self) -> None:
        """Send everything held now and wait until it is in NATS's buffer (before a close)."""
        self._send_now()
        if self._sending is not None:
            with contextlib.suppress(Exception):
                await self._sending

    @property
    def held(self) -> int:
        return len(self._held)
