"""Taking over a call whose bridge was lost: the conversation so far, from the call's events.

A bridge publishes every transcript line, tool call, outcome and handoff to JetStream as it happens,
so the events already on the stream are the conversation. When the gateway re-offers a call (its
bridge fell silent), the bridge that takes it reads them back with an ordered consumer and gives the
new model session the same agent, the same lines and the same outcome; the caller goes on talking
to an agent that remembers what was said.

Events still queued in the lost bridge's memory are lost with it: at most the line being spoken.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import nats.errors
import nats.js.errors
from dialtone_proto import STREAM_NAME, subjects
from dialtone_proto.events import (
    AgentChanged,
    CallEnded,
    CallStarted,
    Event,
    OutcomeSet,
    ToolCalled,
    TranscriptLine,
    decode_event,
)
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

log = logging.getLogger("dialtone.bridge.recovery")

READ_TIMEOUT_S = 0.5  # the stream answers in milliseconds; this only bounds an empty read


@dataclass
class RestoredLine:
    seq: int
    role: str
    text: str


@dataclass
class Restored:
    """What a call's events say about its conversation so far."""

    agent: str
    started_at: datetime
    lines: list[RestoredLine] = field(default_factory=list)
    next_seq: int = 0
    outcome: str | None = None
    ended: bool = False
    events: int = 0


async def load(js: JetStreamContext, call_id: str, limit: int = 5000) -> Restored | None:
    """Read ``call_id``'s events. None if the call never started (no ``call.started``)."""
    try:
        await js.get_last_msg(STREAM_NAME, subjects.event(call_id, "call.started"))
    except nats.js.errors.NotFoundError:
        return None  # nothing to restore: answered at once, not after an empty read
    subject = f"{subjects.PREFIX}.events.{subjects.check_call_id(call_id)}.*"
    sub = await js.subscribe(subject, stream=STREAM_NAME, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list[Event] = []
    try:
        while len(events) < limit:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except nats.errors.TimeoutError:
                break
            try:
                events.append(decode_event(msg.data))
            except ValidationError:
                log.warning("call %s: unreadable event on %s skipped", call_id, msg.subject)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return restore(events)


def restore(events: list) -> Restored | None:
    """The conversation state the events describe (pure, so the rules are unit-tested)."""
    started = next((e for e in events if isinstance(e, CallStarted)), None)
    if started is None:
        return None
    state = Restored(agent=started.agent, started_at=started.at, events=len(events))
    lines: dict[str, TranscriptLine] = {}
    seqs = [-1]
    for e in sorted(events, key=lambda e: e.at):
        if isinstance(e, TranscriptLine):
            # A line may be republished (same item, cut by a barge-in): the highest revision wins.
            if e.item_id not in lines or e.rev >= lines[e.item_id].rev:
                lines[e.item_id] = e
            seqs.append(e.seq)
        elif isinstance(e, ToolCalled):
            seqs.append(e.seq)
        elif isinstance(e, AgentChanged):
            state.agent = e.to_agent
        elif isinstance(e, OutcomeSet):
            state.outcome = e.outcome
        elif isinstance(e, CallEnded):
            state.ended = True
    ordered = sorted(lines.values(), key=lambda line: (line.seq, line.at))
    state.lines = [RestoredLine(line.seq, line.role, line.text) for line in ordered]
    state.next_seq = max(seqs) + 1
    return state
