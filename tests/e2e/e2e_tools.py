"""The example tools plus a deliberately slow one, as a user's own tools module would add."""

import asyncio

from dialtone_tools import tool

from examples.tools import *  # noqa: F403  (every example tool, as a user would extend them)
from examples.tools import setup  # noqa: F401  (the example's table set-up hook)


@tool
async def slow_report(seconds: float) -> dict:
    """Prepare the caller's account report. It takes a while.

    Args:
        seconds: how long the report takes.
    """
    await asyncio.sleep(seconds)
    return {"report": "ready", "took_s": seconds}
