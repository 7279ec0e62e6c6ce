"""The Tests page's API: test runs (``dialtone eval`` on this platform), their calls' verdicts,
pass rates over time per scenario, and starting a run.

A run is placed by a test worker (``dialtone_dev.eval_worker``), never by the admin API: ``POST
/tests/runs`` asks one over the bus (``dt.v1.eval.start``) and answers with the run's id; the
worker records the run and each call's verdict in PostgreSQL, which the rest of this module
reads, and publishes the run's progress, which ``GET /tests/stream`` relays to the page.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import nats.errors
import orjson
from dialtone_proto import subjects
from dialtone_proto.evals import EvalAccepted, EvalProgress, EvalStart
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, Field, ValidationError

from dialtone_admin.auth import held, require_token
from dialtone_admin.database import Database
from dialtone_admin.errors import responses
from dialtone_admin.pages import require_operator
from dialtone_admin.params import Text
from dialtone_admin.stream import SSE_HEADERS, _until_signed_out, sse

START_TIMEOUT_S = 5.0
STREAM_QUEUE = 256
HISTORY_RUNS = 20  # runs per scenario in the pass-rate history

_RUN_COLUMNS = ("run_id, status, agent, scenario, runs, total, done, passed, simulated, error, requested_by,"
                " created_at, finished_at")  # fmt: skip


class EvalRun(BaseModel):
    run_id: str
    status: str = Field(description="queued, running, passed, failed (a scenario under its pass rate) or error")
    agent: str | None
    scenario: str | None
    runs: int = Field(description="calls per scenario")
    total: int
    done: int
    passed: int
    simulated: bool = Field(description="the models were Dialtone's simulators: the plumbing was tested, not the model")
    error: str | None
    requested_by: str | None
    created_at: datetime
    finished_at: datetime | None


class EvalCheck(BaseModel):
    name: str
    passed: bool
    expected: str
    actual: str
    reasoning: str | None = Field(default=None, description="the LLM judge's, for a criterion")


class EvalCall(BaseModel):
    scenario: str
    engine: str
    run: int
    call_sid: str | None
    passed: bool
    error: str | None
    checks: list[EvalCheck]
    seconds: float
    at: datetime


class EvalRunDetail(EvalRun):
    calls: list[EvalCall]


class EvalRunPage(BaseModel):
    items: list[EvalRun]


class ScenarioPoint(BaseModel):
    run_id: str
    at: datetime
    calls: int
    passed: int


class ScenarioHistory(BaseModel):
    scenario: str
    engine: str
    points: list[ScenarioPoint] = Field(description=f"the last {HISTORY_RUNS} runs of it, oldest first")


class ScenarioHistories(BaseModel):
    items: list[ScenarioHistory]


class StartRun(BaseModel):
    agent: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="default: every agent")
    scenario: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="default: all of them")
    runs: int = Field(default=1, ge=1, le=20, description="calls per scenario")


class Started(BaseModel):
    run_id: str
    total: int


router = APIRouter(tags=["tests"])


async def _db(request: Request) -> Database:
    return request.app.state.db


@router.get("/tests/runs", response_model=EvalRunPage, responses=responses(401, 503),
            dependencies=[Depends(require_token)])  # fmt: skip
async def list_runs(
    db: Annotated[Database, Depends(_db)], limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> dict[str, Any]:
    """Test runs, newest first."""
    async with db.connection() as conn:
        rows = await conn.fetch(f"SELECT {_RUN_COLUMNS} FROM eval_runs ORDER BY created_at DESC LIMIT $1", limit)
    return {"items": [dict(r) for r in rows]}


@router.get("/tests/runs/{run_id}", response_model=EvalRunDetail, responses=responses(401, 404, 503),
            dependencies=[Depends(require_token)])  # fmt: skip
async def get_run(run_id: Annotated[Text, Path()], db: Annotated[Database, Depends(_db)]) -> dict[str, Any]:
    """One run and each of its calls, with every expectation's verdict."""
    async with db.connection() as conn:
        run = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM eval_runs WHERE run_id = $1", run_id)
        if run is None:
            raise HTTPException(404, detail="no such test run")
        calls = await conn.fetch(
            "SELECT scenario, engine, run, call_sid, passed, error, checks, seconds, at FROM eval_results"
            " WHERE run_id = $1 ORDER BY scenario, engine, run",
            run_id,
        )
    out = dict(run)
    out["calls"] = [{**dict(c), "checks": c["checks"] if isinstance(c["checks"], list) else orjson.loads(c["checks"])}
                    for c in calls]  # fmt: skip
    return out


