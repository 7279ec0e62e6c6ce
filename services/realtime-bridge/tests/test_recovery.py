"""Taking a call over: the conversation state its events describe (``recovery.restore``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dialtone_bridge.recovery import restore
from dialtone_proto.events import (
    AgentChanged,
    CallEnded,
    CallStarted,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
)

pytestmark = pytest.mark.unit

CALL = "CA" + "4" * 32
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def line(n: int, seq: int, role: str, text: str, item: str | None = None) -> TranscriptLine:
    return TranscriptLine(id=f"{CALL}-{n}", call_id=CALL, at=at(n), item_id=item or f"item{seq}", seq=seq,
                          role=role, text=text, agent="support")  # type: ignore[arg-type]


def test_a_call_that_never_started_has_nothing_to_restore() -> None:
    assert restore([line(1, 0, "caller", "hello")]) is None


def test_lines_come_back_in_conversation_order_with_the_agent_and_outcome() -> None:
    events = [
        CallStarted(id=f"{CALL}-1", call_id=CALL, at=at(0), agent="support"),
        line(3, 2, "agent", "We open at nine."),
        line(2, 1, "caller", "When do you open?"),  # transcription finished late: out of order
        line(4, 0, "agent", "Hello, Acme."),
        ToolCalled(id=f"{CALL}-5", call_id=CALL, at=at(5), tool_call_id="t1", seq=3, name="lookup", agent="support",
                   ok=True, duration_ms=3),
        AgentChanged(id=f"{CALL}-6", call_id=CALL, at=at(6), from_agent="support", to_agent="billing"),
        OutcomeSet(id=f"{CALL}-7", call_id=CALL, at=at(7), outcome="answered"),
    ]
    state = restore(events)

    assert state is not None
    assert [(x.seq, x.role, x.text) for x in state.lines] == [
        (0, "agent", "Hello, Acme."), (1, "caller", "When do you open?"), (2, "agent", "We open at nine."),
    ]
    assert (state.agent, state.outcome, state.next_seq, state.ended) == ("billing", "answered", 4, False)
    assert state.started_at == at(0)


def test_a_line_published_twice_is_restored_once() -> None:
    events = [
        CallStarted(id=f"{CALL}-1", call_id=CALL, at=at(0), agent="support"),
        line(2, 0, "caller", "Hi", item="same"),
        line(3, 0, "caller", "Hi there", item="same"),
        CallEnded(id=f"{CALL}-4", call_id=CALL, at=at(4), reason="caller_hangup"),
    ]
    state = restore(events)

    assert state is not None
    assert [x.text for x in state.lines] == ["Hi there"]
    assert state.ended and state.next_seq == 1


def test_a_line_cut_by_a_barge_in_is_restored_as_cut_whatever_the_order() -> None:
    whole = line(2, 0, "agent", "We are open from nine to five.", item="a1")
    cut = TranscriptLine(id=f"{CALL}-3", call_id=CALL, at=at(1), item_id="a1", seq=0, role="agent",
                         text="We are open", agent="support", interrupted=True, rev=1, heard_ms=900, audio_ms=2400,
                         full_text="We are open from nine to five.")  # its clock said earlier: rev decides
    state = restore([CallStarted(id=f"{CALL}-1", call_id=CALL, at=at(0), agent="support"), whole, cut])
    assert state is not None and [x.text for x in state.lines] == ["We are open"]
