"""Executing one tool call: argument validation, context injection, timeout, error isolation.

``Executor.execute`` never raises: every failure becomes a ``ToolCallReply`` with ``ok=false`` and an
``{"error": ...}`` output the model can read and recover from. Sync tools run in a bounded thread
pool so they never block the event loop; a hung sync tool cannot be killed, but its caller still
gets a timeout answer and the bounded pool keeps the damage to a few threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic_core
from dialtone_common.logs import CallLog
from dialtone_proto import ToolCallReply, ToolCallRequest
from pydantic import ValidationError

from dialtone_tools import metrics, schema
from dialtone_tools.context import ToolContext
from dialtone_tools.database import Database
from dialtone_tools.errors import ToolError
from dialtone_tools.mocks import MockError, mock_for
from dialtone_tools.registry import Registry, Tool

log = logging.getLogger(__name__)

MAX_ARGUMENTS_BYTES = 64 * 1024  # a model's arguments are a few hundred bytes; parsing is bounded


class _Failure(Exception):
    """A call that ends with ``ok=false``; ``result`` is the metric label."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result, self.message = result, message


class Executor:
    """Runs tool calls against a ``Registry``.

    Args:
        registry: The tools.
        database: The pool handed to tools as ``ctx.db``; None for a runner without database.
        default_timeout_s: Timeout of tools that set none.
        max_concurrency: Calls executed at once; more wait their turn.
        runner_id: Stamped on every reply so the bridge (and tests) know who answered.
        sync_threads: Size of the thread pool of sync tools.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        database: Database | None = None,
        default_timeout_s: float = 10.0,
        max_concurrency: int = 64,
        runner_id: str | None = None,
        sync_threads: int | None = None,
    ) -> None:
        self.registry = registry
        self.database = database
        self.default_timeout_s = default_timeout_s
        self.runner_id = runner_id
        self._slots = asyncio.Semaphore(max_concurrency)
        self._threads = ThreadPoolExecutor(
            max_workers=sync_threads or min(32, max_concurrency), thread_name_prefix="dialtone-tool"
        )

    async def execute(self, request: ToolCallRequest) -> ToolCallReply:
        """Run the requested tool and describe the outcome; never raises."""
        started = time.perf_counter()
        calllog = CallLog(log, call_id=request.call_id, tool=request.name, tool_call_id=request.tool_call_id)
        ctx = ToolContext(
            call_id=request.call_id,
            tool_call_id=request.tool_call_id,
            agent=request.agent,
            from_number=request.from_number,
            to_number=request.to_number,
            variables=dict(request.variables),
            database=self.database,
        )
        label = request.name if self.registry.get(request.name) else "unknown"
        try:
            with metrics.QUEUED.track_inprogress():
                await self._slots.acquire()
            try:
                with metrics.IN_FLIGHT.track_inprogress():
                    output = await self._run(request, ctx, calllog)
            finally:
                self._slots.release()
            ok, error, result, actions = True, None, "ok", list(ctx.actions)
        except _Failure as failure:
            # A failed tool's call-control actions are dropped: half-done work must not hang up.
            ok, error, result, actions = False, failure.message, failure.result, []
            output = {"error": failure.message}
        elapsed = time.perf_counter() - started
        metrics.TOOL_CALLS.labels(label, result).inc()
        metrics.TOOL_DURATION.labels(label).observe(elapsed)
        calllog.info("tool %s %s in %.1f ms", request.name, result, elapsed * 1000)
        return ToolCallReply(
            ok=ok, output=output, error=error, actions=actions,
            duration_ms=round(elapsed * 1000, 3), runner_id=self.runner_id,
        )

    async def _run(self, request: ToolCallRequest, ctx: ToolContext, calllog: CallLog) -> Any:
        found = self.registry.get(request.name)
        if found is None:
            raise _Failure("unknown", f"unknown tool {request.name}")
        kwargs = self._arguments(found, request.arguments)
        try:
            mock = mock_for(request.variables, request.name)
        except MockError as exc:
            raise _Failure("error", str(exc)) from None
        if mock is not None:  # a test call's fixed answer (dialtone_tools.mocks)
            calllog.info("tool %s mocked by the test call", found.name)
            if mock.error is not None:
                raise _Failure("error", mock.error)
            return pydantic_core.to_jsonable_python(mock.result)
        if found.context_param:
            kwargs[found.context_param] = ctx
        timeout = found.timeout_s or self.default_timeout_s
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if found.is_async:
                    value = await found.fn(**kwargs)
                else:
                    # copy_context keeps contextvars (e.g. tracing) visible inside the thread.
                    call = functools.partial(contextvars.copy_context().run, _counted, found.fn, kwargs)
                    value = await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except TimeoutError as exc:
            if not deadline.expired():  # the tool's own TimeoutError, not ours
                calllog.exception("tool %s raised", found.name)
                raise _Failure("error", f"{type(exc).__name__}: {exc}") from None
            calllog.warning("tool %s timed out after %ss", found.name, _num(timeout))
            raise _Failure("timeout", f"tool {found.name} timed out after {_num(timeout)}s") from None
        except ToolError as exc:
            raise _Failure("error", str(exc)) from None
        except Exception as exc:
            calllog.exception("tool %s raised", found.name)
            raise _Failure("error", f"{type(exc).__name__}: {exc}") from None
        try:
            # Plain JSON types only, so the reply serialises the same everywhere; datetimes,
            # Decimals, UUIDs and pydantic models become their JSON forms.
            return pydantic_core.to_jsonable_python(value)
        except pydantic_core.PydanticSerializationError as exc:
            calllog.error("tool %s returned a value that is not JSON-serializable: %s", found.name, exc)
            raise _Failure("error", f"tool {found.name} returned a result that is not JSON-serializable: "
                                    f"{type(value).__name__}") from None

    def _arguments(self, found: Tool, raw: str) -> dict[str, Any]:
        """Parse and validate the model's argument string into keyword arguments."""
        size = len(raw.encode())
        if size > MAX_ARGUMENTS_BYTES:
            raise _Failure("invalid", f"invalid arguments: {size} bytes, over the {MAX_ARGUMENTS_BYTES}-byte limit")
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise _Failure("invalid", f"invalid arguments: not JSON ({exc.msg} at position {exc.pos})") from None
        if not isinstance(parsed, dict):
            raise _Failure("invalid", f"invalid arguments: expected a JSON object, got {type(parsed).__name__}")
        if found.model is not None:
            try:
                validated = found.model.model_validate(parsed)
            except ValidationError as exc:
                raise _Failure("invalid", f"invalid arguments: {_first_error(exc)}") from None
            # Attribute access keeps nested models as model instances for the tool.
            return {name: getattr(validated, name) for name in type(validated).model_fields}
        assert found.validator is not None
        problem = schema.first_schema_error(found.validator, parsed)
        if problem is not None:
            raise _Failure("invalid", f"invalid arguments: {problem}")
        return parsed

    def close(self) -> None:
        """Release the thread pool without waiting for a hung sync tool."""
        self._threads.shutdown(wait=False, cancel_futures=True)


_sync_running = 0
_sync_lock = threading.Lock()


def _counted(fn: Any, kwargs: dict[str, Any]) -> Any:
    """Run a sync tool in a pool thread, counting the threads busy with one."""
    global _sync_running
    with _sync_lock:
        _sync_running += 1
    try:
        return fn(**kwargs)
    finally:
        with _sync_lock:
            _sync_running -= 1


def sync_tools_running() -> int:
    """Sync tool calls still running in pool threads (hung ones included)."""
    return _sync_running


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "arguments"
    return f"{where}: {first['msg']}"


def _num(value: float) -> str:
    return f"{value:g}"
