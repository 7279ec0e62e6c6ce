"""An outbound call's session takes its direction and AnsweredBy from Twilio's status callbacks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dialtone_proto import CallStarted, CallStatus

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def status(call_id: str, seq: int, value: str, answered_by: str | None = None) -> CallStatus:
    return CallStatus(id=f"{call_id}-status-{seq}-{value}-{answered_by or ''}", call_id=call_id,
                      at=T0 + timedelta(seconds=seq), status=value, source="twilio", sequence=seq,
                      direction="outbound", answered_by=answered_by)


async def test_direction_and_answered_by_before_and_after_call_started(run_consumer, publish, pool) -> None:
    call_id = "CA" + uuid.uuid4().hex
    rc = await run_consumer(call_id=call_id)
    for event in (status(call_id, 0, "initiated"), status(call_id, 1, "ringing")):
        last = await publish(event)
    await rc.settled(last)
    row = await pool.fetchrow("SELECT direction, status, agent FROM call_sessions WHERE call_sid = $1", call_id)
    assert tuple(row) == ("outbound", "ringing", None)  # outbound before any bridge saw the call

    last = await publish(status(call_id, 2, "in-progress", answered_by="machine_end_beep"))
    last = await publish(CallStarted(id=f"{call_id}-0", call_id=call_id, at=T0 + timedelta(seconds=3),
                                     agent="reminders", direction="outbound"))
    last = await publish(status(call_id, 4, "completed"))  # later callbacks may omit AnsweredBy
    await rc.settled(last)
    row = await pool.fetchrow(
        "SELECT direction, status, agent, answered_by FROM call_sessions WHERE call_sid = $1", call_id)
    assert tuple(row) == ("outbound", "completed", "reminders", "machine_end_beep")
