"""Example tools for a Dialtone agent: copy this file, edit it, point ``TOOLS_MODULE`` at it.

Every ``@tool`` function here is offered to the model. The model sees each tool's name, the first
paragraph of its docstring and a JSON schema of its arguments (built from the type hints, with each
argument described by the ``Args:`` section), so write them for the model to read.

A tool can be sync or async. Asking for a ``ToolContext`` parameter gives it the call (call id,
caller's number, per-call variables), ``ctx.db`` (an asyncpg-style PostgreSQL pool) and the
call-control helpers (``ctx.set_outcome``, ``ctx.end_call``, ``ctx.transfer_call``,
``ctx.handoff``). Raise ``ToolError("...")`` for an answer the model should relay to the caller;
any other exception is reported to the model as an error and logged with its traceback.

``setup(db)`` runs once when the runner starts: here it creates and seeds a small demo CRM.
"""

from __future__ import annotations

from typing import Annotated, Any

from dialtone_tools import ToolContext, ToolError, tool
from pydantic import Field

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone       text NOT NULL UNIQUE,
    name        text NOT NULL,
    email       text,
    plan        text NOT NULL DEFAULT 'basic',
    balance     numeric(12, 2) NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (
    order_id     text PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id),
    status       text NOT NULL,
    total        numeric(12, 2) NOT NULL,
    placed_at    timestamptz NOT NULL,
    eta          date
);
CREATE INDEX IF NOT EXISTS orders_customer_placed ON orders (customer_id, placed_at DESC);
"""

DEMO_CUSTOMERS = [
    # phone, name, email, plan, balance
    ("+15005550001", "Ada Lovelace", "ada@example.com", "pro", "42.50"),
    ("+15005550002", "Alan Turing", "alan@example.com", "basic", "0.00"),
    ("+15005550003", "Grace Hopper", "grace@example.com", "enterprise", "1280.00"),
]
DEMO_ORDERS = [
    # order_id, customer phone, status, total, placed (days ago), eta (days from now)
    ("A1001", "+15005550001", "delivered", "129.00", 20, None),
    ("A1002", "+15005550001", "shipped", "58.40", 3, 2),
    ("B2001", "+15005550003", "processing", "960.00", 1, 6),
]


async def setup(db: Any) -> None:
    """Create the demo tables and rows if missing (idempotent: safe on every start of every runner)."""
    if not db.configured:
        return  # no DATABASE_URL: the database tools will answer an error, the others still work
    async with db.acquire() as conn, conn.transaction():
        # Runners starting together would race on CREATE TABLE IF NOT EXISTS; serialise them.
        await conn.execute("SELECT pg_advisory_xact_lock(7482101)")
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO customers (phone, name, email, plan, balance) VALUES ($1, $2, $3, $4, $5::numeric)"
            " ON CONFLICT (phone) DO NOTHING",
            DEMO_CUSTOMERS,
        )
        await conn.executemany(
            "INSERT INTO orders (order_id, customer_id, status, total, placed_at, eta)"
            " SELECT $1, id, $3, $4::numeric, now() - make_interval(days => $5),"
            "        current_date + $6::int FROM customers WHERE phone = $2"
            " ON CONFLICT (order_id) DO NOTHING",
            DEMO_ORDERS,
        )


@tool
async def lookup_customer(
    ctx: ToolContext,
    phone: Annotated[str, Field(description="Phone number in E.164 form, e.g. +15005550001.")],
) -> dict[str, Any]:
    """Look up a customer by phone number: name, plan, account balance and their latest order.

    Use the caller's own number unless they ask about another account.
    """
    row = await ctx.db.fetchrow(
        """
        SELECT c.name, c.email, c.plan, c.balance,
               o.order_id AS last_order_id, o.status AS last_order_status, o.placed_at AS last_order_at
        FROM customers c
        LEFT JOIN LATERAL (
            SELECT order_id, status, placed_at FROM orders
            WHERE customer_id = c.id ORDER BY placed_at DESC LIMIT 1
        ) o ON true
        WHERE c.phone = $1
        """,
        phone,
    )
    if row is None:
        return {"found": False}
    ctx.logger.info("customer found")
    return {
        "found": True,
        "name": row["name"],
        "email": row["email"],
        "plan": row["plan"],
        "balance": float(row["balance"]),
        "last_order": None if row["last_order_id"] is None else {
            "order_id": row["last_order_id"],
            "status": row["last_order_status"],
            "placed_at": row["last_order_at"].date().isoformat(),
        },
    }


@tool(
    description="Check the status and expected delivery date of an order by its order number.",
    parameters={
        "type": "object",
        "properties": {
            "order_id": {
                "type": "string",
                "description": "The order number the caller reads out, e.g. A1002.",
                "pattern": "^[A-Za-z][0-9]{4}$",
            },
        },
        "required": ["order_id"],
        "additionalProperties": False,
    },
    timeout_s=5,
)
async def check_order_status(ctx: ToolContext, order_id: str) -> dict[str, Any]:
    """Order status for the caller; other customers' orders stay private."""
    row = await ctx.db.fetchrow(
        "SELECT o.status, o.total, o.eta, c.phone FROM orders o JOIN customers c ON c.id = o.customer_id"
        " WHERE o.order_id = $1",
        order_id.upper(),
    )
    if row is None:
        raise ToolError(f"there is no order {order_id.upper()}")
    if ctx.from_number and row["phone"] != ctx.from_number:
        raise ToolError("that order belongs to another customer's account")
    return {
        "order_id": order_id.upper(),
        "status": row["status"],
        "total": float(row["total"]),
        "eta": row["eta"].isoformat() if row["eta"] else None,
    }
