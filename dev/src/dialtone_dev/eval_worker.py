"""The test worker: runs the scenario calls an operator starts from the dashboard's Tests page.

The admin API asks for a run on ``dt.v1.eval.start`` (:class:`~dialtone_proto.evals.EvalStart`);
a worker of the queue group takes it, checks the scenarios, records the run in ``eval_runs`` and
answers with its id, then places the calls on the platform it belongs to, one run at a time,
exactly as ``dialtone eval --running`` would. Each call's verdict goes to ``eval_results`` and,
with the run's counts, out as :class:`~dialtone_proto.evals.EvalProgress` on
``dt.v1.eval.progress.<run_id>``, which the admin API relays to the page.

It runs inside ``make run`` (and the tests), beside the model simulators it sets each call's
script on when there is no ``OPENAI_API_KEY``, and in a deployment as a process of its own
(``dialtone eval-worker``, :mod:`dialtone_dev.eval_service`), where the real model answers. It
connects to NATS as the ``eval`` user, which may take run requests and publish progress only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from dialtone_proto import subjects
from dialtone_proto.evals import EvalAccepted, EvalCallResult, EvalProgress, EvalStart, RunStatus
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from dialtone_dev.eval_report import summarize
from dialtone_dev.eval_runner import EvalOptions, RunResult, Target, run_on, simulated
from dialtone_dev.eval_scenarios import Scenario, load_scenarios

if TYPE_CHECKING:
    from dialtone_dev.platform import Platform

__all__ = ["EvalWorker", "platform_worker"]

log = logging.getLogger(__name__)

MAX_QUEUED_RUNS = 5  # runs waiting their turn; more are refused (the operator sees why)
STOP_GRACE_S = 5.0

_INSERT_RUN = """
INSERT INTO eval_runs (run_id, status, agent, scenario, runs, total, simulated, requested_by)
VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7)
"""
_RUN_STATE = """
UPDATE eval_runs SET status = $2, done = $3, passed = $4, error = $5,
       finished_at = CASE WHEN $2 IN ('passed', 'failed', 'error') THEN now() END
