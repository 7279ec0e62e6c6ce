"""The one seam between a call and a voice model: what a model connection yields and what it takes.

A voice engine (OpenAI Realtime, ``realtime_engine.py``; OpenAI GPT-Live, ``live_engine.py``) is
an implementation of :class:`ModelConnection`. It turns the provider's JSON into the engine-neutral
events below at its edge, and the engine-neutral commands into the provider's JSON; nothing past it
sees provider JSON. Each agent chooses its engine (``engine`` in agent.toml).
The conversation (``conversation.py``) is written once against these types: turns, fillers, limits,
DTMF, goodbye, transfer, voicemail, handoff and recovery work the same on every engine.

Events carry the engine's own ids (``item_id`` for one piece of speech or text, ``reply_id`` for one
answer of the model) as opaque strings. Positions in the caller's audio (``audio_start_ms``,
``audio_end_ms``) are milliseconds into what this connection was given, which the session maps to
the stream's clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dialtone_proto.tools import ToolSpec

from dialtone_bridge.agents import Agent

ReplyStatus = Literal["completed", "cancelled", "failed", "incomplete"]


# ---- usage ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What one model answer (or transcription, or stretch of session) used, engine-neutrally:
    tokens by billing kind (``pricing.KINDS``: text_in, text_cached, audio_in, audio_cached,
    text_out, audio_out) and, for engines billed by time, seconds of session. ``model`` names the
    model that used it when that is not the connection's own (a backend model the engine delegates
    to); it is priced under that model."""

    tokens: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    model: str | None = None


# ---- what a connection yields ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    """The caller started speaking (the model's voice activity detection)."""

    item_id: str | None
    audio_start_ms: float | None


@dataclass(frozen=True, slots=True)
class CallerSpeechStopped:
    """The caller stopped speaking: a turn begins. ``ago_ms``: how long before this event they
    stopped, for an engine that learns of it late (GPT-Live: a pause in the caller's transcript);
    turn latency counts from then."""

    audio_end_ms: float | None
    ago_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemPlaced:
    """An item took its place in the conversation (order of lines, whatever order texts arrive in)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class CallerText:
    """What the caller said in ``item_id``, or why there is no text (``failure``)."""

    item_id: str
    text: str
    failure: str | None = None
    usage: Usage | None = None  # of the transcription, when billed apart


@dataclass(frozen=True, slots=True)
class ReplyStarted:
    reply_id: str


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Audio of the agent's ``item_id`` (mu-law, 8 kHz) for the caller."""

    reply_id: str
    item_id: str
    audio: bytes


@dataclass(frozen=True, slots=True)
class AgentAudioDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class TextSpan:
    """Where a stretch of an agent's text is spoken: ``text[:end]`` ends with it, and its audio runs
    from ``start_ms`` to ``end_ms`` of the item's audio."""

    end: int
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class AgentText:
    """The whole text of what the agent said (or began to say) in ``item_id``; ``timing`` places
    its stretches in the item's audio when the engine's transcript is timed (GPT-Live's is, the
    Realtime API's is not)."""

    item_id: str
    text: str
    timing: tuple[TextSpan, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """The model asks for a tool; ``arguments`` is its JSON text, final."""

    call_id: str
    name: str
    arguments: str
    item_id: str | None


@dataclass(frozen=True, slots=True)
class ReplyItem:
    """One output of a finished reply, in order: something said, or a tool call."""

    kind: Literal["message", "function_call"]
    item_id: str
    status: str | None = None
    text: str = ""  # a message's text as the reply carries it (the transcript may come apart)
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    """A reply ended: completed, cut (``cancelled``), stopped early (``incomplete``) or ``failed``."""

    reply_id: str
    status: ReplyStatus
    items: tuple[ReplyItem, ...] = ()
    usage: Usage | None = None
    reason: str | None = None  # why incomplete
    error_code: str | None = None  # why failed
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class UsageUpdated:
    """Usage that belongs to no one reply: a stretch of session time (an engine billed by the
    second), or a backend model's tokens. ``ref`` names it in the call's usage records."""

    ref: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class EngineError:
    """The engine refused or failed something; ``request_id`` names our request when it is one."""

    code: str
    message: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimits:
    remaining: dict[str, int]


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is gone; ``cause`` says why (``session_expired``, ``closed 1006``, ...)."""

    cause: str


EngineEvent = (
    CallerSpeechStarted | CallerSpeechStopped | ItemPlaced | CallerText | ReplyStarted | AgentAudio
    | AgentAudioDone | AgentText | ToolCallRequested | ReplyFinished | UsageUpdated | EngineError | RateLimits
    | Closed
)


# ---- what a connection takes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """How the model should behave for an agent: its instructions, tools and voice."""

    agent: Agent
    tools: Sequence[ToolSpec]
    voice: str


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """A line of the conversation so far, for a new connection that must remember it."""

    role: Literal["caller", "agent"]
    text: str


class EngineUnavailable(RuntimeError):
    """The model could not be reached or refused the session."""


class ModelConnection(Protocol):
    """One call's connection to a voice model."""

    model: str
    transcription_model: str

    async def open(self, spec: SessionSpec, history: Sequence[HistoryLine] = ()) -> None:
        """Connect and configure; with ``history``, the conversation so far (a lost connection).
        Raises :class:`EngineUnavailable`."""

    def events(self) -> AsyncIterator[EngineEvent]:
        """The connection's events until it closes (the last one is :class:`Closed`)."""

    async def append_audio(self, audio: bytes) -> bool:
        """Caller audio (mu-law, 8 kHz); False when the connection cannot take it now."""

    async def reply(self, request_id: str, instructions: str | None, *, out_of_band: bool = False) -> bool:
        """Ask the model to speak (``instructions`` steer this reply: greeting, filler, goodbye);
        ``out_of_band`` keeps it out of what the model remembers (a filler)."""

    async def cancel_reply(self) -> bool:
        """Stop the reply being generated."""

    async def tool_result(self, call_id: str, output: Any) -> bool:
        """A tool's result for the model (the next :meth:`reply` lets it answer with it)."""

    async def heard(self, item_id: str, audio_ms: int, request_id: str) -> bool:
        """The caller heard ``item_id`` only up to ``audio_ms``: the model forgets the rest."""

    async def forget(self, item_id: str) -> bool:
        """The caller heard none of ``item_id``: take it out of the conversation."""

    async def caller_text(self, item_id: str, text: str) -> bool:
        """Something the caller did that the model should know as text (a key pressed)."""

    async def update(self, spec: SessionSpec) -> bool:
        """New instructions and tools (a handoff); audio formats and voice stay as they are."""

    async def close(self) -> None:
        """Close at once: an open session keeps billing."""
