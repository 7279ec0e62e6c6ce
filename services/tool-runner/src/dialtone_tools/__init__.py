"""Dialtone's tool-runner: agent tools are ordinary Python functions.

Write tools in your own module and point ``TOOLS_MODULE`` at it::

    from dialtone_tools import ToolContext, ToolError, tool

    @tool
    async def lookup_customer(ctx: ToolContext, phone: str) -> dict:
        \"\"\"Find the customer calling from ``phone``.\"\"\"
        row = await ctx.db.fetchrow("SELECT name FROM customers WHERE phone = $1", phone)
        if row is None:
            raise ToolError("no customer with that number")
        return dict(row)
"""

from dialtone_tools.context import ToolContext
from dialtone_tools.errors import ToolDefinitionError, ToolError
from dialtone_tools.registry import Registry, Tool, tool

__all__ = ["Registry", "Tool", "ToolContext", "ToolDefinitionError", "ToolError", "tool"]
