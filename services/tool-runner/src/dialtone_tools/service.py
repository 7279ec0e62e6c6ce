"""The tool-runner as a ``nats.micro`` service, and ``ToolRunner``: one whole runner instance.

Two endpoints in the ``dialtone-tools`` queue group, so any number of runners share the load:
``dt.v1.tools.catalog`` answers the ``ToolCatalog`` and ``dt.v1.tools.call`` runs one tool.

nats-py runs a subscription's callback for one message at a time, so the call endpoint only
validates the request and hands it to a task owned by the service; the tasks run concurrently
(bounded by the executor's semaphore) and are awaited on stop.

Stopping loses no request. ``Service.stop()`` of nats.micro *unsubscribes* its endpoints, which
discards requests the server already routed to this instance; we first *drain* them instead
(UNSUB, a round trip that proves the server sent everything, then the pending messages are
handled), then wait for the calls in flight, and only then close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import nats.micro
from dialtone_common import bus
from dialtone_common.health import HealthServer
from dialtone_proto import ToolCallRequest, ToolCatalog, subjects
from nats.aio.client import Client
from nats.micro.request import Request, ServiceError
from pydantic import ValidationError

from dialtone_tools import metrics
from dialtone_tools.database import Database
from dialtone_tools.executor import MAX_ARGUMENTS_BYTES, Executor
from dialtone_tools.registry import Registry
from dialtone_tools.settings import ToolSettings

log = logging.getLogger(__name__)

QUEUE_GROUP = "dialtone-tools"
# /healthz reads the verdict of a probe that asks PostgreSQL every DB_PROBE_EVERY_S, each probe
# bounded by DB_PROBE_TIMEOUT_S, so that the check itself never waits on the database.
DB_PROBE_EVERY_S = 2.0
DB_PROBE_TIMEOUT_S = 2.0
VERSION = "0.1.0"
# A request carries the model's arguments (at most MAX_ARGUMENTS_BYTES, which JSON escaping may
# double) and a few short fields.
MAX_REQUEST_BYTES = 2 * MAX_ARGUMENTS_BYTES + 16 * 1024


class ToolService:
    """The micro service of one runner.

    Args:
        nc: A connected NATS client.
        executor: Runs the calls.
    """

    def __init__(self, nc: Client, executor: Executor) -> None:
        self._nc = nc
        self._executor = executor
        self._service: nats.micro.service.Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Calls received and not yet answered."""
        return len(self._tasks)

    @property
    def serving(self) -> bool:
        """Whether the endpoints take requests: started and not stopping."""
        return self._service is not None

    async def start(self) -> None:
        """Register the service and its two endpoints."""
        self._service = await nats.micro.add_service(
            self._nc,
            name=subjects.TOOLS_SERVICE,
            version=VERSION,
            description="Runs Dialtone agent tools (ordinary Python functions) for the realtime bridges.",
            metadata={"runner_id": self._executor.runner_id or ""},
            queue_group=QUEUE_GROUP,
        )
        await self._service.add_endpoint(name="catalog", subject=subjects.TOOLS_CATALOG, handler=self._catalog)
        await self._service.add_endpoint(name="call", subject=subjects.TOOLS_CALL, handler=self._call)
        await self._nc.flush()

    async def _catalog(self, req: Request) -> None:
        catalog = ToolCatalog(tools=self._executor.registry.specs(self._executor.default_timeout_s))
        await req.respond(catalog.model_dump_json().encode())

    async def _call(self, req: Request) -> None:
        if len(req.data) > MAX_REQUEST_BYTES:  # refused unparsed; the arguments' own limit is the executor's
            raise ServiceError("413", f"tool call request of {len(req.data)} bytes is over the "
                                      f"{MAX_REQUEST_BYTES}-byte limit")
        try:
            request = ToolCallRequest.model_validate_json(req.data)
        except ValidationError as exc:
            # A malformed request is the caller's bug, not the model's: answer a service error.
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ServiceError("400", f"invalid tool call request: {where}: {first['msg']}") from None
        task = asyncio.create_task(self._answer(req, request), name=f"tool-{request.tool_call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, req: Request, request: ToolCallRequest) -> None:
        reply = await self._executor.execute(request)
        try:
            await req.respond(reply.model_dump_json().encode())
        except Exception:
            log.exception("could not send the reply of %s (call %s)", request.name, request.call_id)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking requests, answer every request already taken (waiting up to ``grace_s``).

        The PING/INFO/STATS subscriptions go last: a bridge waiting on a call here checks PING to
        tell a runner that is finishing its calls from one that is gone."""
        service, self._service = self._service, None
        if service is not None:
            for endpoint in service._endpoints:  # see the module docstring: drain, do not unsubscribe
                if endpoint._subscription is not None and not self._nc.is_closed:
                    with contextlib.suppress(Exception):
                        await endpoint._subscription.drain()
            service._endpoints = []
        if self._tasks:
            log.info("waiting for %d tool calls in flight", len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("abandoned %d tool calls still running after %ss", len(pending), grace_s)
                await asyncio.gather(*pending, return_exceptions=True)
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()  # drains the PING/INFO/STATS subscriptions


class ToolRunner:
    """One complete runner: user tools, database, NATS, micro service and ``/metrics`` server.

    Use as an async context manager; leaving it stops gracefully (no request lost).

    Args:
        settings: The runner's settings.
        cwd: Directory the tools module is looked up from (default: the working directory).
    """

    def __init__(self, settings: ToolSettings, *, cwd: Path | None = None) -> None:
        self.settings = settings
        self.runner_id = settings.runner_id()
        self.registry = Registry()
        self.registry.load(settings.tools_module, cwd)
        self.database = Database(settings.dsn())
        self.executor = Executor(
            self.registry,
            database=self.database,
            default_timeout_s=settings.tool_timeout_s,
            max_concurrency=settings.max_concurrency,
            runner_id=self.runner_id,
        )
        self.health: HealthServer | None = None
        self.service: ToolService | None = None
        self.db_problem: str | None = None  # the latest database probe's verdict (None: it answered)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> ToolRunner:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        stack = self._stack
        stack.callback(self.executor.close)
        stack.push_async_callback(self.database.close)
        for hook in self.registry.setup_hooks:
            log.info("running setup hook %s.%s", hook.__module__, hook.__qualname__)
            result = hook(self.database)
            if asyncio.iscoroutine(result):
                await result
        nc = await bus.connect(self.settings.nats_servers(), name=f"dialtone-tools-{self.runner_id}", **self.settings.nats_credentials())
        stack.push_async_callback(nc.close)
        if self.database.configured:
            # Tools use the database (ctx.db): the runner is not ready while it does not answer.
            # The first verdict before /healthz is served, then one every DB_PROBE_EVERY_S.
            await self._probe_db()
            probing = asyncio.create_task(self._probe_db_forever(), name="db-probe")
            stack.push_async_callback(_cancel, probing)
        self.health = await stack.enter_async_context(
            HealthServer(self.settings.metrics_host, self.settings.metrics_port, lambda: self._problem(nc),
                         registry=metrics.REGISTRY)
        )
        self.service = ToolService(nc, self.executor)
        await self.service.start()
        stack.push_async_callback(self.service.stop, self.settings.drain_timeout_s)
        metrics.start_at_zero(list(self.registry.names()))
        log.info("tool runner %s serving %d tools: %s", self.runner_id, len(self.registry),
                 ", ".join(self.registry.names()))

    async def _probe_db(self) -> None:
        problem = await self.database.probe(DB_PROBE_TIMEOUT_S)
        if problem != self.db_problem:
            if problem is None:
                log.info("database answers again")
            else:
                log.warning("database probe failed: %s", problem)
        self.db_problem = problem

    async def _probe_db_forever(self) -> None:
        while True:
            await asyncio.sleep(DB_PROBE_EVERY_S)
            await self._probe_db()

    def _problem(self, nc: Client) -> str | None:
        """What ``/healthz`` reports: None while this runner takes tool calls and, if it has a
        database, the database answers; else why not."""
        if not nc.is_connected:
            return "not connected to NATS"
        if self.service is None or not self.service.serving:
            return "not taking tool calls (starting or stopping)"
        if self.db_problem is not None:
            return f"database unavailable ({self.db_problem})"
        return None

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
