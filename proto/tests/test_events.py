"""Durable call events: explicit type tags, strict shapes, a round trip through the bus encoding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from dialtone_proto import (
    EVENT_TYPES,
    AgentChanged,
    CallEnded,
    CallMetric,
    CallStarted,
    CallStatus,
    CallTransferred,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    TurnMeasured,
    UsageReported,
    decode_event,
    encode_event,
)
from pydantic import ValidationError

pytestmark = pytest.mark.unit

CALL = "CA" + "f" * 32
AT = datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)


def _base(n: int) -> dict[str, Any]:
    return {"id": f"{CALL}-{n}", "call_id": CALL, "at": AT}


SAMPLES = [
    CallStarted(
        **_base(1), stream_sid="MZ1", account_sid="AC1", agent="support", from_number="+15550001",
        to_number="+15005550006", direction="inbound", bridge_id="b1", variables={"order": "42"},
    ),
    TranscriptLine(**_base(2), item_id="item_1", seq=0, role="caller", text="Hi, I need help.", agent="support"),
    TranscriptLine(
        **_base(3), item_id="item_2", seq=1, role="agent", text="Sure – wie?", agent="support",
        source="text", interrupted=True,
    ),
    ToolCalled(
        **_base(4), tool_call_id="call_1", seq=2, name="lookup_customer", agent="support",
        arguments={"phone": "+15550001"}, raw_arguments='{"phone":"+15550001"}', ok=True,
        result={"plan": "pro", "balance": [1, 2.5, None]}, duration_ms=12.5,
    ),
    ToolCalled(
        **_base(5), tool_call_id="call_2", seq=3, name="x", agent="support", raw_arguments="{bad",
        ok=False, error="bad arguments", duration_ms=0,
    ),
    UsageReported(
        **_base(6), source="response", ref="resp_1", model="gpt-realtime",
        tokens={"text_in": 10, "text_out": 20}, cost_usd=0.0012,
    ),
    OutcomeSet(**_base(7), outcome="resolved", detail="refund issued"),
    CallStatus(**_base(8), status="completed", source="twilio", sequence=3, duration_s=61, direction="inbound"),
    CallStatus(
        id=f"{CALL}-status-2-in-progress", call_id=CALL, at=AT, status="in-progress", source="twilio",
        answered_by="human",
    ),
    CallTransferred(**_base(9), target="+15005550010", agent="support"),
    AgentChanged(**_base(10), from_agent="support", to_agent="billing"),
    CallMetric(**_base(11), name="first_agent_audio_ms", value=812.5),
    TranscriptLine(
        **_base(13), item_id="item_2", seq=1, role="agent", text="Sure, we", agent="support", interrupted=True,
        rev=1, offset_ms=5230.0, heard_ms=610.0, audio_ms=2400.0, full_text="Sure, we are open until five.",
    ),
    UsageReported(
        **_base(14), source="response", ref="resp_2", model="gpt-realtime-2.1",
        cost_usd=0.00132, seconds=12.5,
        tokens={"text_in": 10, "audio_out": 20}, costs={"text_in": 0.00004, "audio_out": 0.00128},
    ),
    TurnMeasured(**_base(15), turn=0, item_id="item_4", offset_ms=6100.0, sent_ms=820.5, heard_ms=910.0,
                 tool_ms=300.0, tools=1),
    TurnMeasured(**_base(16), turn=1, sent_ms=700.0),
    CallEnded(**_base(12), reason="caller_hangup"),
]


def test_samples_cover_every_event_type() -> None:
    assert {e.type for e in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_event_round_trips_through_the_bus_encoding(event) -> None:
    data = encode_event(event)
    body = orjson.loads(data)

    assert body["v"] == 1
    assert body["type"] == event.type
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event
    assert decode_event(body) == event
    assert type(decode_event(data)) is type(event)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_event_with_an_extra_key_is_rejected(event) -> None:
    body = orjson.loads(encode_event(event))
    body["class"] = "dialtone_bridge.Evil"

    with pytest.raises(ValidationError):
        decode_event(body)


@pytest.mark.parametrize("event_type", ["call.unknown", "call_started", "CallStarted", "", None])
def test_event_of_an_unknown_type_is_rejected(event_type) -> None:
    body = orjson.loads(encode_event(SAMPLES[0]))
    body["type"] = event_type

    with pytest.raises(ValidationError):
        decode_event(body)


def test_event_without_a_type_is_rejected() -> None:
    body = orjson.loads(encode_event(SAMPLES[-1]))
    del body["type"]

    with pytest.raises(ValidationError):
        decode_event(body)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"v": 2}, "future protocol version"),
        ({"call_id": "CA1.in"}, "call id with a dot"),
        ({"call_id": "CA1\n"}, "call id with a trailing newline"),
        ({"call_id": ""}, "empty call id"),
        ({"id": ""}, "empty id"),
        ({"at": "yesterday"}, "not a timestamp"),
    ],
)
def test_event_envelope_is_checked(change: dict[str, Any], why: str) -> None:
    body = orjson.loads(encode_event(SAMPLES[-1])) | change

    with pytest.raises(ValidationError):
        decode_event(body)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "transcript.line", "item_id": "i", "seq": -1, "role": "caller", "text": "x", "agent": "a"},
        {"type": "transcript.line", "item_id": "i", "seq": 0, "role": "system", "text": "x", "agent": "a"},
        {"type": "usage.reported", "source": "response", "ref": "r", "model": "m", "usage": {}, "cost_usd": -1},
        {"type": "call.status", "status": "completed", "source": "caller"},
        {"type": "transcript.line", "item_id": "i", "seq": 0, "role": "agent", "text": "x", "agent": "a",
         "heard_ms": -1},
        {"type": "turn.measured", "turn": 0, "sent_ms": -3},
        {"type": "tool.called", "tool_call_id": "t", "seq": 0, "name": "n", "agent": "a", "ok": True, "duration_ms": -5},
    ],
    ids=["negative-seq", "bad-role", "negative-cost", "bad-source", "negative-heard", "negative-latency",
         "negative-duration"],
)
def test_event_fields_are_checked(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        decode_event(body | {"id": "x-1", "call_id": CALL, "at": AT.isoformat()})


def test_event_subject_is_per_call_and_type() -> None:
    assert SAMPLES[1].subject == f"dt.v1.events.{CALL}.transcript_line"


def test_decoded_event_is_immutable() -> None:
    event = decode_event(encode_event(SAMPLES[-1]))

    with pytest.raises(ValidationError):
        event.reason = "changed"  # type: ignore[misc]