@router.get("/tests/scenarios", response_model=ScenarioHistories, responses=responses(401, 503),
            dependencies=[Depends(require_token)])  # fmt: skip
async def scenario_history(db: Annotated[Database, Depends(_db)]) -> dict[str, Any]:
    """Pass rate over time per scenario and engine: its calls and passes in each of its last runs."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT scenario, engine, run_id, at, calls, passed FROM (
                SELECT scenario, engine, run_id, min(at) AS at, count(*) AS calls,
                       count(*) FILTER (WHERE passed) AS passed,
                       row_number() OVER (PARTITION BY scenario, engine ORDER BY min(at) DESC) AS n
                FROM eval_results GROUP BY scenario, engine, run_id
            ) r WHERE n <= $1 ORDER BY scenario, engine, at
            """,
            HISTORY_RUNS,
        )
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        item = items.setdefault((r["scenario"], r["engine"]), {"scenario": r["scenario"], "engine": r["engine"], "points": []})
        item["points"].append({"run_id": r["run_id"], "at": r["at"], "calls": r["calls"], "passed": r["passed"]})
    return {"items": list(items.values())}


@router.post("/tests/runs", response_model=Started, status_code=202, responses=responses(400, 401, 503),
             dependencies=[Depends(require_operator)])  # fmt: skip
async def start_run(body: StartRun, request: Request) -> dict[str, Any]:
    """Start a test run: a test worker places the calls (``202`` with the run's id; follow it on
    ``/tests/stream`` or ``/tests/runs/{run_id}``). The bearer token, or the dashboard's session
    from its own page. ``503`` when no test worker runs; ``400`` with the worker's reason when it
    refuses (no such agent, no scenario, a scenario file with an error)."""
    nc: Client = request.app.state.nc
    ask = EvalStart(agent=body.agent, scenario=body.scenario, runs=body.runs,
                    requested_by="token" if "authorization" in request.headers else "dashboard")  # fmt: skip
    try:
        msg = await nc.request(subjects.EVAL_START, ask.model_dump_json().encode(), timeout=START_TIMEOUT_S)
        answer = EvalAccepted.model_validate_json(msg.data)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise HTTPException(503, detail="no test worker is running (make run starts one; a deployment runs dialtone eval-worker)",
                            headers={"Retry-After": "5"}) from exc  # fmt: skip
    except ValidationError as exc:
        raise HTTPException(503, detail="the test worker answered something else") from exc
    if not answer.accepted or answer.run_id is None:
        raise HTTPException(400, detail=answer.reason or "the test worker refused the run")
    return {"run_id": answer.run_id, "total": answer.total}


async def _progress(nc: Client, request: Request) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_QUEUE)

    async def on_progress(msg: Msg) -> None:
        try:
            progress = EvalProgress.model_validate_json(msg.data)
        except ValidationError:
            return
        with contextlib.suppress(asyncio.QueueFull):  # a page that far behind reloads the list anyway
            queue.put_nowait(sse("progress", progress.model_dump(mode="json")))

    sub = await nc.subscribe(subjects.EVAL_PROGRESS_ALL, cb=on_progress)
    try:
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            await nc.flush(timeout=2)
        yield b"retry: 2000\n\n" + sse("ready", {})
        async for item in _until_signed_out(queue, await held(request), None):
            yield b": keepalive\n\n" if item is None else item
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@router.get(
    "/tests/stream", dependencies=[Depends(require_token)],
    responses={**responses(401), 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)  # fmt: skip
async def progress_stream(request: Request) -> StreamingResponse:
    """Every test run's progress as server-sent events: ``ready``, then ``progress`` {run_id,
    status, total, done, passed, result: the call just judged {scenario, engine, run, call_sid,
    passed, failures}, error}."""
    return StreamingResponse(_progress(request.app.state.nc, request), media_type="text/event-stream",
                             headers=SSE_HEADERS)  # fmt: skip
