"""The sweeper: every call reaches a terminal state, even when nobody reports its end.

A bridge that dies mid-call never publishes ``call.ended``; an outbound call that was never answered
gets Twilio status callbacks but no bridge at all. Such a session would stay open forever. Every
``sweep_interval_s`` the sweeper looks for sessions that are

- still open (``ended_at IS NULL``),
- quiet: no event for ``sweep_after_s`` (``updated_at``), and
- not live: no heartbeat on ``dt.v1.live.<call_id>`` within ``sweep_live_window_s``,

and closes each by publishing, like any other producer, a ``call.status`` (``failed`` if the call
never got going, else ``completed``; skipped when a terminal status is already known, so a real
``busy`` or ``no-answer`` is kept) and a ``call.ended``. The consumer then writes them as usual.

Event ids are deterministic (``<call_id>-swept-status``, ``<call_id>-swept``) and go out as
``Nats-Msg-Id``, so several writers sweeping at once produce each event once. The events are dated
at the call's last known activity, so a swept call's duration is not stretched by the waiting time,
and any genuine later report (a late Twilio ``completed``) still wins.

Heartbeats are only held in memory: the sweeper does nothing until it has listened for a whole
live window (after a start or a NATS reconnect), so it never mistakes a live call for a dead one
merely because it was not listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg
import nats.errors
import nats.js.errors
from dialtone_proto import CallEnded, CallStatus, encode_event, subjects
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from dialtone_writer import metrics
from dialtone_writer.mapping import RANK_TERMINAL
from dialtone_writer.settings import WriterSettings

log = logging.getLogger(__name__)

# Open, quiet sessions, oldest activity first. "answered": the bridge took the call or Twilio
# reported it in progress; "last_at": the latest event of the call (its last sign of life).
_CANDIDATES = """
SELECT s.call_sid, s.status_rank,
       (EXISTS (SELECT 1 FROM call_events e WHERE e.call_sid = s.call_sid AND e.type = 'call.started')
        OR EXISTS (SELECT 1 FROM call_status_history h
                   WHERE h.call_sid = s.call_sid AND h.status = 'in-progress')) AS answered,
       GREATEST(s.started_at, (SELECT max(e.at) FROM call_events e WHERE e.call_sid = s.call_sid)) AS last_at
FROM call_sessions s
WHERE s.ended_at IS NULL AND s.updated_at < now() - make_interval(secs => $1)
ORDER BY s.updated_at
LIMIT $2
"""

SWEPT_REASON = "swept: no activity"


def sweep_events(call_sid: str, answered: bool, status_known_terminal: bool, at: datetime) -> list:
    """The events that close one quiet call (pure, so the rule is unit-tested on its own).

    Args:
        call_sid: the call.
        answered: whether the call ever got going (call.started or in-progress).
        status_known_terminal: a terminal status (busy, no-answer, ...) is already recorded.
        at: when the call was last heard of.
    """
    events: list = []
    if not status_known_terminal:
        events.append(CallStatus(
            id=f"{call_sid}-swept-status", call_id=call_sid, at=at,
            status="completed" if answered else "failed", source="sweeper",
        ))
    events.append(CallEnded(id=f"{call_sid}-swept", call_id=call_sid, at=at, reason=SWEPT_REASON))
    return events


class Sweeper:
    """Closes sessions of calls that are over but were never reported ended.

    Args:
        pool: the writer's asyncpg pool.
        nc: the NATS connection (heartbeats).
        js: its JetStream context (the closing events).
        settings: ``sweep_interval_s``, ``sweep_after_s``, ``sweep_live_window_s``, ``sweep_batch``.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: Client,
        js: JetStreamContext,
        settings: WriterSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool, self._nc, self._js, self._settings = pool, nc, js, settings
        self._clock = clock
        self._last_beat: dict[str, float] = {}
        self._sub: Subscription | None = None
        self._listening_since: float | None = None
        self._reconnects = 0

    async def start(self) -> None:
        """Listen to every live call's heartbeat."""
        self._sub = await self._nc.subscribe(subjects.LIVE_ALL, cb=self._on_heartbeat)
        self._listening_since = self._clock()
        self._reconnects = self._nc.stats.get("reconnects", 0)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_heartbeat(self, msg: Msg) -> None:
        # The subject names the call; the payload is the admin view's business, not ours.
        self.heard(msg.subject.rsplit(".", 1)[-1])

    def heard(self, call_id: str) -> None:
        """Record a heartbeat of ``call_id``."""
        self._last_beat[call_id] = self._clock()

    def live(self) -> set[str]:
        """Calls heard from within the live window; forgets the others."""
        now, window = self._clock(), self._settings.sweep_live_window_s
        for call_id in [c for c, t in self._last_beat.items() if now - t > window]:
            del self._last_beat[call_id]
        return set(self._last_beat)

    def ready(self) -> bool:
        """Whether the sweeper has listened for heartbeats long enough to trust their absence."""
        if self._listening_since is None or not self._nc.is_connected:
            return False
        reconnects = self._nc.stats.get("reconnects", 0)
        if reconnects != self._reconnects:
            # Heartbeats were lost while disconnected: listen for a whole window again.
            self._reconnects, self._listening_since = reconnects, self._clock()
            return False
        return self._clock() - self._listening_since > self._settings.sweep_live_window_s

    async def sweep_once(self) -> list[str]:
        """Close every quiet, open, not-live session found now.

        Returns:
            The call ids swept (their closing events were published).
        """
        if not self.ready():
            return []
        s = self._settings
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_CANDIDATES, float(s.sweep_after_s), s.sweep_batch)
        live = self.live()
        swept: list[str] = []
        for row in rows:
            call_sid = row["call_sid"]
            if call_sid in live:
                continue
            events = sweep_events(call_sid, row["answered"], row["status_rank"] >= RANK_TERMINAL, row["last_at"])
            for event in events:
                await self._js.publish(
                    event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id}, timeout=5
                )
            metrics.SESSIONS_SWEPT.inc()
            swept.append(call_sid)
            log.warning("swept call %s: open, no heartbeat and no event for %.0fs (%s)", call_sid,
                        s.sweep_after_s, "closed as " + events[0].status if len(events) > 1 else "status kept")
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_interval_s`` until ``stop`` is set; a failed round is retried next time."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.sweep_interval_s)
            if stop.is_set():
                break
            try:
                await self.sweep_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("sweep failed, retrying in %.0fs: %s: %s",
                            self._settings.sweep_interval_s, type(exc).__name__, exc)
        log.info("sweeper stopped")
