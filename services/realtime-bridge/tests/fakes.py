"""A fake ``CallSession`` for the conversation's unit tests: what ``Conversation`` and
``CallControl`` use of a session, recording what they send (each client event checked against
the SDK types, as the real API would) and the events they emit."""

from __future__ import annotations

import asyncio
import logging
import types

import orjson
from dialtone_bridge.agents import Agent
from dialtone_bridge.callcontrol import CallControl
from dialtone_bridge.conversation import Conversation
from dialtone_bridge.playout import Playout
from dialtone_bridge.realtime_engine import RealtimeConnection, parse
from dialtone_bridge.settings import DEFAULT_MODEL
from dialtone_bridge.turns import Turn, TurnLatency
from dialtone_proto.tools import ToolCallReply, ToolSpec
from dialtone_sim.oracle import check_client_event


class Events:
    def __init__(self) -> None:
        self.out: list[tuple[str, dict]] = []

    def emit(self, cls, **fields):
        self.out.append((cls.__name__, fields))


class Tools:
    def __init__(self, delay: float = 0.0, actions=()) -> None:
        self.delay, self.actions, self.calls = delay, list(actions), []

    async def catalog(self):
        return {"x": ToolSpec(name="x", description="x", parameters={"type": "object"}, timeout_s=5)}

    async def call(self, request, timeout_s=None):
        self.calls.append(request.name)
        await asyncio.sleep(self.delay)
        return ToolCallReply(ok=True, output={"ok": True}, actions=self.actions)


class RecordingConnection(RealtimeConnection):
    """The Realtime engine with its socket replaced by a list: every client event it would send
    is recorded, after the SDK oracle has checked it as the real API would."""

    def __init__(self) -> None:
        super().__init__("ws://unused", DEFAULT_MODEL, "t", None, logging.LoggerAdapter(logging.getLogger("test")))
        self.sent: list[dict] = []

    async def _send(self, event: str) -> bool:
        self.sent.append(orjson.loads(event))
        check_client_event(self.sent[-1])
        return True


async def feed(c: Conversation, raw: dict) -> None:
    """A Realtime server event, through the engine's edge, into the conversation."""
    if (event := parse(raw)) is not None:
        await c.on_event(event)


class FakeSession:
    """What ``Conversation`` and ``CallControl`` use of a ``CallSession``."""

    def __init__(self, agent: Agent, tools: Tools | None = None, filler_after_s: float = 1.5) -> None:
        self.log = logging.getLogger("test")
        self.call_id = "CA1"
        self.offer = types.SimpleNamespace(from_number="+1", to_number="+2", parameters={}, stream_sid="MZ",
                                           account_sid="AC", direction="inbound")
        settings = types.SimpleNamespace(filler_after_s=filler_after_s, openai_realtime_model=DEFAULT_MODEL,
                                         transcription_model="t", prices={})
        self.ctx = types.SimpleNamespace(settings=settings, tools=tools or Tools(), twilio=None, agents=None,
                                         bridge_id="bridge-test")
        self.events, self.playout, self.turns = Events(), Playout(), TurnLatency(on_measured=self._measured)
        self.turn_seconds: list[float] = []  # turn latencies, as the real session observes them
        self.ended, self.end_reason = asyncio.Event(), None
        self.holds = True
        self.model = RecordingConnection()
        self.sent = self.model.sent
        self.frames: list[tuple[str, object]] = []
        self.tasks: set[asyncio.Task] = set()
        self.conversation = Conversation(self, agent)
        self.control = CallControl(self, None)
        self.clock = types.SimpleNamespace(ms=lambda: asyncio.get_running_loop().time() * 1000)

    async def send_frame(self, kind, body=None, audio=b"") -> None:
        self.frames.append((kind.name, body))

    def spawn(self, coro, name):
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        return task

    async def still_holds(self) -> bool:
        return self.holds  # the call record still gives the call to this bridge

    def end(self, reason):
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    def _measured(self, turn: Turn) -> None:
        self.events.emit(type("TurnMeasured", (), {}), **{
            "turn": turn.n, "item_id": turn.item_id, "offset_ms": turn.offset_ms, "sent_ms": turn.sent_ms,
            "heard_ms": turn.heard_ms, "tool_ms": turn.tool_ms, "tools": turn.tools})  # fmt: skip

    def stream_ms(self, buffer_ms: float) -> float:
        """The model's input buffer is the stream here: the caller's audio from its start, no gap."""
        return float(buffer_ms)

    async def play(self, item_id, audio):
        self.frames.append(("AUDIO", (item_id, audio)))
        mark = self.playout.on_audio_sent(item_id, len(audio), self.clock.ms())
        if (latency := self.turns.audio_sent(item_id, mark, self.clock.ms())) is not None:
            self.turn_seconds.append(latency)
        self.frames.append(("MARK", mark))

    async def flush_audio(self, item_id):
        pass

    def drop_audio(self):
        pass

    def creates(self) -> list[dict]:
        return [e for e in self.sent if e["type"] == "response.create"]

    def lines(self) -> list[dict]:
        """The transcript lines emitted, in the order they were."""
        return [fields for name, fields in self.events.out if name == "TranscriptLine"]

    def heard(self) -> list[tuple[str, bytes]]:
        """Agent audio sent to the caller, item by item, in order."""
        return [body for kind, body in self.frames if kind == "AUDIO"]


def call_item(call_id="c1", status="completed"):
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": "x", "arguments": "{}",
            "status": status}


async def tool_response(c: Conversation, rid: str, status: str = "completed") -> None:
    await feed(c, {"type": "response.created", "response": {"id": rid}})
    await feed(c, {"type": "response.output_item.done", "item": call_item(status=status)})
    await feed(c, {"type": "response.done", "response": {"id": rid, "status": status, "output": [call_item(status=status)]}})


async def poll(condition, timeout=3.0):
    """Wait for ``condition`` with a deadline (the fake session signals nothing to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
