"""Start-up of the transcript-writer: migrate, connect, consume (and sweep abandoned calls) until
SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import asyncpg
import openai
from dialtone_common import bus, logs, runtime
from dialtone_common.analysis_config import AnalysisConfigError, load_agent_analysis
from dialtone_common.db import create_pool
from dialtone_common.health import HealthServer
from dialtone_common.recording_storage import open_storage
from dialtone_common.redact_config import RedactConfigError, check_kinds, load_agent_redaction

from dialtone_writer import metrics, retention
from dialtone_writer.analyst import Analyst
from dialtone_writer.consumer import Consumer
from dialtone_writer.migrations import apply_migrations
from dialtone_writer.recorder import Recorder
from dialtone_writer.redaction import Redactor
from dialtone_writer.settings import WebhookConfigError, WriterSettings
from dialtone_writer.sweeper import Sweeper
from dialtone_writer.webhooks import Deliverer, Outbox

log = logging.getLogger("dialtone_writer")


async def _migrate_when_ready(settings: WriterSettings, stop: asyncio.Event) -> bool:
    """Apply migrations, waiting for PostgreSQL if it is still starting. False if stopped first."""
    delay = 0.5
    while not stop.is_set():
        try:
            applied = await apply_migrations(settings.database_url)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            log.warning("database not reachable yet (%s); retrying in %.1fs", type(exc).__name__, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
            continue
        log.info("schema up to date (applied %s)", applied or "nothing")
        return True
    return False


async def _serve(stack: AsyncExitStack, stop: asyncio.Event) -> None:
    settings = WriterSettings()
    logs.setup(settings.log_level, "transcript-writer")
    if not await _migrate_when_ready(settings, stop):
        return
    pool = await create_pool(settings.database_url, max_size=settings.pool_size)
    stack.push_async_callback(pool.close)
    nc = await bus.connect(settings.nats_servers(), f"transcript-writer{settings.instance_id}", **settings.nats_credentials())
    stack.push_async_callback(bus.close, nc)
    js = nc.jetstream()
    await bus.ensure_stream(js, replicas=settings.jetstream_replicas)
    deliverer = await _start_webhooks(stack, stop, settings)
    outbox = Outbox(list(deliverer.endpoints.values()), settings.webhook_ended_delay_s)
    redactor = await _redactor(settings)
    consumer = Consumer(pool, js, settings, outbox=outbox if outbox.endpoints else None, on_webhooks=deliverer.notify,
                        redactor=redactor)
    await consumer.start()
    await stack.enter_async_context(HealthServer(settings.metrics_host, settings.metrics_port, consumer.health,
                                                      registry=metrics.REGISTRY))
    task = asyncio.create_task(consumer.run(stop), name="consumer")
    probe = asyncio.create_task(consumer.probe_db(stop), name="db-probe")
    stack.push_async_callback(asyncio.wait_for, probe, None)
    # Closed first on the way out: the loop sees `stop`, finishes its batch, then NATS and the pool close.
    stack.push_async_callback(asyncio.wait_for, task, None)
    task.add_done_callback(lambda _: stop.set())  # a consumer that died must take the process down
    sweeper = Sweeper(pool, nc, js, settings)
    await sweeper.start()
    sweep_task = asyncio.create_task(sweeper.run(stop), name="sweeper")
    # The stack unwinds in reverse: the sweep loop ends and unsubscribes before the consumer's last batch.
    stack.push_async_callback(sweeper.stop)
    stack.push_async_callback(asyncio.wait_for, sweep_task, None)
    sweep_task.add_done_callback(lambda _: stop.set())
    retention_task = asyncio.create_task(retention.run(pool, settings, stop), name="retention")
    stack.push_async_callback(asyncio.wait_for, retention_task, None)
    await _start_recorder(stack, stop, pool, nc, js, settings, redacting=redactor is not None)
    await _start_analyst(stack, stop, js, settings, redactor)
    log.info("transcript-writer running (metrics on :%d)", settings.metrics_port)


async def _redactor(settings: WriterSettings) -> Redactor | None:
    """What keeps personal data out of storage (redaction.py); None when no agent redacts anything."""
    try:
        default, agents = check_kinds(settings.redact, "REDACT"), load_agent_redaction(settings.agents_dir)
    except RedactConfigError as exc:
        raise SystemExit(f"transcript-writer: cannot start: {exc}") from None
    if not default and not any(agents.values()):
        log.warning("redaction is off: REDACT is empty and no agent has a redact list; personal data is stored")
        return None
    redactor = await asyncio.to_thread(Redactor, default, agents)  # loading Presidio takes a while
    log.info("redacting %s by default%s", ", ".join(sorted(default)) or "nothing",
             "".join(f"; agent {a}: {', '.join(sorted(k)) or 'nothing'}" for a, k in sorted(agents.items())))
    return redactor


async def _start_webhooks(stack: AsyncExitStack, stop: asyncio.Event, settings: WriterSettings) -> Deliverer:
    """The webhook deliverer, in this process (webhooks.py says why), on a pool of its own so that
    its queries never wait behind the consumer's or hold its connections."""
    try:
        endpoints = settings.webhook_endpoints()
    except WebhookConfigError as exc:
        raise SystemExit(f"transcript-writer: cannot start: {exc}") from None
    pool = await create_pool(settings.database_url, min_size=1, max_size=2 + min(len(endpoints), 8))
    stack.push_async_callback(pool.close)
    deliverer = Deliverer.from_settings(pool, endpoints, settings)
    task = asyncio.create_task(deliverer.run(stop), name="webhooks")
    stack.push_async_callback(asyncio.wait_for, task, None)
    task.add_done_callback(lambda _: stop.set())  # a deliverer that died must take the process down
    if endpoints:
        # The host only: a receiver's URL may carry a token of its own in its path or query.
        log.info("webhooks to %s", ", ".join(f"{e.name} ({urlsplit(e.url).hostname})" for e in endpoints))
    return deliverer


