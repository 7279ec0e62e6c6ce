"""What the three objects of a call need of each other, as small protocols.

A call is a :class:`~dialtone_bridge.session.CallSession` (the line: bus, model connection, audio,
tasks), a :class:`~dialtone_bridge.conversation.Conversation` (turns, tools, transcript) and a
:class:`~dialtone_bridge.callcontrol.CallControl` (goodbye, hang-up, transfer, timers). Each knows
the others only through these protocols, and the call's phase (``phase.py``) is the one state they
share, so neither module imports the session (no import circle) and none reaches into another's
attributes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from dialtone_proto import CallOffer
from dialtone_proto.frames import Kind
from dialtone_proto.tools import ToolAction

from dialtone_bridge.agents import Agent
from dialtone_bridge.context import BridgeContext
from dialtone_bridge.engine import ModelConnection
from dialtone_bridge.phase import CallPhase
from dialtone_bridge.playout import Playout
from dialtone_bridge.publisher import EventPublisher
from dialtone_bridge.responses import Purpose
from dialtone_bridge.turns import TurnLatency


class Clock(Protocol):
    def ms(self) -> float:
        """Milliseconds since the call started on this bridge."""
        ...


class CallLine(Protocol):
    """What the conversation and the call control use of the call's session."""

    @property
    def call_id(self) -> str: ...

    @property
    def offer(self) -> CallOffer: ...

    @property
    def ctx(self) -> BridgeContext: ...

    @property
    def log(self) -> logging.LoggerAdapter: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def events(self) -> EventPublisher: ...

    @property
    def playout(self) -> Playout: ...

    @property
    def turns(self) -> TurnLatency: ...

    @property
    def model(self) -> ModelConnection: ...

    @property
    def phase(self) -> CallPhase: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task: ...

    async def play(self, item_id: str, audio: bytes) -> None: ...

    async def flush_audio(self, item_id: str) -> None: ...

    def drop_audio(self) -> None: ...

    async def send_frame(self, kind: Kind, body: dict[str, Any] | None = None, audio: bytes = b"") -> None: ...

    async def still_holds(self) -> bool: ...

    def stream_ms(self, buffer_ms: float) -> float: ...

    def end(self, reason: str) -> None: ...

    async def switch_engine(self) -> None:
        """The conversation's agent changed engine: a new connection with the conversation so far."""
        ...


class Talk(Protocol):
    """What the call control uses of the conversation."""

    agent: Agent

    def busy(self) -> bool: ...

    async def wait_quiet(self, timeout: float, settle_s: float = 0.0) -> None: ...

    async def request_response(
        self, instructions: str | None = None, *, purpose: Purpose = "reply", force: bool = False
    ) -> None: ...


class Control(Protocol):
    """What the conversation uses of the call control."""

    def speech_started(self) -> None: ...

    def speech_stopped(self) -> None: ...

    async def say_goodbye(self, reason: str, text: str | None = None) -> None: ...

    def goodbye_done(self) -> None: ...

    async def apply(self, action: ToolAction) -> None: ...

    async def playback_finished(self) -> None: ...

    async def hang_up(self, reason: str) -> None: ...
