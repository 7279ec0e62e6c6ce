"""The admin API: sessions from PostgreSQL, live calls from NATS heartbeats, outbound calls through
Twilio, and the dashboard."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

from dialtone_common import bus
from dialtone_common.health import HealthServer
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dialtone_admin import errors, pages
from dialtone_admin.audit import record
from dialtone_admin.audit import router as audit_router
from dialtone_admin.auth import require_token
from dialtone_admin.cursor import InvalidCursor
from dialtone_admin.database import Database, DatabaseUnavailable
from dialtone_admin.errors import responses
from dialtone_admin.evals import router as evals_router
from dialtone_admin.export import EXPORT_BATCH, EXPORT_MAX, export_rows
from dialtone_admin.live import LiveCalls
from dialtone_admin.metrics import REGISTRY
from dialtone_admin.middleware import HeadAsGet, Metrics, SecurityHeaders
from dialtone_admin.models import Facets, LivePage, SessionCount, SessionDetail, SessionPage
from dialtone_admin.outbound import Dialer
from dialtone_admin.outbound import router as calls_router
from dialtone_admin.params import Text, UtcTime
from dialtone_admin.recordings import router as recordings_router
from dialtone_admin.sessions import SessionFilter, count_sessions, facet_values, get_session, list_sessions
from dialtone_admin.settings import AdminSettings
from dialtone_admin.signins import SignIns
from dialtone_admin.stats import router as stats_router
from dialtone_admin.stream import LiveHub
from dialtone_admin.stream import router as stream_router
from dialtone_admin.throttle import Guard
from dialtone_admin.webhooks import router as webhooks_router

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0


async def _db(request: Request) -> Database:  # async: a sync dependency would take a thread
    return request.app.state.db


api = APIRouter(dependencies=[Depends(require_token)])


def session_filter(
    outcome: Annotated[Text | None, Query(description="outcome, any case")] = None,
    status: Annotated[Text | None, Query(description="status, any case")] = None,
    agent: Annotated[Text | None, Query(description="agent, any case")] = None,
    direction: Annotated[Text | None, Query(description="inbound or outbound, any case")] = None,
    number: Annotated[Text | None, Query(description="the caller's or the called number, exactly (E.164)")] = None,
    since: Annotated[
        UtcTime | None, Query(description="started at or after (ISO 8601; UTC if no zone; years 1-9999)")
    ] = None,
    until: Annotated[
        UtcTime | None, Query(description="started before (ISO 8601; UTC if no zone; years 1-9999)")
    ] = None,
    q: Annotated[
        Text | None,
        Query(description="words said in the call or in its analysis summary (full-text search, web search syntax)"),
    ] = None,
    verdict: Annotated[
        Literal["success", "failure"] | None, Query(description="the post-call analysis' verdict")
    ] = None,
    test: Annotated[
        Literal["include", "exclude", "only"] | None,
        Query(description="test calls (dialtone eval): include (the default), exclude or only them"),
    ] = None,
) -> SessionFilter:
    """The filters shared by the list, its count and its export."""
    return SessionFilter(
        outcome=outcome, status=status, agent=agent, direction=direction, number=number, since=since,
        until=until, q=q, verdict=verdict, test=None if test == "include" else test,
    )  # fmt: skip


Filters = Annotated[SessionFilter, Depends(session_filter)]


@api.get("/sessions", response_model=SessionPage, tags=["sessions"], responses=responses(400, 401, 503))
async def sessions_page(
    db: Annotated[Database, Depends(_db)],
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(description="next_cursor of the previous page")] = None,
) -> dict:
    """Sessions, newest first, with keyset pagination."""
    try:
        async with db.connection() as conn:
            items, next_cursor = await list_sessions(conn, filters, limit, cursor)
    except InvalidCursor as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    return {"items": items, "next_cursor": next_cursor}


@api.get("/sessions/count", response_model=SessionCount, tags=["sessions"], responses=responses(400, 401, 503))
async def sessions_count(db: Annotated[Database, Depends(_db)], filters: Filters) -> dict:
    """How many sessions match the filters: exact up to 10,000, past that the planner's estimate."""
    async with db.connection() as conn:
        count, exact = await count_sessions(conn, filters)
    return {"count": count, "exact": exact}


@api.get("/sessions/facets", response_model=Facets, tags=["sessions"], responses=responses(401, 503))
async def sessions_facets(db: Annotated[Database, Depends(_db)]) -> dict:
    """The values each filter can take (agents, statuses, directions, outcomes), from the data."""
    async with db.connection() as conn:
        return await facet_values(conn)


@api.get(
    "/sessions/export",
    tags=["sessions"],
    responses={**responses(401, 503), 200: {"content": {"text/csv": {}, "application/json": {}}}},
)
async def sessions_export(
    request: Request,
    db: Annotated[Database, Depends(_db)],
    filters: Filters,
    format: Annotated[Literal["csv", "json"], Query(description="csv or json")] = "csv",  # noqa: A002
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX)] = EXPORT_MAX,
) -> StreamingResponse:
    """Every session the filters select (at most ``limit``), newest first, as a CSV or JSON download."""
    chosen = {k: str(v) for k, v in dataclasses.asdict(filters).items() if v not in (None, "")}
    await record(request, "export_calls", None, {"format": format, "limit": limit, "filters": chosen})
    # The first batch is read here, so a database failure is still an ordinary 503.
    async with db.connection() as conn:
        first, cursor = await list_sessions(conn, filters, min(EXPORT_BATCH, limit), None, with_analysis=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        export_rows(db, filters, first, cursor, limit, format),
        media_type="text/csv; charset=utf-8" if format == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="dialtone-calls-{stamp}.{format}"'},
    )


