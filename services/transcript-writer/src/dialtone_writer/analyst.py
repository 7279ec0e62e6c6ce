"""Post-call analysis: after a call ends, a text model reads its stored transcript and tool calls
and answers one JSON object (a summary, the agent's extraction fields, a verdict against its
success criteria), published as the call's ``call.analyzed`` event.

Why a worker of the transcript-writer rather than a service of its own: the analysis reads what
the writer stores (the session read-model), its result is applied by the writer's consumer and
sent by the writer's webhook outbox, and it needs PostgreSQL, NATS and the agents' folder, which
the writer already has; a sixth service would add an image target, a compose service, a
Kubernetes deployment and its monitoring for a loop that is idle most of the time. It runs beside
the consumer on connections of its own, so a slow model never holds the consumer's.

How each call is analysed exactly once:

- A durable JetStream consumer of ``call.ended`` events (``ANALYSIS_DURABLE_NAME``) feeds it; a
  message is acknowledged only once the call's job is settled (done, failed, or not wanted).
  Calls are analysed concurrently (``ANALYSIS_CONCURRENCY``), each in its own task, so a slow
  API answer delays no other call's acknowledgement; a running analysis keeps its message with
  in-progress acks, and a worker that dies leaves it to be redelivered after ``ANALYSIS_ACK_WAIT_S``.
- The job is a row of ``analysis_jobs`` (pending, done or failed; attempts; reason; cost). While
  a worker runs it, it holds a PostgreSQL advisory lock on the call (released by the server if the
  worker dies), so two writers, or two ``call.ended`` events of one call, never run it twice at once.
- The model's answer is stored in the job before the event is published, and the event's id (also
  its ``Nats-Msg-Id``) is ``analysis-<call_id>``: a worker that dies after the answer republishes
  the same event, which JetStream and the writer's ledger drop as a repeat; the outbox therefore
  enqueues one ``call.analyzed`` webhook per endpoint.
- An API error is retried with exponential backoff and jitter up to ``ANALYSIS_MAX_ATTEMPTS``
  (attempts are counted in the job, so a restart does not grant more); then the job is failed,
  with the reason, and the session shows it. A request the API refuses for good (400, 401, 403,
  404, 422) fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import openai
import orjson
from dialtone_common.analysis_config import AnalysisConfig, response_schema, text_cost_usd
from dialtone_common.bus import pull_consumer
from dialtone_common.session_view import get_session
from dialtone_proto import CallAnalyzed, CallEnded, decode_event, encode_event, subjects
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from dialtone_writer import metrics
from dialtone_writer.redaction import Redactor
from dialtone_writer.settings import WriterSettings
from dialtone_writer.webhooks import backoff_s

log = logging.getLogger(__name__)

ENDED_SUBJECT = f"{subjects.PREFIX}.events.*.call_ended"
SCHEMA_NAME = "call_analysis"
FINAL_STATUSES = (400, 401, 403, 404, 422)  # the same request can never succeed
MAX_TRANSCRIPT_CHARS = 200_000
STOP_GRACE_S = 5.0
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

INSTRUCTIONS = """You analyse a finished phone call between a caller and an AI phone agent, from its \
transcript and the tools the agent called. Answer only with the JSON object the schema describes.
- summary (when asked for): two to four plain sentences on what the caller wanted and what happened.
- fields (when asked for): what the call says about each field; null where a nullable field is not known.
- verdict: success is true only if the call met the success criteria below; reason says why in one \
or two sentences."""


def event_id(call_id: str) -> str:
    """The id (and ``Nats-Msg-Id``) of a call's analysis event: one per call."""
    return f"analysis-{call_id}"


