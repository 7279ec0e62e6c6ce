"""The demo conversation: what the Realtime simulator says when ``make run`` has no API key, and
what ``make call`` says as the caller. It exercises a greeting, a customer lookup, an outcome."""

from __future__ import annotations

from dialtone_sim.scenario import Scenario, ToolCall, Turn

CALLER = "+15005550001"  # Ada Lovelace in the example customers table
SUPPORT_NUMBER = "+15005550006"

CALLER_LINES = [
    "Hi, I'd like to check on my account please.",
    "Great, and is my latest order on its way?",
    "Perfect, that's all I needed. Thank you!",
]


def scenario() -> Scenario:
    return Scenario(
        turns=[
            Turn(
                caller=CALLER_LINES[0],
                agent="I found your account, Ada. You're on the Pro plan, with a balance of forty-two fifty.",
                tools=[ToolCall("lookup_customer", {"phone": CALLER})],
            ),
            Turn(
                caller=CALLER_LINES[1],
                agent="Yes, your latest order, A1002, has shipped and is on its way.",
                tools=[ToolCall("check_order_status", {"order_id": "A1002"})],
            ),
            Turn(
                caller=CALLER_LINES[2],
                agent="You're welcome, Ada. Have a great day!",
                tools=[ToolCall("set_outcome", {"outcome": "resolved", "detail": "account and order checked"})],
            ),
        ]
    )
