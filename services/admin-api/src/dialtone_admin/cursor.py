"""Opaque keyset cursors for ``GET /sessions``: the ``(started_at, id)`` of the last row returned.

A cursor is URL-safe base64 of a small JSON array, so clients treat it as an opaque string and
the server can change its contents later without breaking anyone who merely passes it back.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

import orjson

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNCHANGED = "invalid cursor: pass back next_cursor from a previous page unchanged"


class InvalidCursor(ValueError):
    """A cursor this server did not produce (or one that was altered)."""


def encode_cursor(started_at: datetime, row_id: int) -> str:
    """Encode the position after a row.

    Args:
        started_at: the row's ``started_at`` (timezone-aware).
        row_id: the row's ``id``, which breaks ties between equal ``started_at``.

    Returns:
        An opaque URL-safe string without padding.
    """
    raw = orjson.dumps([started_at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Decode a cursor made by ``encode_cursor``.

    Raises:
        InvalidCursor: with a message fit to show the client.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, row_id = orjson.loads(raw)
        when = datetime.fromisoformat(started)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidCursor(_UNCHANGED) from exc
    if (
        when.tzinfo is None
        or not isinstance(row_id, int)
        or isinstance(row_id, bool)
        or not INT64_MIN <= row_id <= INT64_MAX  # ids are bigint: a larger one cannot be a bound
    ):
        raise InvalidCursor(_UNCHANGED)
    try:
        when = when.astimezone(UTC)  # a time PostgreSQL can take (year 1 at +14:00 is out of range)
    except OverflowError as exc:
        raise InvalidCursor(_UNCHANGED) from exc
    return when, row_id
