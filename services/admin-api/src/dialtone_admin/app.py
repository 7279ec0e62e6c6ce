"""The admin API: sessions from PostgreSQL, live calls from NATS heartbeats, outbound calls through
Twilio, and the dashboard."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Annotated

import asyncpg
from dialtone_common import bus
from dialtone_common.db import create_pool
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from dialtone_admin.auth import require_token
from dialtone_admin.cursor import InvalidCursor
from dialtone_admin.live import LiveCalls
from dialtone_admin.models import LivePage, SessionDetail, SessionPage
from dialtone_admin.outbound import Dialer
from dialtone_admin.outbound import router as calls_router
from dialtone_admin.sessions import SessionFilter, get_session, list_sessions
from dialtone_admin.settings import AdminSettings

log = logging.getLogger(__name__)

REQUESTS = Counter("dialtone_admin_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("dialtone_admin_request_seconds", "HTTP request latency", ["method", "route"])

_DASHBOARD = resources.files("dialtone_admin").joinpath("dashboard.html").read_text(encoding="utf-8")


def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


api = APIRouter(dependencies=[Depends(require_token)])


@api.get("/sessions", response_model=SessionPage, tags=["sessions"])
async def sessions_page(
    pool: Annotated[asyncpg.Pool, Depends(_pool)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    outcome: str | None = None,
    status: str | None = None,
    agent: str | None = None,
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601; UTC if no zone)")] = None,
    until: Annotated[datetime | None, Query(description="started before (ISO 8601; UTC if no zone)")] = None,
    q: Annotated[str | None, Query(max_length=500, description="words said in the call (full-text search)")] = None,
) -> dict:
    """Sessions, newest first, with keyset pagination."""
    filters = SessionFilter(outcome=outcome, status=status, agent=agent, since=since, until=until, q=q)
    try:
        items, next_cursor = await list_sessions(pool, filters, limit, cursor)
    except InvalidCursor as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    return {"items": items, "next_cursor": next_cursor}


@api.get("/sessions/{call_sid}", response_model=SessionDetail, tags=["sessions"])
async def session_detail(call_sid: str, pool: Annotated[asyncpg.Pool, Depends(_pool)]) -> dict:
    """One call: summary, transcript, tool calls, usage, status history, metrics and handoffs."""
    async with pool.acquire() as conn:
        detail = await get_session(conn, call_sid)
    if detail is None:
        raise HTTPException(404, detail=f"no session {call_sid!r}")
    return detail


@api.get("/live", response_model=LivePage, tags=["live"])
async def live_calls(request: Request) -> dict:
    """Calls in progress, from their bridges' heartbeats."""
    live: LiveCalls = request.app.state.live
    return {"items": [call.model_dump(mode="json") for call in live.snapshot()]}


def create_app(settings: AdminSettings) -> FastAPI:
    """Build the application; its lifespan opens the database pool and the NATS connection.

    Args:
        settings: configuration; ``admin_token`` guards every route but ``/healthz``,
            ``/metrics`` and the dashboard shell (which asks for the token itself).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await create_pool(settings.database_url)
            stack.push_async_callback(pool.close)
            nc = await bus.connect(settings.nats_servers(), f"admin-api{settings.instance_id}")
            stack.push_async_callback(bus.close, nc)
            live = LiveCalls(settings.live_ttl_s)
            await live.start(nc)
            stack.push_async_callback(live.stop)
            dialer = Dialer.from_settings(settings)
            if dialer is not None:
                stack.push_async_callback(dialer.close)
            app.state.pool, app.state.live, app.state.dialer = pool, live, dialer
            log.info("admin API ready")
            yield

    app = FastAPI(title="Dialtone admin API", version="1", lifespan=lifespan)
    app.state.settings = settings

    @app.middleware("http")
    async def measure(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        # The route template, not the raw path, so call ids do not explode the label set.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> Response:
        try:
            await request.app.state.pool.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return JSONResponse({"status": "database unavailable", "error": type(exc).__name__}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(_DASHBOARD)

    app.include_router(api)
    app.include_router(calls_router)
    return app
