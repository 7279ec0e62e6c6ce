"""Types of the API's query and path parameters, checked at the edge so that nothing PostgreSQL
would refuse reaches it: a refusal there is a 400 at best, here it is a 422 that names the field.

- Text never holds NUL (``\\x00``): PostgreSQL text cannot store it.
- Times are ISO 8601 (a number is not taken as a Unix time), taken as UTC when they carry no zone,
  and must stay within 0001-01-01 .. 9999-12-31 once converted to UTC (``0001-01-01T00:00+14:00``
  would be in year 0).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StringConstraints

MAX_TEXT = 200  # filters, ids, searches: far above any agent name, outcome, status, call id or query


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\x00)")
    return value


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso(value: Any) -> Any:
    # pydantic would read "1700000000" or "0.5" as seconds since 1970: not what the API documents.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date or date-time, such as 2025-03-01 or 2025-03-01T12:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be between 0001-01-01 and 9999-12-31 in UTC") from None


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_no_nul)]
"""A string of at most ``MAX_TEXT`` characters without NUL."""

UtcTime = Annotated[datetime, BeforeValidator(_iso), AfterValidator(_utc)]
"""A point in time, converted to UTC (no zone means UTC), within years 1 to 9999 in UTC."""
