"""Turn latency, as peers define it: from the moment the caller stopped speaking (the model's
``input_audio_buffer.speech_stopped``, on the bridge's clock) to the first audio of the agent's
reply sent towards Twilio; and the same turn to the first of that audio the caller heard (the mark
sent behind it echoed back by Twilio).

A turn starts at ``speech_stopped`` and is abandoned when the caller speaks again before the reply
(``speech_started``) or when what the agent says next is not a reply (an idle prompt). The greeting
is no turn: nothing was said before it.
"""

from __future__ import annotations


class TurnLatency:
    """The turn of one call. Times are the call clock's milliseconds; latencies are seconds."""

    def __init__(self) -> None:
        self._stopped: float | None = None  # the caller stopped speaking; no reply audio sent yet
        self._reply: str | None = None  # the item whose audio answers the turn
        self._heard: tuple[str, float] | None = None  # (mark behind the reply's first audio, stopped)

    def speech_stopped(self, now_ms: float) -> None:
        self._stopped, self._reply, self._heard = now_ms, None, None

    def speech_started(self) -> None:
        """The caller speaks (again): a turn not yet answered is not over, a reply not yet heard
        is being talked over."""
        self._stopped, self._reply, self._heard = None, None, None

    def reply_audio(self, item_id: str, *, reply: bool) -> None:
        """The model's audio for ``item_id`` arrives; ``reply`` is False for speech that answers no
        turn (an idle prompt), which abandons it."""
        if self._stopped is None or self._reply is not None:
            return
        if reply:
            self._reply = item_id
        else:
            self._stopped = None

    def audio_sent(self, item_id: str, mark: str, now_ms: float) -> float | None:
        """Audio of ``item_id`` went to the gateway, followed by ``mark``: the turn latency, when
        this is the reply's first audio."""
        if self._stopped is None or self._reply != item_id:
            return None
        stopped, self._stopped, self._reply = self._stopped, None, None
        self._heard = (mark, stopped)
        return (now_ms - stopped) / 1000

    def mark_echoed(self, mark: str, now_ms: float) -> float | None:
        """Twilio echoed ``mark``: the heard latency, when it is the mark behind the reply's first audio."""
        if self._heard is None or self._heard[0] != mark:
            return None
        stopped, self._heard = self._heard[1], None
        return (now_ms - stopped) / 1000
