"""The durable JetStream pull consumer that feeds ``store.write_events``.

Delivery guarantees, in order of importance:

- A message is acknowledged only after the transaction holding its event has committed, so a
  database outage or a crash loses nothing: JetStream redelivers, and the ledger drops repeats.
- A database error naks the whole batch with a delay and the loop keeps going.
- A message that is not a valid event is terminated (never redelivered) and counted; so is an
  event that PostgreSQL rejects on its own (e.g. a NUL byte in text), found by retrying the batch
  one event at a time, so one poisoned event cannot block the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import nats.errors
import nats.js.errors
from dialtone_common.bus import pull_consumer
from dialtone_proto import Event, decode_event, subjects
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from dialtone_writer import metrics
from dialtone_writer.redaction import Redactor
from dialtone_writer.settings import WriterSettings
from dialtone_writer.store import write_events
from dialtone_writer.webhooks import Outbox

log = logging.getLogger(__name__)


def lag_seconds(event: Event, committed: datetime) -> float:
    """Writer lag of one event: its own time (its publisher's wall clock) to ``committed``. A
    publisher whose clock runs ahead would give a negative lag; that counts as none."""
    at = event.at if event.at.tzinfo is not None else event.at.replace(tzinfo=UTC)
    return max(0.0, (committed - at).total_seconds())

# Errors that say "this data can never be written", as opposed to "the database is unavailable".
_REJECTED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# Everything else the database path can raise: connection refused or lost, server shutting down,
# pool exhausted, a statement timed out.
_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class Consumer:
    """Pulls call events in batches and writes each batch in one transaction.

    Args:
        pool: an asyncpg pool made by ``dialtone_common.db.create_pool``.
        js: the JetStream context; the stream must exist (``bus.ensure_stream``).
        settings: durable name, batch size and timeouts.
        filter_subject: the events to consume; every call's by default (tests narrow it).
        outbox: enqueues webhook deliveries in each batch's transaction (None: no webhooks).
        on_webhooks: called after a commit that enqueued deliveries (wakes the deliverer).
        redactor: keeps personal data out of what is written (None: events stored as published).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        settings: WriterSettings,
        *,
        filter_subject: str = subjects.EVENTS_ALL,
        outbox: Outbox | None = None,
        on_webhooks: Callable[[], None] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._pool, self._js, self._settings = pool, js, settings
        self._redactor = redactor
        self._filter = filter_subject
        self._outbox, self._on_webhooks = outbox, on_webhooks
        self._sub: JetStreamContext.PullSubscription | None = None
        self._db_ok = True
        self._db_answers = True  # the latest probe's verdict (probe_db)

    def health(self) -> str | None:
        """``/healthz`` check: None when healthy, else what is wrong."""
        if not self._js._nc.is_connected:  # noqa: SLF001 - the context exposes no public client
            return "nats disconnected"
        return None if self._db_ok and self._db_answers else "database unavailable"

    async def probe_db(self, stop: asyncio.Event, every_s: float = 2.0, timeout_s: float = 2.0) -> None:
        """Ask PostgreSQL ``SELECT 1`` every ``every_s``, so ``/healthz`` tells the truth within
        seconds even when no write is under way, or one hangs on a frozen server. A probe cut off
        by its deadline terminates its connection: returning it would wait on the same server."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(timeout_s), self._pool.acquire() as conn:
                    try:
                        await conn.fetchval("SELECT 1")
                    except (asyncio.CancelledError, OSError, asyncpg.InterfaceError):
                        conn.terminate()
                        raise
                self._db_answers = True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._db_answers:
                    log.warning("database probe failed: %s", type(exc).__name__)
                self._db_answers = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def start(self) -> None:
        """Create (or bind to) the durable pull consumer."""
        s = self._settings
        config = ConsumerConfig(
            durable_name=s.durable_name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s,
            # Room for a few batches in flight, small enough that an outage is not a flood.
            max_ack_pending=s.batch_size * 4,
            max_deliver=-1,
            filter_subject=self._filter,
        )
        self._sub = await pull_consumer(self._js, config)
        log.info("consuming %s as %s", self._filter, s.durable_name)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and write batches until ``stop`` is set; a batch in progress is always finished."""
        if self._sub is None:
            await self.start()
        sub = self._sub
        assert sub is not None
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self._settings.batch_size, timeout=self._settings.fetch_timeout_s)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    # NATS reconnects by itself; wait a little rather than spin on a dead connection.
                    log.warning("fetch failed: %s", exc)
                    await _wait(stop, self._settings.retry_delay_s)
                    continue
                if not await self.process(msgs):
                    await _wait(stop, self._settings.retry_delay_s)
                elif len(msgs) < self._settings.batch_size and self._settings.batch_linger_s > 0:
                    # A trickle of events (a few per call and turn) would otherwise cost a
                    # transaction each, and a rebuild of the call's transcript each: gathered
                    # for a moment, many calls' events share one (a profile at 50 calls).
                    await _wait(stop, self._settings.batch_linger_s)
        finally:
            # Drop the fetch inbox (the durable consumer stays): a pull subscription left behind
            # makes the connection's drain wait for its whole timeout.
            self._sub = None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        log.info("consumer %s stopped", self._settings.durable_name)

    async def process(self, msgs: list[Msg]) -> bool:
        """Decode, write and settle one fetched batch.

        Returns:
            False if the database was unavailable (the batch was nak'ed for redelivery).
        """
        if msgs:  # what the stream holds beyond this batch, written or not (a database outage grows it)
            metrics.PENDING.set(msgs[-1].metadata.num_pending)
        decoded: list[tuple[Msg, Event]] = []
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except ValidationError as exc:
                await self._reject(msg, f"invalid event: {exc.error_count()} error(s), first: {exc.errors()[0]['msg']}")
                continue
            if msg.metadata.num_delivered > 1:
                metrics.REDELIVERIES.inc()
            decoded.append((msg, event))
        if not decoded:
            return True
        try:
            await self._write([event for _, event in decoded])
        except _REJECTED as exc:
            log.warning("batch rejected (%s); writing its %d events one by one", exc, len(decoded))
            return await self._write_one_by_one(decoded)
        except _UNAVAILABLE as exc:
            await self._unavailable(decoded, exc)
            return False
        await _ack_all(msg for msg, _ in decoded)
        return True

    async def _write(self, events: list[Event]) -> None:
        started = time.perf_counter()
        # A bound on the whole write so a half-dead connection cannot stall the consumer past ack_wait.
        async with asyncio.timeout(self._settings.ack_wait_s * 0.66):
            async with self._pool.acquire() as conn:
                result = await write_events(conn, events, self._outbox, self._redactor)
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCHES.inc()
        metrics.DUPLICATES.inc(result.duplicates)
        if result.webhooks and self._on_webhooks is not None:
            self._on_webhooks()
        committed = datetime.now(UTC)
        for event in result.applied:
            metrics.EVENTS_WRITTEN.labels(event.type).inc()
            metrics.LAG_SECONDS.observe(lag_seconds(event, committed))
        if not self._db_ok:
            log.info("database available again")
        self._db_ok = True

    async def _write_one_by_one(self, decoded: list[tuple[Msg, Event]]) -> bool:
        for msg, event in decoded:
            try:
                await self._write([event])
            except _REJECTED as exc:
                await self._reject(msg, f"rejected by the database: {type(exc).__name__}: {exc}")
                continue
            except _UNAVAILABLE as exc:
                await self._unavailable([(msg, event)], exc)
                return False
            await _ack_all([msg])
        return True

    async def _unavailable(self, decoded: list[tuple[Msg, Event]], exc: BaseException) -> None:
        metrics.DB_ERRORS.inc()
        self._db_ok = False
        log.warning("database unavailable, %d events left for redelivery: %s: %s",
                    len(decoded), type(exc).__name__, exc)
        for msg, _ in decoded:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self._settings.retry_delay_s)

    async def _reject(self, msg: Msg, why: str) -> None:
        metrics.BAD_EVENTS.inc()
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        log.error("terminating message on %s (Nats-Msg-Id %s, stream seq %s): %s",
                  msg.subject, msg_id, msg.metadata.sequence.stream, why)
        with contextlib.suppress(nats.errors.Error):
            await msg.term()


async def _ack_all(msgs) -> None:
    """Acknowledge committed messages; a lost ack only causes a harmless redelivery."""
    for msg in msgs:
        try:
            await msg.ack()
        except nats.errors.Error as exc:
            log.warning("ack failed, the event will be redelivered and skipped: %s", exc)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Back off for ``seconds`` unless asked to stop first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
