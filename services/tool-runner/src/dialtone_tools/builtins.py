"""The call-control tools every agent has. Each records a ``ToolAction`` for the bridge and answers
the model with a short JSON confirmation, so the model knows the request was taken."""

from __future__ import annotations

from typing import Any

from dialtone_tools.context import ToolContext
from dialtone_tools.registry import tool


@tool
def set_outcome(ctx: ToolContext, outcome: str, detail: str | None = None) -> dict[str, Any]:
    """Record the outcome of this call once it is known (e.g. appointment_booked, not_interested).

    Args:
        outcome: A short snake_case label of what the call achieved.
        detail: Optional free text with the specifics (date booked, reason declined...).
    """
    ctx.set_outcome(outcome, detail)
    return {"ok": True, "outcome": outcome}


@tool
def end_call(ctx: ToolContext, reason: str | None = None) -> dict[str, Any]:
    """Hang up. Call this only after you have said goodbye; the call ends once your goodbye has played.

    Args:
        reason: Why the call ends (e.g. caller_done, wrong_number).
    """
    ctx.end_call(reason)
    return {"ok": True, "action": "end_call"}


@tool
def transfer_call(ctx: ToolContext, reason: str | None = None) -> dict[str, Any]:
    """Transfer the caller to a human colleague. Tell the caller you are transferring them first.

    Args:
        reason: Why a human is needed, passed on to the colleague's records.
    """
    ctx.transfer_call(reason)
    return {"ok": True, "action": "transfer_call"}


@tool
def handoff(ctx: ToolContext, agent: str) -> dict[str, Any]:
    """Hand the conversation over to another agent better suited to the caller's request.

    Args:
        agent: The name of the agent that takes over.
    """
    ctx.handoff(agent)
    return {"ok": True, "action": "handoff", "agent": agent}
