"""Unit tests: cursors and the live-call table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dialtone_admin.cursor import InvalidCursor, decode_cursor, encode_cursor
from dialtone_admin.live import LiveCalls
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
