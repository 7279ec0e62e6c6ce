"""Unit tests: cursors, search text, the live-call table, settings and the error path."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from dialtone_admin.app import create_app
from dialtone_admin.cursor import InvalidCursor, decode_cursor, encode_cursor
from dialtone_admin.live import LiveCalls
from dialtone_admin.metrics import REGISTRY
from dialtone_admin.sessions import MAX_NEGATIONS, search_text
from dialtone_admin.settings import AdminSettings
from dialtone_proto.live import LiveCall

pytestmark = pytest.mark.unit


def test_cursor_round_trips_and_is_url_safe() -> None:
    when = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cursor = encode_cursor(when, 9_000_000_001)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert decode_cursor(cursor) == (when, 9_000_000_001)


@pytest.mark.parametrize(
    "cursor",
    ["", "not a cursor", "%%%", "W10", "WyJ4IiwgMV0", encode_cursor(datetime(2025, 1, 1), 1),
     "WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgInRydWUiXQ"],
)
def test_bad_cursors_are_rejected_with_a_clear_message(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="invalid cursor"):
        decode_cursor(cursor)


def test_live_calls_expire_after_ttl() -> None:
    now = [100.0]
    live = LiveCalls(ttl=15, clock=lambda: now[0])
    started = datetime(2025, 3, 1, tzinfo=UTC)
    a = LiveCall(call_id="CA1", agent="reception", started_at=started, bridge_id="b1")
    b = LiveCall(call_id="CA2", agent="sales", started_at=started - timedelta(seconds=5), bridge_id="b1")
    live.seen(a)
    live.seen(b)
    assert [c.call_id for c in live.snapshot()] == ["CA2", "CA1"]  # oldest call first
    now[0] += 10
    live.seen(a.model_copy(update={"state": "speaking"}))
    now[0] += 10  # b silent for 20 s, a for 10 s
    assert [(c.call_id, c.state) for c in live.snapshot()] == [("CA1", "speaking")]
    now[0] += 16
    assert live.snapshot() == []


@pytest.mark.parametrize(
    ("when", "row_id"),
    [
        (datetime(2025, 1, 1, tzinfo=UTC), 2**63),  # one past bigint: PostgreSQL cannot compare with it
        (datetime(2025, 1, 1, tzinfo=UTC), -(2**63) - 1),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), 1),  # year 0 once in UTC
    ],
)
def test_cursors_outside_what_postgresql_holds_are_rejected(when: datetime, row_id: int) -> None:
    forged = base64.urlsafe_b64encode(json.dumps([when.isoformat(), row_id]).encode()).decode()
    with pytest.raises(InvalidCursor, match="invalid cursor"):
        decode_cursor(forged)


def test_cursor_at_the_edges_of_bigint_and_time_round_trips() -> None:
    first = datetime(1, 1, 1, tzinfo=UTC)
    assert decode_cursor(encode_cursor(first, 2**63 - 1)) == (first, 2**63 - 1)
    late = datetime(9999, 12, 31, 12, tzinfo=timezone(timedelta(hours=-5)))  # still 9999 in UTC
    assert decode_cursor(encode_cursor(late, 1)) == (late, 1)


def test_search_keeps_a_few_negations_and_hyphenated_words() -> None:
    assert search_text("e-mail -spam") == "e-mail -spam"
    assert search_text("-a -b -c -d -e -f -g") == "-a -b -c -d -e  f  g"
    assert search_text("-" * 40).count("-") == MAX_NEGATIONS
    assert search_text("-(" * 40).count("-") == MAX_NEGATIONS
    assert search_text("a-b-c-d-e-f-g-h") == "a-b-c-d-e-f-g-h"


@pytest.mark.parametrize(
    ("env", "host"),
    [({}, "127.0.0.1"), ({"ADMIN_HOST": "0.0.0.0"}, "0.0.0.0"), ({"HOST": "10.1.2.3"}, "10.1.2.3")],
)
def test_binds_this_machine_only_unless_told(monkeypatch: pytest.MonkeyPatch, env: dict, host: str) -> None:
    for name in ("ADMIN_HOST", "HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = AdminSettings(database_url="postgresql://db", admin_token="t" * 32)
    assert settings.host == host
    assert settings.forwarded_allow_ips == "127.0.0.1"


async def test_a_handler_exception_is_a_counted_json_500() -> None:
    app = create_app(AdminSettings(database_url="postgresql://db", admin_token="t" * 32))

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    before = REGISTRY.get_sample_value(
        "dialtone_admin_requests_total", {"method": "GET", "route": "/broken", "status": "500"}
    ) or 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        r = await client.get("/broken")
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert "a bug" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    after = REGISTRY.get_sample_value(
        "dialtone_admin_requests_total", {"method": "GET", "route": "/broken", "status": "500"}
    )
    assert after == before + 1