async def _start_recorder(stack: AsyncExitStack, stop: asyncio.Event, pool, nc, js, settings: WriterSettings,
                          *, redacting: bool) -> None:
    """The call recorder, in this process (recorder.py says why). A recorder that cannot start (an
    unwritable directory, say) is logged and left off: transcripts matter more than recordings."""
    if not settings.recordings_enabled:
        log.info("call recording is off (RECORDINGS_ENABLED=false)")
        return
    try:
        recorder = Recorder(pool, nc, js, settings, open_storage(settings), redacting=redacting)
        await recorder.start()
    except Exception as exc:
        log.error("call recording is OFF: the recorder could not start: %s: %s", type(exc).__name__, exc)
        return
    task = asyncio.create_task(recorder.run(stop), name="recorder")
    stack.push_async_callback(asyncio.wait_for, task, None)


async def _start_analyst(stack: AsyncExitStack, stop: asyncio.Event, js, settings: WriterSettings,
                         redactor: Redactor | None) -> None:
    """The post-call analysis worker, in this process (analyst.py says why), on a pool of its own.
    Off without an agent that has an [analysis] table, or without a key or a base URL to ask."""
    try:
        configs = load_agent_analysis(settings.agents_dir)
    except AnalysisConfigError as exc:
        raise SystemExit(f"transcript-writer: cannot start: {exc}") from None
    if not settings.analysis_enabled or not configs:
        log.info("post-call analysis is off (%s)", "ANALYSIS_ENABLED=false" if not settings.analysis_enabled
                 else "no agent has an [analysis] table")
        return
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if not key and not settings.openai_base_url:
        log.warning("post-call analysis is OFF: agents %s have [analysis] but OPENAI_API_KEY is not set",
                    ", ".join(sorted(configs)))
        return
    client = openai.AsyncOpenAI(api_key=key or "unset", base_url=settings.openai_base_url, max_retries=0,
                                timeout=settings.analysis_timeout_s)
    stack.push_async_callback(client.close)
    pool = await create_pool(settings.database_url, min_size=1, max_size=settings.analysis_concurrency + 1)
    stack.push_async_callback(pool.close)
    analyst = Analyst(pool, js, settings, configs, client, redactor)
    await analyst.start()
    task = asyncio.create_task(analyst.run(stop), name="analyst")
    stack.push_async_callback(asyncio.wait_for, task, None)
    task.add_done_callback(lambda _: stop.set())  # a worker that died must take the process down


async def _migrate_only() -> None:
    settings = WriterSettings()
    logs.setup(settings.log_level, "transcript-writer")
    applied = await apply_migrations(settings.database_url)
    log.info("applied migrations: %s", applied or "none (schema up to date)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``dialtone-transcript-writer [migrate]``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["migrate"]:
        asyncio.run(_migrate_only())
    elif args:
        sys.exit(f"usage: python -m dialtone_writer [migrate]; unknown arguments {args}")
    else:
        runtime.run(_serve)