def transcript_text(detail: dict[str, Any]) -> str:
    """The stored call as the model reads it: a header, the lines in order (tool calls in place)."""
    head = [f"Agent: {detail.get('agent') or 'unknown'}. Direction: {detail.get('direction') or 'inbound'}."]
    if detail.get("duration_s") is not None:
        head.append(f"Duration: {detail['duration_s']:.0f} s. End reason: {detail.get('end_reason') or 'unknown'}.")
    if detail.get("outcome"):
        head.append(f"Outcome set by the agent: {detail['outcome']}.")
    if detail.get("transferred_to"):
        head.append("The caller was transferred to a human.")
    entries: list[tuple[Any, int, str]] = []
    for line in detail.get("transcript", []):
        who = "Caller" if line["role"] == "caller" else "Agent"
        text = line["text"] or ("(inaudible)" if line.get("untranscribed") else "")
        cut = " [cut off]" if line.get("interrupted") else ""
        entries.append((line["at"], line["seq"], f"{who}: {text}{cut}"))
    for call in detail.get("tool_calls", []):
        args = orjson.dumps(call.get("arguments")).decode()[:2000]
        result = orjson.dumps(call.get("result") if call.get("ok") else call.get("error")).decode()[:2000]
        entries.append((call["at"], call["seq"], f"Tool {call['name']}({args}) -> {'ok' if call.get('ok') else 'error'}: {result}"))
    entries.sort(key=lambda e: (e[1], e[0]))
    body = "\n".join(text for _, _, text in entries) or "(nothing was said)"
    return ("\n".join(head) + "\n\nTranscript:\n" + body)[:MAX_TRANSCRIPT_CHARS]


def instructions(config: AnalysisConfig) -> str:
    criteria = config.success_criteria or "The caller's request was handled: answered, done, or passed on."
    return f"{INSTRUCTIONS}\n\nSuccess criteria: {criteria}"


def failure_reason(exc: BaseException, timeout_s: float) -> str:
    """What went wrong with one attempt, for the job and the session (never a key)."""
    if isinstance(exc, openai.APITimeoutError):
        return f"timeout: no answer within {timeout_s:g} s"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"[:500]
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


class AnalysisFailed(Exception):
    """The model answered, but not with a usable analysis (a refusal, an incomplete answer)."""


