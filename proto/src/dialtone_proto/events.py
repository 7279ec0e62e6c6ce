"""Durable call events, carried by JetStream.

Every event is a JSON object with ``v`` (protocol version), ``type`` (an explicit tag from the
allow-list below, never a class path), ``id`` (unique, also sent as ``Nats-Msg-Id`` so JetStream
drops a duplicate publish and the writer drops a redelivery), ``call_id`` and ``at``.

Subjects are ``dt.v1.events.<call_id>.<type with _>`` on the stream ``DIALTONE_EVENTS``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dialtone_proto import subjects

STREAM_NAME = "DIALTONE_EVENTS"
STREAM_SUBJECTS = [subjects.EVENTS_ALL]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=200)
    call_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    at: datetime

    @property
    def subject(self) -> str:
        return subjects.event(self.call_id, self.type)  # type: ignore[attr-defined]


Direction = Literal["inbound", "outbound"]


class CallStarted(_Event):
    """A bridge claimed the call and the conversation began."""

    type: Literal["call.started"] = "call.started"
    stream_sid: str | None = None
    account_sid: str | None = None
    agent: str
    from_number: str | None = None
    to_number: str | None = None
    direction: Direction = "inbound"
    bridge_id: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)


class TranscriptLine(_Event):
    """One finished line of the conversation. ``seq`` is its place in the conversation, which is
    not always the order lines finish in (caller transcription completes asynchronously).

    ``interrupted``: the line stopped before its end, because the caller talked over it or the
    model stopped early (an incomplete or failed response). ``untranscribed``: the caller spoke
    but their words have no text (the transcription failed or came back empty); ``text`` is then
    the empty string, and a reader shows its own placeholder.

    What the caller heard of an agent line: ``audio_ms`` of audio the model generated for it, of
    which ``heard_ms`` played to the caller (equal unless the caller cut the line off). A line the
    caller cut has ``text`` cut to about the heard part and the whole generated text in
    ``full_text`` (None when ``text`` is whole).

    ``offset_ms``: where the line starts, in milliseconds from the start of the call's media
    stream, on the clock of Twilio's media timestamps (docs/CONTRACTS.md, Transcript lines).

    ``rev``: a line may be published again for the same ``item_id`` (a barge-in cuts a line that
    was already published), under a new event id and a higher ``rev``; a reader keeps, per item,
    the line of the highest ``rev``, whatever order they arrive in."""

    type: Literal["transcript.line"] = "transcript.line"
    item_id: str
    seq: int = Field(ge=0)
    role: Literal["caller", "agent"]
    text: str
    agent: str
    source: Literal["speech", "dtmf", "text"] = "speech"
    interrupted: bool = False
    untranscribed: bool = False
    rev: int = Field(default=0, ge=0)
    offset_ms: float | None = Field(default=None, ge=0)
    heard_ms: float | None = Field(default=None, ge=0)
    audio_ms: float | None = Field(default=None, ge=0)
    full_text: str | None = None


class ToolCalled(_Event):
    """A tool call the model made, with its arguments and what it returned."""

    type: Literal["tool.called"] = "tool.called"
    tool_call_id: str
    seq: int = Field(ge=0)
    name: str
    agent: str
    arguments: dict[str, Any] | None = None
    raw_arguments: str | None = None
    ok: bool
    result: Any = None
    error: str | None = None
    duration_ms: float = Field(ge=0)


class UsageReported(_Event):
    """What one model response or one input transcription used, and its cost, engine-neutrally.

    ``tokens`` and ``costs`` split it by billing kind (``text_in``, ``text_cached``, ``audio_in``,
    ``audio_cached``, ``text_out``, ``audio_out``; cached tokens apart from the other input tokens),
    ``seconds`` is session time for engines billed by time; all priced by the bridge's configured
    price table for ``model``, and ``cost_usd`` is their sum. No provider's usage object crosses the
    bus: ``usage`` is kept (empty) only so that writers of the previous release still read the event."""

    type: Literal["usage.reported"] = "usage.reported"
    source: Literal["response", "transcription"]
    ref: str
    model: str
    usage: dict[str, Any] = Field(default_factory=dict, description="deprecated: always empty")
    seconds: float = Field(default=0.0, ge=0)
    cost_usd: float = Field(ge=0)
    tokens: dict[str, int] = Field(default_factory=dict)
    costs: dict[str, float] = Field(default_factory=dict)


class OutcomeSet(_Event):
    """The call's outcome, as set by the agent (the ``set_outcome`` tool) or the platform."""

    type: Literal["outcome.set"] = "outcome.set"
    outcome: str = Field(min_length=1, max_length=200)
    detail: str | None = None


