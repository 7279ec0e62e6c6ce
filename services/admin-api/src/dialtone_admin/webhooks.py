"""Webhook deliveries (docs/CONTRACTS.md, Webhooks): the list with every attempt, a resend, a replay.

The transcript-writer enqueues and sends them (``dialtone_writer.webhooks``); here they are only
read and put back in its queue: a resend or a replay sets a delivery pending again, due now, with a
fresh retry window, and the writer's deliverer (which polls every ``WEBHOOK_POLL_S``) sends it with
its same ``webhook-id`` and body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from dialtone_admin.auth import require_token
from dialtone_admin.cursor import InvalidCursor, decode_cursor, encode_cursor
from dialtone_admin.database import Database
from dialtone_admin.errors import responses
from dialtone_admin.pages import require_operator
from dialtone_admin.params import Text, UtcTime

Status = Literal["pending", "delivered", "dead"]


class WebhookAttempt(BaseModel):
    n: int = Field(description="1 for the first attempt")
    at: datetime = Field(description="when it ended (or, without an outcome, began)")
    status_code: int | None = Field(description="the endpoint's HTTP status; null without an answer")
    latency_ms: float
    response: str | None = Field(description="the first 200 bytes of the answer")
    error: str | None = Field(description="why it failed: timeout, a network error, HTTP <status>")


class WebhookDelivery(BaseModel):
    id: str = Field(description="the webhook-id header, the same on every attempt")
    endpoint: str = Field(description="global (WEBHOOK_URL) or <agent>/<name> (agent.toml)")
    url: str
    event_type: str
    event_id: str
    call_sid: str
    event_at: datetime
    created_at: datetime
    status: Status
    next_attempt_at: datetime | None = Field(description="pending: when it is tried next")
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    attempts: list[WebhookAttempt]


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None


class Replayed(BaseModel):
    replayed: int = Field(description="deliveries set pending again")


async def _db(request: Request) -> Database:
    return request.app.state.db


_COLUMNS = """
d.id, d.seq, d.endpoint, d.url, d.event_type, d.event_id, d.call_sid, d.event_at, d.created_at, d.status,
CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at, d.delivered_at, d.last_status,
d.last_error,
COALESCE((SELECT json_agg(json_build_object('n', a.n, 'at', a.at, 'status_code', a.status_code,
                                            'latency_ms', a.latency_ms, 'response', a.response, 'error', a.error)
                          ORDER BY a.n)
          FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::json) AS attempts
"""


def _item(row: Any) -> dict[str, Any]:
    out = dict(row)
    out.pop("seq", None)
    return out


router = APIRouter(tags=["webhooks"])


@router.get(
    "/webhooks/deliveries", response_model=WebhookDeliveryPage, responses=responses(400, 401, 503),
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def list_deliveries(
    db: Annotated[Database, Depends(_db)],
    status: Annotated[Status | None, Query(description="pending, delivered or dead")] = None,
    call: Annotated[Text | None, Query(description="the call's sid")] = None,
    endpoint: Annotated[Text | None, Query(description="global or <agent>/<name>")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Text | None, Query(description="next_cursor of the previous page")] = None,
) -> dict:
    """Webhook deliveries, newest first, each with its attempts."""
    where: list[str] = []
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if status is not None:
        where.append(f"d.status = {param(status)}")
    if call:
        where.append(f"d.call_sid = {param(call)}")
    if endpoint:
        where.append(f"d.endpoint = {param(endpoint)}")
    if cursor is not None:
        try:
            created_at, seq = decode_cursor(cursor)
        except InvalidCursor as exc:
            raise HTTPException(400, detail=str(exc)) from exc
        where.append(f"(d.created_at, d.seq) < ({param(created_at)}::timestamptz, {param(seq)}::bigint)")
    sql = (
        f"SELECT {_COLUMNS} FROM webhook_deliveries d"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY d.created_at DESC, d.seq DESC LIMIT {param(limit + 1)}"
    )
    async with db.connection() as conn:
        rows = await conn.fetch(sql, *args)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["seq"]) if more and page else None
    return {"items": [_item(r) for r in page], "next_cursor": next_cursor}


@router.post(
    "/webhooks/deliveries/{delivery_id}/resend", response_model=WebhookDelivery,
    responses=responses(400, 401, 404, 503), dependencies=[Depends(require_operator)],
)  # fmt: skip
async def resend(delivery_id: Annotated[Text, Path()], db: Annotated[Database, Depends(_db)]) -> dict:
    """Send one delivery again (delivered or dead ones too): pending now, a fresh retry window, the
    same webhook-id and body. The bearer token, or the dashboard's session from its own page."""
    async with db.connection() as conn:
        updated = await conn.fetchval(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), retry_from = now()"
            " WHERE id = $1 RETURNING id",
            delivery_id,
        )
        if updated is None:
            raise HTTPException(404, detail="no such webhook delivery")
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM webhook_deliveries d WHERE d.id = $1", delivery_id)
    return _item(row)


@router.post(
    "/webhooks/replay", response_model=Replayed, responses=responses(400, 401, 503),
    dependencies=[Depends(require_token)],
)  # fmt: skip
async def replay(
    db: Annotated[Database, Depends(_db)],
    since: Annotated[UtcTime, Query(description="events at or after (ISO 8601; UTC if no zone)")],
    until: Annotated[UtcTime, Query(description="events before (ISO 8601; UTC if no zone)")],
    endpoint: Annotated[Text | None, Query(description="only this endpoint's deliveries")] = None,
    status: Annotated[Status | None, Query(description="only deliveries in this state (default: any)")] = None,
) -> dict:
    """Send again every delivery of the events in ``[since, until)`` (say, after a receiver lost
    its data): each set pending, due now, with a fresh retry window and its same webhook-id and body."""
    where = ["event_at >= $1", "event_at < $2"]
    args: list[Any] = [since, until]
    if endpoint:
        args.append(endpoint)
        where.append(f"endpoint = ${len(args)}")
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    async with db.connection() as conn:
        result = await conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), retry_from = now()"
            f" WHERE {' AND '.join(where)}",
            *args,
        )
    return {"replayed": int(result.rsplit(" ", 1)[1])}