class Analyst:
    """The analysis worker (see the module's docstring).

    Args:
        pool: connections of its own (each running analysis holds one for its lock).
        js: the JetStream context; the stream must exist.
        settings: the ANALYSIS_* settings.
        configs: each agent's ``[analysis]``, by agent name; a call of another agent is not analysed.
        client: the OpenAI client (``AsyncOpenAI``, ``max_retries=0``: the attempts are counted here).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        settings: WriterSettings,
        configs: dict[str, AnalysisConfig],
        client: openai.AsyncOpenAI,
        redactor: Redactor | None = None,
    ) -> None:
        self._pool, self._js, self._settings = pool, js, settings
        self.configs, self._client = configs, client
        # The model reads the stored, redacted transcript; its answer is redacted all the same
        # before it is stored (analysis_jobs), in case it made up or pieced together a value.
        self._redactor = redactor
        self._sub: JetStreamContext.PullSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Create (or bind to) the durable pull consumer of call.ended events."""
        s = self._settings
        config = ConsumerConfig(
            durable_name=s.analysis_durable_name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.analysis_ack_wait_s,
            max_ack_pending=s.analysis_concurrency * 4,
            max_deliver=-1,
            filter_subject=ENDED_SUBJECT,
        )
        self._sub = await pull_consumer(self._js, config)
        log.info("analysing the calls of %s with %s (%s)", ", ".join(sorted(self.configs)),
                 s.analysis_model, s.analysis_durable_name)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch call.ended events while there is room, each analysed in a task of its own, until
        ``stop``; analyses then get a short grace, and those still running are left for redelivery."""
        if self._sub is None:
            await self.start()
        sub = self._sub
        assert sub is not None
        limit = self._settings.analysis_concurrency
        try:
            while not stop.is_set():
                if len(self._tasks) >= limit:
                    await asyncio.wait(self._tasks, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(limit - len(self._tasks), timeout=self._settings.fetch_timeout_s)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    log.warning("analysis fetch failed: %s", exc)
                    await _wait(stop, self._settings.retry_delay_s)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg, stop), name="analysis")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._sub = None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        log.info("analysis worker stopped")

    async def _handle(self, msg: Msg, stop: asyncio.Event) -> None:
        """One call.ended message, settled (ack, nak or term) whatever happens."""
        try:
            event = decode_event(msg.data)
        except ValidationError as exc:
            log.error("analysis: terminating an invalid call.ended: %s", exc.errors()[0]["msg"])
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        if not isinstance(event, CallEnded):
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        keep = asyncio.create_task(self._keep(msg), name="analysis-in-progress")
        settle: tuple[str, float] = ("nak", self._settings.retry_delay_s)
        try:
            settle = await self.analyse(event, stop, msg.metadata.num_delivered or 1)
        except _DB_ERRORS as exc:
            log.warning("analysis of %s: database unavailable (%s: %s); redelivered later",
                        event.call_id, type(exc).__name__, exc)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("analysis of %s: cannot publish (%s); redelivered later", event.call_id, exc)
        except asyncio.CancelledError:
            settle = ("nak", 0.0)  # the worker stops: another one (or this one, restarted) takes it
            raise
        except Exception:  # a bug must not take down the writer; the call is tried again later
            log.exception("analysis of %s failed", event.call_id)
            settle = ("nak", self._settings.analysis_backoff_max_s)
        finally:
            keep.cancel()
            with contextlib.suppress(nats.errors.Error, asyncio.CancelledError):
                if settle[0] == "ack":
                    await msg.ack()
                else:
                    await msg.nak(delay=settle[1] or None)

    async def _keep(self, msg: Msg) -> None:
        """In-progress acks while the analysis runs, so its message is not redelivered meanwhile."""
        every = max(self._settings.analysis_ack_wait_s / 3, 0.2)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def analyse(self, ended: CallEnded, stop: asyncio.Event, delivered: int = 1) -> tuple[str, float]:
        """Analyse the call of ``ended`` if its agent wants it and it was not already.

        Returns:
            ``("ack", 0)`` when settled, or ``("nak", delay)`` to be tried again later.
        """
        s = self._settings
        wait = s.analysis_delay_s - (datetime.now(UTC) - _aware(ended.at)).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT agent, ended_at FROM call_sessions WHERE call_sid = $1", ended.call_id)
            if row is None or row["ended_at"] is None:  # the writer has not applied call.ended yet
                return "nak", min(2.0 * delivered, 30.0)
            config = self.configs.get(row["agent"] or "")
            if config is None:
                return "ack", 0.0
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", event_id(ended.call_id)):
                return "nak", 5.0  # another worker runs it right now
            try:
                return await self._run_job(conn, ended, row["ended_at"], config, stop)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", event_id(ended.call_id))

    async def _run_job(
        self, conn: asyncpg.Connection, ended: CallEnded, ended_at: datetime, config: AnalysisConfig,
        stop: asyncio.Event,
    ) -> tuple[str, float]:
        s = self._settings
        call_id = ended.call_id
        model = config.model or s.analysis_model
        await conn.execute(
            "INSERT INTO analysis_jobs (call_sid, agent, model) VALUES ($1, $2, $3) ON CONFLICT (call_sid) DO NOTHING",
            call_id, config.agent, model,
        )
        job = await conn.fetchrow("SELECT status, attempts, reason, result FROM analysis_jobs WHERE call_sid = $1", call_id)
        if job["status"] != "pending":
            return "ack", 0.0
        if job["result"] is not None:  # answered before a crash: publish that answer again, same id
            await self._publish(conn, CallAnalyzed.model_validate(job["result"]))
            return "ack", 0.0
        reason = job["reason"]
        while True:
            attempts = await conn.fetchval(
                "UPDATE analysis_jobs SET attempts = attempts + 1, updated_at = now() WHERE call_sid = $1"
                " RETURNING attempts", call_id,
            )
            if attempts > s.analysis_max_attempts:  # the last attempt was cut short (a crash)
                await self._fail(conn, call_id, attempts - 1, reason or "the worker stopped during the last attempt")
                return "ack", 0.0
            started = time.perf_counter()
            try:
                event = await self._ask(conn, call_id, config, model, ended_at, attempts)
            except (openai.APIError, AnalysisFailed) as exc:
                reason = failure_reason(exc, s.analysis_timeout_s)
                metrics.ANALYSIS_ATTEMPTS.labels("error").inc()
                final = isinstance(exc, openai.APIStatusError) and exc.status_code in FINAL_STATUSES
                log.warning("analysis of %s: attempt %d of %d failed: %s", call_id, attempts, s.analysis_max_attempts, reason)
                if final or attempts >= s.analysis_max_attempts:
                    await self._fail(conn, call_id, attempts, reason)
                    return "ack", 0.0
                await conn.execute("UPDATE analysis_jobs SET reason = $2, updated_at = now() WHERE call_sid = $1",
                                   call_id, reason)
                await _wait(stop, backoff_s(attempts, s.analysis_backoff_s, s.analysis_backoff_max_s))
                if stop.is_set():
                    return "nak", 0.0
                continue
            metrics.ANALYSIS_ATTEMPTS.labels("ok").inc()
            metrics.ANALYSIS_SECONDS.observe(time.perf_counter() - started)
            await self._publish(conn, event)
            return "ack", 0.0

    async def _ask(
        self, conn: asyncpg.Connection, call_id: str, config: AnalysisConfig, model: str, ended_at: datetime,
        attempts: int,
    ) -> CallAnalyzed:
        """One request to the Responses API; the answer is stored in the job before it is returned."""
        s = self._settings
        detail = await get_session(conn, call_id)
        assert detail is not None
        response = await self._client.responses.create(
            model=model,
            instructions=instructions(config),
            input=transcript_text(detail),
            text={"format": {"type": "json_schema", "name": SCHEMA_NAME, "schema": response_schema(config),
                             "strict": True}},
            store=False,
            timeout=s.analysis_timeout_s,
        )
        if response.status not in (None, "completed"):
            why = response.incomplete_details.reason if response.incomplete_details else response.status
            raise AnalysisFailed(f"the model's answer is {response.status} ({why})")
        refusal = next((c.refusal for item in response.output if item.type == "message"
                        for c in item.content if c.type == "refusal"), None)
        if refusal:
            raise AnalysisFailed(f"the model refused: {refusal}"[:500])
        try:
            answer = orjson.loads(response.output_text)
        except orjson.JSONDecodeError as exc:
            raise AnalysisFailed(f"the model's answer is not JSON: {exc}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("verdict"), dict):
            raise AnalysisFailed("the model's answer lacks the verdict")
        usage = response.usage
        tokens = {
            "input": usage.input_tokens if usage else 0,
            "cached": usage.input_tokens_details.cached_tokens if usage and usage.input_tokens_details else 0,
            "output": usage.output_tokens if usage else 0,
        }
        cost = text_cost_usd(s.analysis_prices, response.model or model, tokens)
        now = datetime.now(UTC)
        latency_ms = round((now - _aware(ended_at)).total_seconds() * 1000, 1)
        analysis = {
            "status": "done",
            **({"summary": answer.get("summary")} if config.summary else {}),
            **({"fields": answer.get("fields")} if config.schema is not None else {}),
            "verdict": answer["verdict"],
            "model": response.model or model,
            "cost_usd": cost,
            "tokens": tokens,
            "attempts": attempts,
            "latency_ms": latency_ms,
        }
        event = CallAnalyzed(id=event_id(call_id), call_id=call_id, at=now, analysis=analysis,
                             model=response.model or model, cost_usd=cost, tokens=tokens)
        if self._redactor is not None:
            clean, _ = await asyncio.to_thread(self._redactor.redact_event, event, config.agent)
            event = clean  # type: ignore[assignment]
        await conn.execute(
            "UPDATE analysis_jobs SET result = $2, model = $3, cost_usd = $4, tokens = $5, latency_ms = $6,"
            " reason = NULL, updated_at = now() WHERE call_sid = $1",
            call_id, orjson.loads(encode_event(event)), event.model, cost, tokens, latency_ms,
        )
        metrics.ANALYSIS_LATENCY.observe(latency_ms / 1000)
        metrics.ANALYSIS_COST.inc(cost)
        return event

    async def _publish(self, conn: asyncpg.Connection, event: CallAnalyzed) -> None:
        """Publish the call's analysis (a repeat is dropped by its id), then close its job."""
        await self._js.publish(event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id})
        await conn.execute(
            "UPDATE analysis_jobs SET status = 'done', finished_at = now(), updated_at = now() WHERE call_sid = $1",
            event.call_id,
        )
        metrics.ANALYSES.labels("done").inc()
        log.info("analysed %s (%s, $%.6f, %s ms after the end)", event.call_id, event.model, event.cost_usd,
                 event.analysis.get("latency_ms"))

    async def _fail(self, conn: asyncpg.Connection, call_id: str, attempts: int, reason: str) -> None:
        await conn.execute(
            "UPDATE analysis_jobs SET status = 'failed', attempts = $2, reason = $3, finished_at = now(),"
            " updated_at = now() WHERE call_sid = $1",
            call_id, attempts, reason,
        )
        metrics.ANALYSES.labels("failed").inc()
        log.warning("analysis of %s failed after %d attempt(s): %s", call_id, attempts, reason)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