class CallStatus(_Event):
    """A Twilio call status (from a status callback) or a platform-decided terminal state."""

    type: Literal["call.status"] = "call.status"
    status: str
    source: Literal["twilio", "bridge", "gateway", "sweeper"]
    answered_by: str | None = None
    sequence: int | None = None
    duration_s: int | None = None
    direction: Direction | None = None
    # What the status does not say alone: ``moved`` names the gateways ("gw-a -> gw-b"),
    # ``move_failed`` says why.
    detail: str | None = Field(default=None, max_length=500)


class CallTransferred(_Event):
    """The caller was transferred to a human."""

    type: Literal["call.transferred"] = "call.transferred"
    target: str
    agent: str


class AgentChanged(_Event):
    """A handoff: another agent took over the conversation."""

    type: Literal["agent.changed"] = "agent.changed"
    from_agent: str
    to_agent: str


class CallMetric(_Event):
    """A per-call measurement, e.g. ``first_agent_audio_ms``."""

    type: Literal["call.metric"] = "call.metric"
    name: str
    value: float


class TurnMeasured(_Event):
    """One turn of the conversation, timed: the caller stopped speaking (the model's
    ``speech_stopped``) and the agent answered. ``sent_ms``: to the first audio of the answer sent
    towards the caller; ``heard_ms``: to the first of it the caller heard (the mark behind it
    echoed), None when the caller talked over it before; ``tool_ms``: time tools were running
    within the turn (overlapping tool calls counted once), ``tools`` how many ran. ``item_id`` is
    the answer's item; ``offset_ms`` the moment the caller stopped, on the stream clock of
    transcript lines; ``received_ms``: to the answer's first audio from the model at the bridge
    (None from bridges older than it). Published once the turn is heard (or talked over)."""

    type: Literal["turn.measured"] = "turn.measured"
    turn: int = Field(ge=0)
    item_id: str | None = None
    offset_ms: float | None = Field(default=None, ge=0)
    sent_ms: float = Field(ge=0)
    heard_ms: float | None = Field(default=None, ge=0)
    tool_ms: float = Field(default=0.0, ge=0)
    tools: int = Field(default=0, ge=0)
    received_ms: float | None = Field(default=None, ge=0)


class CallEnded(_Event):
    """The conversation is over; the Realtime socket is closed."""

    type: Literal["call.ended"] = "call.ended"
    reason: str


class CallAnalyzed(_Event):
    """What an analysis of the finished call found (a summary, extracted fields, a score...), as
    published by an analysis worker. ``analysis`` is free-form JSON, kept whole on the session
    (the latest one wins) and carried by the ``call.analyzed`` webhook.

    ``cost_usd`` is what the analysis cost and ``tokens`` what it used (``input``, of which
    ``cached``, and ``output``); the writer adds them to the call's cost, as the kind ``analysis``.
    The platform's worker publishes one per call, with the id ``analysis-<call_id>``."""

    type: Literal["call.analyzed"] = "call.analyzed"
    analysis: dict[str, Any]
    model: str | None = None
    cost_usd: float = Field(default=0.0, ge=0)
    tokens: dict[str, int] = Field(default_factory=dict)


Event = Annotated[
    CallStarted
    | TranscriptLine
    | ToolCalled
    | UsageReported
    | OutcomeSet
    | CallStatus
    | CallTransferred
    | AgentChanged
    | CallMetric
    | TurnMeasured
    | CallEnded
    | CallAnalyzed,
    Field(discriminator="type"),
]

EVENT_TYPES = {
    cls.model_fields["type"].default: cls
    for cls in (
        CallStarted,
        TranscriptLine,
        ToolCalled,
        UsageReported,
        OutcomeSet,
        CallStatus,
        CallTransferred,
        AgentChanged,
        CallMetric,
        TurnMeasured,
        CallEnded,
        CallAnalyzed,
    )
}

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: _Event) -> bytes:
    """Serialize an event for the bus."""
    return event.model_dump_json().encode()


def decode_event(data: bytes | str | dict[str, Any]) -> Event:
    """Parse and validate an event from the bus; raises ``pydantic.ValidationError``."""
    if isinstance(data, dict):
        return _adapter.validate_python(data)
    return _adapter.validate_json(data)


def event_schema() -> dict[str, Any]:
    """JSON Schema of every event, for documentation and other languages."""
    return _adapter.json_schema()

