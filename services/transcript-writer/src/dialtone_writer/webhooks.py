"""Webhooks to the operator's systems, signed to the Standard Webhooks spec.

Why here, in the transcript-writer: ``call.ended`` must reach a CRM only once the session it
carries is complete in PostgreSQL, and the writer is what completes it. So the writer's durable
JetStream consumer, in the transaction that applies a ``call.started``, ``call.ended`` or
``call.analyzed`` event, also inserts one delivery per endpoint that wants it
(:class:`Outbox`, table ``webhook_deliveries``): a delivery exists exactly when its event is
committed, a redelivered event adds none (the ledger and the deterministic id), and a writer
crash loses none. :class:`Deliverer` then sends them, in the same process but never on the
consumer's path: one worker per endpoint, each with its own HTTP connections, so a slow or dead
endpoint delays only itself, and the call path never waits on any webhook.

A delivery:

- ``webhook-id`` is ``msg_`` + a digest of the endpoint's name and the event id: the same across
  retries, redeliveries, restarts and several writers.
- Its body is built at its first attempt (the session as ``GET /sessions/{id}`` serves it) and
  stored before it is sent, so every retry sends the same bytes.
- In order per call and endpoint: a delivery waits while an earlier one of the same call (by
  event time) to the same endpoint is pending.
- A claim takes a lease (``locked_until``, the timeout plus a margin) so several writers never
  send one delivery at once; a deliverer that dies mid-attempt leaves its lease to expire, and the
  delivery is sent again (at least once), with the same id.
- Retried on network errors, timeouts, 408, 429 (after ``Retry-After``) and 5xx, with exponential
  backoff and jitter, until ``WEBHOOK_RETRY_FOR_S`` has passed; then, or at once for any other
  answer, it is dead: kept with its attempts, resent only by an operator (admin API).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
from dialtone_common.session_view import get_session, session_json
from dialtone_common.webhook_config import WEBHOOK_EVENTS, Endpoint
from dialtone_proto import CallStarted, Event
from standardwebhooks.webhooks import Webhook

from dialtone_writer import metrics

log = logging.getLogger(__name__)

RESPONSE_KEPT = 200  # bytes of an answer kept with its attempt
USER_AGENT = "Dialtone-Webhooks/1"
LEASE_MARGIN_S = 5.0
_NO_OUTCOME = "no outcome recorded: the deliverer stopped during this attempt"


def delivery_id(endpoint: str, event_id: str) -> str:
    """The ``webhook-id`` of one event's delivery to one endpoint: deterministic, so a retry, a
    redelivery of the event and a restarted deliverer all send the same one."""
    digest = hashlib.sha256(f"{endpoint}\x00{event_id}".encode()).digest()[:18]
    return "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()


def backoff_s(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None, jitter: float = 0.5
) -> float:
    """The delay after failed attempt ``attempt`` (1, 2, ...): ``base_s * 2**(attempt-1)``, at most
    ``max_s``, times a random factor in [1 - jitter, 1] (retries of many deliveries spread out, yet
    with the default each gap is at least the one before it)."""
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 40))
    return ceiling * (rng or random).uniform(1.0 - jitter, 1.0)


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header's delay: seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def envelope(event_type: str, at: datetime, data: dict[str, Any]) -> bytes:
    """The Standard Webhooks body: ``type``, ``timestamp`` (the event's time) and ``data``."""
    at = at.astimezone(UTC)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps({"type": event_type, "timestamp": stamp, "data": data})


class Outbox:
    """Enqueues webhook deliveries in the writer's transaction (``store.write_events``)."""

    def __init__(self, endpoints: Sequence[Endpoint], ended_delay_s: float = 0.0) -> None:
        self.endpoints = list(endpoints)
        self.ended_delay_s = ended_delay_s

    async def enqueue(self, conn: asyncpg.Connection, events: Sequence[Event]) -> int:
        """Insert the deliveries of ``events`` (those applied now); returns how many are new."""
        rows: list[tuple[str, str, str, str, str, str, datetime, float]] = []
        for e in events:
            if e.type not in WEBHOOK_EVENTS:
                continue
            # The agent that took the call (an agent's endpoints get its calls).
            agent = e.agent if isinstance(e, CallStarted) else await conn.fetchval(
                "SELECT agent FROM call_sessions WHERE call_sid = $1", e.call_id
            )
            delay = self.ended_delay_s if e.type == "call.ended" else 0.0
            for ep in self.endpoints:
                if ep.wants(e.type, agent):
                    rows.append((delivery_id(ep.name, e.id), ep.name, ep.url, e.id, e.type, e.call_id, e.at, delay))
        if not rows:
            return 0
        cols = list(zip(*rows, strict=True))
        inserted = await conn.fetch(
            """
            INSERT INTO webhook_deliveries (id, endpoint, url, event_id, event_type, call_sid, event_at,
                                            next_attempt_at)
            SELECT r.id, r.endpoint, r.url, r.event_id, r.event_type, r.call_sid, r.event_at,
                   now() + make_interval(secs => r.delay)
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::timestamptz[], $8::float8[])
                 AS r(id, endpoint, url, event_id, event_type, call_sid, event_at, delay)
            ORDER BY r.event_at
            ON CONFLICT (id) DO NOTHING
            RETURNING id
            """,
            *[list(c) for c in cols],
        )
        return len(inserted)


# A pending delivery is due when its time has come, no deliverer holds it, and no earlier delivery
# of its call to its endpoint is still pending (order per call).
_CLAIM = """
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.endpoint = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.locked_until IS NULL OR d.locked_until <= now())
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.endpoint = d.endpoint AND p.call_sid = d.call_sid AND p.status = 'pending'
            AND (p.event_at, p.seq) < (d.event_at, d.seq))
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries w
    SET locked_until = now() + make_interval(secs => $3), attempts = w.attempts + 1
    FROM due WHERE w.id = due.id
    RETURNING w.id, w.event_type, w.event_at, w.call_sid, w.attempts, w.payload, w.retry_from
), started AS (
    INSERT INTO webhook_attempts (delivery_id, n, at, latency_ms, error)
    SELECT id, attempts, now(), 0, $4 FROM claimed
    ON CONFLICT (delivery_id, n) DO UPDATE SET at = EXCLUDED.at, status_code = NULL, latency_ms = 0,
        response = NULL, error = EXCLUDED.error
)
SELECT * FROM claimed
"""

_ATTEMPT_DONE = """
UPDATE webhook_attempts SET at = $3, status_code = $4, latency_ms = $5, response = $6, error = $7
WHERE delivery_id = $1 AND n = $2
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt gave: ``status`` (None without an answer), ``error``, and what to do next."""

    status: int | None
    latency_ms: float
    response: str | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in (408, 429) or self.status >= 500

    @property
    def reason(self) -> str:
        """The failure's label in ``dialtone_writer_webhook_failures_total``."""
        if self.status is None:
            return "timeout" if self.error == "timeout" else "network"
        if self.status == 429:
            return "http_429"
        if self.status >= 500:
            return "http_5xx"
        if 400 <= self.status < 500:
            return "http_4xx"
        return "other"


class Deliverer:
    """Sends the enqueued deliveries: one worker per endpoint (see the module's docstring).

    Args:
        pool: the deliverer's own connections (a slow query here never holds the consumer's).
        endpoints: where to send; a delivery for an endpoint no longer configured stays pending.
        retry_for_s, timeout_s, backoff_s, backoff_max_s, concurrency, poll_s: the WEBHOOK_* settings.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        endpoints: Sequence[Endpoint],
        *,
        retry_for_s: float = 24 * 3600.0,
        timeout_s: float = 10.0,
        backoff_s: float = 5.0,
        backoff_max_s: float = 3600.0,
        concurrency: int = 4,
        poll_s: float = 1.0,
        gauge_every_s: float = 5.0,
        jitter: float = 0.5,
    ) -> None:
        self._pool = pool
        self.endpoints = {ep.name: ep for ep in endpoints}
        self.retry_for_s, self.timeout_s = retry_for_s, timeout_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.concurrency, self.poll_s, self.gauge_every_s = concurrency, poll_s, gauge_every_s
        self.jitter = jitter
        self._signers = {ep.name: Webhook(ep.secret) for ep in endpoints}
        self._wake = {ep.name: asyncio.Event() for ep in endpoints}

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, endpoints: Sequence[Endpoint], settings: Any) -> Deliverer:
        return cls(
            pool, endpoints, retry_for_s=settings.webhook_retry_for_s, timeout_s=settings.webhook_timeout_s,
            backoff_s=settings.webhook_backoff_s, backoff_max_s=settings.webhook_backoff_max_s,
            concurrency=settings.webhook_concurrency, poll_s=settings.webhook_poll_s,
        )  # fmt: skip

    def notify(self) -> None:
        """New deliveries were committed: look now rather than at the next poll."""
        for wake in self._wake.values():
            wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; attempts in flight then finish (each within the timeout)."""
        tasks = [asyncio.create_task(self._worker(ep, stop), name=f"webhooks-{ep.name}") for ep in self.endpoints.values()]
        tasks.append(asyncio.create_task(self._gauges(stop), name="webhooks-gauges"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _gauges(self, stop: asyncio.Event) -> None:
        """The backlog and the age of its oldest delivery, from the table: every writer reports the
        same whole (alerts take the max over instances)."""
        while not stop.is_set():
            with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                async with asyncio.timeout(self.gauge_every_s * 2), self._pool.acquire() as conn:
                    row = await conn.fetchrow(
                        "SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM now() - min(retry_from)), 0)::float8 AS age"
                        " FROM webhook_deliveries WHERE status = 'pending'"
                    )
                metrics.WEBHOOK_BACKLOG.set(row["n"])
                metrics.WEBHOOK_OLDEST_AGE.set(max(0.0, row["age"]))
            await _wait(stop, self.gauge_every_s)

    async def _worker(self, ep: Endpoint, stop: asyncio.Event) -> None:
        wake = self._wake[ep.name]
        # Connections of this endpoint only; the total timeout bounds connect, answer and body.
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         headers={"User-Agent": USER_AGENT}) as http:
            while not stop.is_set():
                wake.clear()
                try:
                    async with asyncio.timeout(10), self._pool.acquire() as conn:
                        claimed = await conn.fetch(
                            _CLAIM, ep.name, self.concurrency, self.timeout_s + LEASE_MARGIN_S, _NO_OUTCOME
                        )
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("webhooks %s: cannot read deliveries: %s: %s", ep.name, type(exc).__name__, exc)
                    await _wait(stop, self.poll_s * 2)
                    continue
                if not claimed:
                    await _wait_any(stop, wake, self.poll_s)
                    continue
                await asyncio.gather(*(self._attempt(http, ep, row) for row in claimed))

    async def _attempt(self, http: aiohttp.ClientSession, ep: Endpoint, row: asyncpg.Record) -> None:
        """One attempt of one claimed delivery, its outcome written back (errors logged, not raised:
        the lease then expires and the delivery is tried again)."""
        try:
            body = row["payload"]
            if body is None:
                body = await self._build(row)
            outcome = await self._send(http, ep, row["id"], body.encode())
            await self._settle(row, outcome)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("webhooks %s: delivery %s not settled (%s: %s); tried again after its lease",
                        ep.name, row["id"], type(exc).__name__, exc)
        except Exception:  # a bug must not take down the writer: the lease expires, it is tried again
            log.exception("webhooks %s: delivery %s failed; tried again after its lease", ep.name, row["id"])

    async def _build(self, row: asyncpg.Record) -> str:
        """The body of a delivery, stored before its first send so that every retry sends it unchanged."""
        async with self._pool.acquire() as conn:
            detail = await get_session(conn, row["call_sid"])
            data = session_json(detail) if detail is not None else {"call_sid": row["call_sid"]}
            body = envelope(row["event_type"], row["event_at"], data).decode()
            return await conn.fetchval(
                "UPDATE webhook_deliveries SET payload = COALESCE(payload, $2) WHERE id = $1 RETURNING payload",
                row["id"], body,
            )

    async def _send(self, http: aiohttp.ClientSession, ep: Endpoint, msg_id: str, body: bytes) -> Outcome:
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signers[ep.name].sign(msg_id, now, body),
        }
        metrics.WEBHOOK_ATTEMPTS.inc()
        started = time.perf_counter()
        try:
            async with http.post(ep.url, data=body, headers=headers, allow_redirects=False) as r:
                head = await r.content.read(RESPONSE_KEPT)
                status, retry_after = r.status, r.headers.get("Retry-After")
        except TimeoutError:
            return self._observe(Outcome(None, _ms(started), error="timeout"))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._observe(Outcome(None, _ms(started), error=f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT]))
        text = head.decode("utf-8", errors="replace")
        return self._observe(Outcome(status, _ms(started), text, retry_after=retry_after_s(retry_after, now)))

    def _observe(self, outcome: Outcome) -> Outcome:
        metrics.WEBHOOK_ATTEMPT_SECONDS.observe(outcome.latency_ms / 1000)
        if not outcome.ok:
            metrics.WEBHOOK_FAILED_ATTEMPTS.labels(outcome.reason).inc()
        return outcome

    async def _settle(self, row: asyncpg.Record, outcome: Outcome) -> None:
        """Write the attempt and the delivery's next state: delivered, retried later, or dead."""
        now = datetime.now(UTC)
        error = outcome.error or (None if outcome.ok else f"HTTP {outcome.status}")
        if outcome.ok:
            status, next_at = "delivered", None
        elif not outcome.retryable:
            status, next_at = "dead", None
        else:
            delay = backoff_s(row["attempts"], self.backoff_s, self.backoff_max_s, jitter=self.jitter)
            if outcome.status == 429 and outcome.retry_after is not None:
                delay = outcome.retry_after
            next_at = now + timedelta(seconds=delay)
            give_up = row["retry_from"] + timedelta(seconds=self.retry_for_s)
            status = "pending" if next_at <= give_up else "dead"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_ATTEMPT_DONE, row["id"], row["attempts"], now, outcome.status, outcome.latency_ms,
                               outcome.response, outcome.error)
            await conn.execute(
                """
                UPDATE webhook_deliveries
                SET status = $2, next_attempt_at = COALESCE($3, next_attempt_at), locked_until = NULL,
                    delivered_at = CASE WHEN $2 = 'delivered' THEN $4 ELSE delivered_at END,
                    last_status = $5, last_error = $6
                WHERE id = $1 AND attempts = $7
                """,
                row["id"], status, next_at, now, outcome.status, error, row["attempts"],
            )
        if status != "pending":
            metrics.WEBHOOK_DELIVERIES.labels(status).inc()
        if status == "dead":
            log.warning("webhook %s (%s of %s) dead after %d attempt(s): %s", row["id"], row["event_type"],
                        row["call_sid"], row["attempts"], error)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Until ``stop`` or ``wake`` is set, or ``seconds`` pass."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
