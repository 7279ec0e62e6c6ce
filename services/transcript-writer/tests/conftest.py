"""Fixtures of the transcript-writer tests: a JetStream context, a pool, a consumer running as an
asyncio task, event builders, and a TCP proxy that can cut the writer off from PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from dialtone_common import bus
from dialtone_common.db import create_pool
from dialtone_proto import STREAM_NAME, encode_event, subjects
from dialtone_writer.consumer import Consumer
from dialtone_writer.settings import WriterSettings


async def _poll(check: Callable[[], Awaitable[Any]], within: float = 15.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling interval, not synchronisation


@pytest.fixture
async def js(nats_url: str):
    nc = await bus.connect(nats_url, "writer-tests")
    js = nc.jetstream()
    await bus.ensure_stream(js)
    yield js
    await nc.drain()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def poll():
    """``await poll(check, within, what)``: wait with a deadline until ``check()`` is truthy."""
    return _poll


@pytest.fixture
def publish(js):
    """``await publish(event, msg_id=None) -> stream seq``, with ``Nats-Msg-Id`` as the bridge sets it."""

    async def _publish(event, msg_id: str | None = None) -> int:
        headers = {"Nats-Msg-Id": msg_id or event.id}
        return (await js.publish(event.subject, encode_event(event), headers=headers)).seq

    return _publish


class RunningConsumer:
    """A ``Consumer`` running as a task, with the means to wait until it has settled everything."""

    def __init__(self, js, consumer: Consumer, durable: str) -> None:
        self.js, self.consumer, self.durable = js, consumer, durable
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def info(self):
        return await self.js.consumer_info(STREAM_NAME, self.durable)

    async def settled(self, last_seq: int, within: float = 15.0) -> None:
        """Wait until every message up to stream seq ``last_seq`` was delivered and settled."""

        async def done() -> bool:
            info = await self.info()
            return info.delivered.stream_seq >= last_seq and info.num_ack_pending == 0 and info.num_pending == 0

        await _poll(done, within, f"consumer {self.durable} to settle up to seq {last_seq}")


@pytest.fixture
async def run_consumer(js, pool, nats_url, database_url):
    """Start consumers: ``await run_consumer(call_id=None, pool=None, **settings)``."""
    running: list[RunningConsumer] = []

    async def start(call_id: str | None = None, db_pool: asyncpg.Pool | None = None, **overrides: Any):
        durable = overrides.pop("durable_name", None) or f"writer-test-{uuid.uuid4().hex[:12]}"
        settings = WriterSettings(
            database_url=database_url, nats_url=nats_url, durable_name=durable,
            fetch_timeout_s=0.2, retry_delay_s=0.2, **overrides,
        )
        filter_subject = f"{subjects.PREFIX}.events.{call_id}.>" if call_id else subjects.EVENTS_ALL
        consumer = Consumer(db_pool or pool, js, settings, filter_subject=filter_subject)
        await consumer.start()
        rc = RunningConsumer(js, consumer, durable)
        rc.task = asyncio.create_task(consumer.run(rc.stop))
        running.append(rc)
        return rc

    yield start
    for rc in running:
        rc.stop.set()
    for rc in running:
        assert rc.task is not None
        await asyncio.wait_for(rc.task, 10)  # a graceful stop returns promptly and raises nothing
        with contextlib.suppress(Exception):
            await js.delete_consumer(STREAM_NAME, rc.durable)


class CuttableProxy:
    """A TCP proxy in front of PostgreSQL that can drop every connection and refuse new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        self._writers -= {writer, up_writer}
        for w in (writer, up_writer):
            w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def pg_proxy(database_url: str):
    """``(proxy, dsn)``: a DSN that reaches the test database through a ``CuttableProxy``."""
    parts = urlsplit(database_url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.open()
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    yield proxy, urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))
    await proxy.close()
