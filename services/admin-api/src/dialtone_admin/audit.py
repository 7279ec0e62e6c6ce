"""The audit log: who viewed or downloaded which call's transcript or recording, when, from where.

Each audited request writes its entry (``audit_log``, migration 0009) *before* it is answered: a
view whose entry cannot be written is refused (503), so the log misses nothing. Who is the sign-in
(its public id, as ``GET /auth/sessions`` lists it) or the bearer token (a digest of it: which
token, after a rotation, never the token); from where is the client's address (through
``FORWARDED_ALLOW_IPS`` proxies only) and browser. The entries are listed by ``GET /audit/entries`` and on
the dashboard's Audit page; the writer deletes those older than ``AUDIT_RETENTION_DAYS``.

Audited: ``view_call`` (``GET /sessions/{sid}``, the call page), ``export_transcript``
(``GET /sessions/{sid}/transcript``), ``play_recording`` (``GET /sessions/{sid}/recording``; every
request, ranges included, with the range asked for), ``export_calls`` (``GET /sessions/export``,
with its filters) and ``listen_live`` (a call's audio while it runs, ``GET /live/{sid}/listen``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dialtone_admin.auth import client_address, read_cookie, require_token
from dialtone_admin.cursor import InvalidCursor, decode_cursor, encode_cursor
from dialtone_admin.database import Database, DatabaseError
from dialtone_admin.errors import responses
from dialtone_admin.params import Text
from dialtone_admin.signins import signin_id

Action = Literal["view_call", "export_transcript", "play_recording", "export_calls", "listen_live"]

_INSERT = """
INSERT INTO audit_log (actor_kind, actor, action, call_sid, detail, client, user_agent)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
"""


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_kind: Literal["token", "session"] = Field(description="the admin token (bearer) or a dashboard sign-in")
    actor: str = Field(description="the sign-in's id, or token:<digest of the token>")
    action: Action
    call_sid: str | None
    detail: dict[str, Any] = Field(description="the range of a recording request, the filters of an export")
    client: str | None = Field(description="the client's address")
    user_agent: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


def actor(request: Request) -> tuple[str, str]:
    """Who makes this (already authorized) request: ``("token", "token:<digest>")`` for the bearer
    token, ``("session", <sign-in id>)`` for a dashboard cookie."""
    header = request.headers.get("authorization", "")
    if header:
        token = header.partition(" ")[2].strip()
        return "token", "token:" + hashlib.sha256(b"dialtone-audit\x00" + token.encode()).hexdigest()[:12]
    cookie = read_cookie(request)
    return "session", signin_id(cookie.nonce) if cookie else "unknown"


async def record(request: Request, action: Action, call_sid: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
    """Write one entry; raises 503 when it cannot be written (the request is then not served)."""
    db: Database = request.app.state.db
    kind, who = actor(request)
    agent = request.headers.get("user-agent", "")[:300] or None
    try:
        async with db.connection() as conn:
            await conn.execute(_INSERT, kind, who, action, call_sid, detail or {}, client_address(request), agent)
    except (DatabaseError, asyncpg.PostgresError, OSError) as exc:
        raise HTTPException(503, detail="the database is unavailable (the audit log cannot record this view); try again shortly",
                            headers={"Retry-After": "2"}) from exc


async def _db(request: Request) -> Database:
    return request.app.state.db


router = APIRouter(tags=["audit"], dependencies=[Depends(require_token)])


@router.get("/audit/entries", response_model=AuditPage, responses=responses(400, 401, 503))
async def list_audit(
    db: Annotated[Database, Depends(_db)],
    call: Annotated[Text | None, Query(description="entries about this call")] = None,
    action: Annotated[Action | None, Query(description="one kind of access")] = None,
    actor_id: Annotated[Text | None, Query(alias="actor", description="one sign-in id or token:<digest>")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(description="next_cursor of the previous page")] = None,
) -> dict:
    """Who viewed or downloaded which call's transcript or recording, newest first."""
    where: list[str] = []
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if call:
        where.append(f"call_sid = {param(call)}")
    if action:
        where.append(f"action = {param(action)}")
    if actor_id:
        where.append(f"actor = {param(actor_id)}")
    if cursor is not None:
        try:
            at, ident = decode_cursor(cursor)
        except InvalidCursor as exc:
            raise HTTPException(400, detail=str(exc)) from exc
        where.append(f"(at, id) < ({param(at)}::timestamptz, {param(ident)}::bigint)")
    sql = ("SELECT id, at, actor_kind, actor, action, call_sid, detail, client, user_agent FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY at DESC, id DESC LIMIT {param(limit + 1)}")
    async with db.connection() as conn:
        rows = [dict(r) for r in await conn.fetch(sql, *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_cursor": encode_cursor(rows[-1]["at"], rows[-1]["id"]) if more else None}
