"""Turn latency, as peers define it: from the moment the caller stopped speaking (the model's
``input_audio_buffer.speech_stopped``, on the bridge's clock) to the first audio of the agent's
reply sent towards Twilio; and the same turn to the first of that audio the caller heard (the mark
sent behind it echoed back by Twilio).

By stage: caller stopped -> the model's first audio of the reply received (``received_ms``: the
model's share) -> sent towards Twilio (``sent_ms``; ``sent_ms - received_ms`` is the platform's
own share in the bridge) -> heard (``heard_ms``: the gateway, the network and Twilio's playout).

A turn starts at ``speech_stopped`` and is abandoned when the caller speaks again before the reply
(``speech_started``) or when what the agent says next is not a reply (an idle prompt). The greeting
is no turn: nothing was said before it. The first audio of a reply may be a filler, said while a
slow tool runs: it is what the caller hears first.

Each answered turn is also a record (:class:`Turn`, the ``turn.measured`` event): its latencies and
the time tools ran within it (from ``speech_stopped`` to the first audio sent; overlapping tool
calls count once). It is handed to ``on_measured`` once the caller heard the reply, or talked over
it before hearing any (then ``heard_ms`` is None), or the call ended first (:meth:`close`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Turn:
    n: int  # the turn's number in this bridge's part of the call, from 0
    item_id: str
    offset_ms: float | None  # where the caller stopped, on the stream clock
    sent_ms: float
    heard_ms: float | None
    tool_ms: float
    tools: int
    received_ms: float | None = None  # the reply's first audio from the model


class TurnLatency:
    """The turn of one call. Times are the call clock's milliseconds; latencies are seconds."""

    def __init__(self, on_measured: Callable[[Turn], None] | None = None) -> None:
        self.on_measured = on_measured
        self._stopped: float | None = None  # the caller stopped speaking; no reply audio sent yet
        self._offset: float | None = None
        self._reply: str | None = None  # the item whose audio answers the turn
        self._received: float | None = None  # when the model's first audio of it arrived
        self._heard: tuple[str, float] | None = None  # (mark behind the reply's first audio, stopped)
        self._measured: Turn | None = None  # sent, waiting to be heard
        self._n = 0
        self._running = 0  # tool calls running now
        self._since = 0.0  # when tools last started running (0 -> 1)
        self._tool_ms = 0.0  # tool time within the open turn
        self._tools = 0

    def speech_stopped(self, now_ms: float, offset_ms: float | None = None) -> None:
        self._flush()
        self._stopped, self._reply, self._heard, self._offset = now_ms, None, None, offset_ms
        self._tool_ms, self._tools = 0.0, 0

    def speech_started(self) -> None:
        """The caller speaks (again): a turn not yet answered is not over, a reply not yet heard
        is being talked over."""
        self._flush()
        self._stopped, self._reply, self._heard = None, None, None

    def tool_started(self, now_ms: float) -> None:
        self._running += 1
        if self._running == 1:
            self._since = now_ms
        if self._stopped is not None:
            self._tools += 1

    def tool_finished(self, now_ms: float) -> None:
        if self._running == 1:
            self._count_tools(now_ms)
        self._running = max(0, self._running - 1)

    def _count_tools(self, now_ms: float) -> None:
        """Add the time tools have been running, within the open turn, up to ``now_ms``."""
        if self._running and self._stopped is not None:
            self._tool_ms += max(0.0, now_ms - max(self._since, self._stopped))
            self._since = now_ms

    def reply_audio(self, item_id: str, *, reply: bool, now_ms: float | None = None) -> None:
        """The model's audio for ``item_id`` arrives (at ``now_ms``); ``reply`` is False for speech
        that answers no turn (an idle prompt), which abandons it."""
        if self._stopped is None or self._reply is not None:
            return
        if reply:
            self._reply, self._received = item_id, now_ms
        else:
            self._stopped = None

    def audio_sent(self, item_id: str, mark: str, now_ms: float) -> float | None:
        """Audio of ``item_id`` went to the gateway, followed by ``mark``: the turn latency, when
        this is the reply's first audio."""
        if self._stopped is None or self._reply != item_id:
            return None
        self._count_tools(now_ms)
        stopped, self._stopped, self._reply = self._stopped, None, None
        self._heard = (mark, stopped)
        received = None if self._received is None else round(max(0.0, self._received - stopped), 1)
        self._measured = Turn(self._n, item_id, self._offset, round(now_ms - stopped, 1), None,
                              round(self._tool_ms, 1), self._tools, received)  # fmt: skip
        self._n += 1
        return (now_ms - stopped) / 1000

    def mark_echoed(self, mark: str, now_ms: float) -> float | None:
        """Twilio echoed ``mark``: the heard latency, when it is the mark behind the reply's first audio."""
        if self._heard is None or self._heard[0] != mark:
            return None
        stopped, self._heard = self._heard[1], None
        if self._measured is not None:
            self._measured.heard_ms = round(now_ms - stopped, 1)
            self._flush()
        return (now_ms - stopped) / 1000

    def resent(self, item_id: str, mark: str) -> None:
        """The call's stream moved before the reply's first audio was heard: Twilio dropped it with
        its mark, and it is sent again to the new stream, followed by ``mark``."""
        if self._heard is not None and self._measured is not None and self._measured.item_id == item_id:
            self._heard = (mark, self._heard[1])

    def close(self) -> None:
        """The call is over: a reply sent but not yet heard is reported as such."""
        self._flush()

    def _flush(self) -> None:
        measured, self._measured = self._measured, None
        if measured is not None and self.on_measured is not None:
            self.on_measured(measured)