WHERE run_id = $1
"""
_RESULT = """
INSERT INTO eval_results (run_id, scenario, engine, run, call_sid, passed, error, checks, seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)
ON CONFLICT (run_id, scenario, engine, run) DO NOTHING
"""


def new_run_id() -> str:
    """Sortable and unique, and a NATS subject token (no dots)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class EvalWorker:
    """Takes test runs off the bus and places their calls on ``target``, one run at a time.

    Args:
        nc: NATS, connected as the ``eval`` user.
        database_url: the platform's PostgreSQL (``eval_runs``, ``eval_results``).
        target: where the calls go and how they are signed and read back.
        options: the agents directory, models and keys (``runs`` comes with each request).
        on_result: told of each call's verdict (``dialtone eval-worker`` counts them for /metrics).
    """

    def __init__(self, nc: Client, database_url: str, target: Target, options: EvalOptions,
                 on_result: Callable[[EvalCallResult], None] | None = None) -> None:  # fmt: skip
        self.nc, self.database_url, self.target, self.options = nc, database_url, target, options
        self.on_result = on_result
        self._pool: asyncpg.Pool | None = None
        self._sub: Subscription | None = None
        self._turn = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        self._sub = await self.nc.subscribe(subjects.EVAL_START, queue=subjects.EVAL_QUEUE, cb=self._on_start)
        await self.nc.flush()

    async def stop(self) -> None:
        """Take no more runs; a run in progress is cancelled (its row says so)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
        if self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> EvalWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _answer(self, msg: Msg, accepted: EvalAccepted) -> None:
        if msg.reply:
            await msg.respond(accepted.model_dump_json().encode())

    def _choose(self, request: EvalStart) -> tuple[list[Scenario], str | None]:
        """The scenarios of the request, or why there are none to run."""
        agents_dir = self.options.agents_dir
        if request.agent is not None and not (agents_dir / request.agent).is_dir():
            return [], f"no agent {request.agent!r}"
        scenarios, refused = load_scenarios(agents_dir, request.agent)
        if request.scenario is not None:
            scenarios = [s for s in scenarios if s.name == request.scenario]
            refused = [r for r in refused if Path(r.path).stem == request.scenario]
        if refused:
            return [], "scenario files refused: " + "; ".join(p for r in refused for p in r.problems[:2])[:900]
        if not scenarios:
            return [], "no scenarios match (agents/<name>/scenarios/*.yaml)"
        if not self.options.openai_api_key and (keyed := [s.key for s in scenarios
                                                          if s.spec.caller.persona or s.spec.expect.criteria]):  # fmt: skip
            return [], "these scenarios need OPENAI_API_KEY: " + ", ".join(keyed)
        return scenarios, None

    async def _on_start(self, msg: Msg) -> None:
        try:
            request = EvalStart.model_validate_json(msg.data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            await self._answer(msg, EvalAccepted(accepted=False, reason=f"invalid request: {where}: {first['msg']}"))
            return
        if len(self._tasks) >= MAX_QUEUED_RUNS:
            await self._answer(msg, EvalAccepted(accepted=False, reason=f"{len(self._tasks)} runs are waiting already"))
            return
        scenarios, reason = await asyncio.to_thread(self._choose, request)
        if reason is not None:
            await self._answer(msg, EvalAccepted(accepted=False, reason=reason))
            return
        run_id, total = new_run_id(), len(scenarios) * request.runs
        assert self._pool is not None
        await self._pool.execute(_INSERT_RUN, run_id, request.agent, request.scenario, request.runs, total,
                                 simulated(self.options), request.requested_by)  # fmt: skip
        await self._answer(msg, EvalAccepted(accepted=True, run_id=run_id, total=total))
        await self._progress(EvalProgress(run_id=run_id, status="queued", total=total, done=0, passed=0))
        task = asyncio.create_task(self._run(run_id, scenarios, request.runs, total), name=f"eval-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _progress(self, progress: EvalProgress) -> None:
        await self.nc.publish(subjects.eval_progress(progress.run_id), progress.model_dump_json().encode())

    async def _state(self, run_id: str, status: RunStatus, done: int, passed: int, total: int, error: str | None = None,
                     result: EvalCallResult | None = None) -> None:  # fmt: skip
        assert self._pool is not None
        await self._pool.execute(_RUN_STATE, run_id, status, done, passed, error)
        await self._progress(EvalProgress(run_id=run_id, status=status, total=total, done=done, passed=passed,
                                          result=result, error=error))  # fmt: skip

    async def _run(self, run_id: str, scenarios: list[Scenario], runs: int, total: int) -> None:
        counts = {"done": 0, "passed": 0}
        options = dataclasses.replace(self.options, runs=runs)

        async def record(result: RunResult) -> None:
            assert self._pool is not None
            checks = json.dumps([c.as_dict() for c in result.checks])
            await self._pool.execute(_RESULT, run_id, result.scenario, result.engine, result.run, result.call_sid,
                                     result.passed, result.error, checks, result.seconds)  # fmt: skip
            counts["done"] += 1
            counts["passed"] += result.passed
            call = EvalCallResult(scenario=result.scenario, engine=result.engine, run=result.run,
                                  call_sid=result.call_sid, passed=result.passed, failures=result.failures[:10])  # fmt: skip
            if self.on_result is not None:
                self.on_result(call)
            await self._state(run_id, "running", counts["done"], counts["passed"], total, result=call)

        async with self._turn:
            try:
                await self._state(run_id, "running", 0, 0, total)
                results = await run_on(self.target, scenarios, options, run_id, record)
                ok = all(s.ok for s in summarize(results, scenarios, options.threshold))
                await self._state(run_id, "passed" if ok else "failed", counts["done"], counts["passed"], total)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._state(run_id, "error", counts["done"], counts["passed"], total,
                                                     error="the test worker stopped during the run"))  # fmt: skip
                raise
            except Exception as exc:  # the run fails visibly, the worker goes on
                log.exception("test run %s failed", run_id)
                await self._state(run_id, "error", counts["done"], counts["passed"], total,
                                  error=f"{type(exc).__name__}: {exc}"[:500])  # fmt: skip


@contextlib.asynccontextmanager
async def platform_worker(platform: Platform, simulators: list[Any], api_key: str | None,
                          **options: Any) -> AsyncIterator[EvalWorker]:  # fmt: skip
    """A test worker beside ``platform`` (``make run``, the tests): its calls go to the platform's
    gateway, signed with its Twilio token; ``simulators`` (none with a key) follow each scenario's
    ``model`` script."""
    import nats

    assert platform.nats_url is not None and platform.database_url is not None, "the platform has started"
    credentials = platform.nats_connect_options("eval") if platform.nats_credentials else {}
    nc = await nats.connect(platform.nats_url, name="eval-worker", **credentials)
    target = Target(platform.gateway_url, platform.public_base_url or platform.gateway_url, platform.admin_url,
                    platform.admin_token, platform.twilio_auth_token, platform.twilio_account_sid, None,
                    simulators)  # fmt: skip
    opts = EvalOptions(agents_dir=platform.agents_dir, openai_api_key=api_key, simulate_models=bool(simulators),
                       **options)  # fmt: skip
    try:
        async with EvalWorker(nc, platform.database_url, target, opts) as worker:
            yield worker
    finally:
        await nc.drain()
