"""What a tool sees of the call it serves: ``ToolContext``, and ``ToolError`` for expected failures.

A tool asks for the context by annotating one parameter with ``ToolContext``; the runner injects it
and leaves it out of the JSON schema the model sees. Call-control helpers do not act themselves:
they record ``ToolAction``s that travel back to the realtime-bridge with the tool's result, because
only the bridge owns the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dialtone_common.logs import CallLog
from dialtone_proto import ToolAction

from dialtone_tools.errors import ToolError

if TYPE_CHECKING:
    from dialtone_tools.database import Database

_log = logging.getLogger("dialtone_tools.tool")


@dataclass
class ToolContext:
    """The call a tool runs for, the database, a call-scoped logger and the call-control helpers.

    Attributes:
        call_id: The call's id (Twilio's CallSid).
        tool_call_id: The model's id of this function call.
        agent: The agent that called the tool.
        from_number: The caller's number, when known.
        to_number: The number called, when known.
        variables: Per-call variables set by the agent configuration or the outbound request.
        actions: The call-control effects recorded so far, returned to the bridge with the result.
    """

    call_id: str
    tool_call_id: str
    agent: str
    from_number: str | None = None
    to_number: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    database: Database | None = field(default=None, repr=False)
    actions: list[ToolAction] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logger = CallLog(_log, call_id=self.call_id, tool_call_id=self.tool_call_id)

    @property
    def db(self) -> Database:
        """The service's PostgreSQL pool (created on first use from ``DATABASE_URL``).

        It offers the ``asyncpg.Pool`` methods tools need (``fetch``, ``fetchrow``, ``fetchval``,
        ``execute``, ``acquire``), all coroutines or async context managers.

        Raises:
            ToolError: No database is configured for this runner.
        """
        if self.database is None or not self.database.configured:
            raise ToolError("no database is configured for this tool runner (set DATABASE_URL)")
        return self.database

    def set_outcome(self, outcome: str, detail: str | None = None) -> None:
        """Record the call's business outcome (e.g. ``"appointment_booked"``)."""
        self.actions.append(ToolAction(action="set_outcome", value=outcome, detail=detail))

    def end_call(self, reason: str | None = None) -> None:
        """Ask the bridge to hang up once the agent's goodbye has played."""
        self.actions.append(ToolAction(action="end_call", detail=reason))

    def transfer_call(self, reason: str | None = None) -> None:
        """Ask the bridge to transfer the caller to the agent's configured human number."""
        self.actions.append(ToolAction(action="transfer_call", detail=reason))

    def handoff(self, agent: str) -> None:
        """Ask the bridge to let another agent take over the conversation."""
        self.actions.append(ToolAction(action="handoff", value=agent))
