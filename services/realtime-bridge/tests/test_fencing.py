"""A bridge whose call was given to another bridge leaves the phone line alone."""

from __future__ import annotations

import pytest
from dialtone_bridge.agents import Agent
from dialtone_proto.tools import ToolAction

from .fakes import FakeSession

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]


class RecordingTwilio:
    def __init__(self) -> None:
        self.actions: list[tuple[str, str]] = []

    async def hang_up(self, call_sid: str) -> None:
        self.actions.append(("hang_up", call_sid))

    async def redirect(self, call_sid: str, twiml: str) -> None:
        self.actions.append(("redirect", call_sid))


def session(holds: bool) -> tuple[FakeSession, RecordingTwilio]:
    s = FakeSession(Agent(name="support", instructions="x", transfer_number="+15550100"))
    s.holds = holds
    twilio = RecordingTwilio()
    s.control.twilio = twilio  # type: ignore[assignment]
    return s, twilio


@pytest.mark.parametrize("holds", [True, False])
async def test_a_hang_up_touches_the_line_only_while_the_call_is_ours(holds: bool) -> None:
    s, twilio = session(holds)

    await s.control.hang_up("agent_ended")

    assert twilio.actions == ([("hang_up", "CA1")] if holds else [])
    assert ("HANGUP", {"reason": "agent_ended"}) in s.frames if holds else s.frames == []
    assert s.end_reason == ("agent_ended" if holds else "bridge_replaced")


@pytest.mark.parametrize("holds", [True, False])
async def test_a_transfer_redirects_the_call_only_while_it_is_ours(holds: bool) -> None:
    s, twilio = session(holds)

    await s.control.apply(ToolAction(action="transfer_call", detail="asked for a human"))

    assert twilio.actions == ([("redirect", "CA1")] if holds else [])
    assert s.end_reason == ("transferred" if holds else "bridge_replaced")