@api.get(
    "/sessions/{call_sid}",
    response_model=SessionDetail,
    tags=["sessions"],
    responses=responses(400, 401, 404, 503),
)
async def session_detail(
    request: Request, call_sid: Annotated[Text, Path()], db: Annotated[Database, Depends(_db)]
) -> dict:
    """One call: summary, transcript, tool calls, usage, status history, metrics and handoffs."""
    await record(request, "view_call", call_sid)
    async with db.connection() as conn:
        detail = await get_session(conn, call_sid)
    if detail is None:
        raise HTTPException(404, detail=f"no session {call_sid!r}")
    return detail


@api.get("/sessions/{call_sid}/transcript", tags=["sessions"], responses=responses(400, 401, 404, 503))
async def session_transcript(
    request: Request, call_sid: Annotated[Text, Path()], db: Annotated[Database, Depends(_db)]
) -> Response:
    """The whole session (``GET /sessions/{call_sid}``) as a JSON download, ``<call_sid>.json``."""
    await record(request, "export_transcript", call_sid)
    async with db.connection() as conn:
        detail = await get_session(conn, call_sid)
    if detail is None:
        raise HTTPException(404, detail=f"no session {call_sid!r}")
    body = SessionDetail.model_validate(detail).model_dump_json(indent=2)
    safe = "".join(c for c in call_sid if c.isalnum() or c in "-_")[:64] or "session"
    return Response(
        body, media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{safe}.json"'},
    )  # fmt: skip


@api.get("/live", response_model=LivePage, tags=["live"], responses=responses(401))
async def live_calls(request: Request) -> dict:
    """Calls in progress, from their bridges' heartbeats."""
    live: LiveCalls = request.app.state.live
    return {"items": [call.model_dump(mode="json") for call in live.snapshot()]}


def create_app(settings: AdminSettings) -> FastAPI:
    """Build the application; its lifespan opens the database pool and the NATS connection.

    Args:
        settings: configuration; ``admin_token`` guards every route but ``/healthz``, ``/livez``,
            ``/metrics``, the docs and the dashboard shell (which asks for the token itself).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = await Database.open(settings.database_url, settings.db_timeout_s)
            stack.push_async_callback(db.close)
            nc = await bus.connect(settings.nats_servers(), f"admin-api{settings.instance_id}", **settings.nats_credentials())
            stack.push_async_callback(bus.close, nc)
            live = LiveCalls(settings.live_ttl_s)
            await live.start(nc)
            stack.push_async_callback(live.stop)
            hub = LiveHub(live)
            await hub.start(nc)
            stack.push_async_callback(hub.stop)
            signins = SignIns(settings.session_ttl_s)
            await signins.start(nc, settings.jetstream_replicas)
            stack.push_async_callback(signins.stop)
            app.state.signins = signins
            if settings.metrics_port is not None:  # /metrics off the public listener
                await stack.enter_async_context(
                    HealthServer(settings.metrics_host, settings.metrics_port, registry=REGISTRY)
                )
            dialer = Dialer.from_settings(settings)
            if dialer is not None:
                stack.push_async_callback(dialer.close)
            app.state.db, app.state.live, app.state.dialer = db, live, dialer
            app.state.nc = nc  # /healthz: the live view needs NATS; listen-in subscribes on it
            app.state.hub = hub
            log.info("admin API ready")
            yield

    app = FastAPI(
        title="Dialtone admin API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.guard = Guard(settings.auth_failures_per_address, settings.auth_failures_global)
    # The last added is the outermost: security headers go on every response, the 500s too.
    app.add_middleware(HeadAsGet)
    app.add_middleware(Metrics)
    app.add_middleware(SecurityHeaders)
    errors.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> Response:
        """200 while both PostgreSQL (sessions) and NATS (the live view) serve; else 503 and why."""
        nc = getattr(request.app.state, "nc", None)
        if nc is None or not nc.is_connected:
            return JSONResponse(
                {"status": "nats disconnected"}, 503, headers={"Retry-After": str(errors.RETRY_AFTER_S)}
            )
        db: Database = request.app.state.db
        try:
            # The whole check within its timeout, waiting for a connection included.
            async with db.connection(HEALTH_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1")
        except DatabaseUnavailable as exc:
            cause = type(exc.__cause__).__name__
            return JSONResponse(
                {"status": "database unavailable", "error": cause},
                503,
                headers={"Retry-After": str(errors.RETRY_AFTER_S)},
            )
        return JSONResponse({"status": "ok"})

    @app.get("/livez", include_in_schema=False)
    async def livez() -> Response:
        """Liveness: the process answers. Readiness (PostgreSQL, NATS) is /healthz."""
        return JSONResponse({"status": "alive"})

    if settings.metrics_port is None:

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    pages.install(app)
    app.include_router(api)
    app.include_router(stream_router)
    app.include_router(stats_router)
    app.include_router(calls_router)
    app.include_router(recordings_router)
    app.include_router(webhooks_router)
    app.include_router(audit_router)
    app.include_router(evals_router)
    return app
