"""Durable call events: published to JetStream in order, each with ``Nats-Msg-Id``.

The conversation never waits on the event store: events go into a per-call queue that one task
publishes in order. A failed publish is retried with the same id, which JetStream deduplicates,
so a retry can never double a line. At the end of the call the queue is drained.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from dialtone_proto.events import encode_event
from nats.js import JetStreamContext

from dialtone_bridge import metrics as m

GIVE_UP_AFTER_S = 300.0


class EventPublisher:
    def __init__(self, js: JetStreamContext, call_id: str, log: logging.LoggerAdapter, epoch: int = 0) -> None:
        self._js, self.call_id, self.log = js, call_id, log
        # A bridge that takes a call over (epoch 1, 2, ...) numbers its events afresh under its own
        # prefix: reusing the lost bridge's ids would make JetStream drop them as duplicates.
        self._prefix = call_id if epoch == 0 else f"{call_id}-r{epoch}"
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._n = 0
        self._task = asyncio.create_task(self._run(), name=f"events-{call_id}")

    def next_id(self) -> str:
        self._n += 1
        return f"{self._prefix}-{self._n}"

    def emit(self, cls: type, **fields: Any) -> Any:
        """Build an event of ``cls`` for this call and queue it; returns the event."""
        event = cls(id=self.next_id(), call_id=self.call_id, at=fields.pop("at", None) or datetime.now(UTC), **fields)
        self._queue.put_nowait(event)
        return event

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            await self._publish(event)

    async def _publish(self, event: Any) -> None:
        data = encode_event(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_AFTER_S
        delay = 0.1
        while True:
            try:
                await self._js.publish(event.subject, data, headers={"Nats-Msg-Id": event.id}, timeout=5)
                m.EVENTS.labels(event.type).inc()
                return
            except Exception as exc:  # any bus failure: keep the event, retry with the same id
                if loop.time() > deadline:
                    m.EVENTS_LOST.inc()
                    self.log.error("gave up publishing %s %s: %s", event.type, event.id, exc)
                    return
                m.EVENT_RETRIES.inc()
                self.log.warning("publishing %s failed (%s); retrying", event.type, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Publish everything queued, then stop."""
        self._queue.put_nowait(None)
        await self._task
