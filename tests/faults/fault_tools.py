"""The fault suite's tools: one that answers at once and needs no database, so that a tool call
fails only when the tool-runner itself is gone."""

from dialtone_tools import tool


@tool
def opening_hours(day: str) -> dict:
    """The opening hours of the shop on one day of the week.

    Args:
        day: the day, e.g. Monday.
    """
    return {"day": day, "open": "09:00", "close": "17:00"}
