"""A call's phase: one enum, changed only by the transitions below, each legal from the phases it
names. It replaces the flags that used to be spread over the session, the conversation and the call
control (``hangup_pending``, ``goodbye_said``, ``transferring``, ``ending``, ``ended``, ...)::

    TALKING ──close──▶ CLOSING ──goodbye_said──▶ GOODBYE_SAID
       │                  │                          │
       ├──transfer────────┴──────────────────────────┴──▶ TRANSFERRING ──transfer_failed──▶ (back)
       └──hang_up (from any of the above) ──▶ HANGING_UP
    any ──end──▶ ENDED

``CLOSING`` and ``GOODBYE_SAID`` carry why the call is to end (``reason``); ``HANGING_UP`` and
``TRANSFERRING`` carry the end reason the call will have, so the stream's stop that our own
hang-up or transfer causes is not mistaken for the caller hanging up.
"""

from __future__ import annotations

import asyncio
import enum

# Ends after which the caller may still be on the line: the bridge must free it.
LINE_STILL_OPEN = frozenset({
    "bridge_shutdown", "bridge_error", "stream_lost", "realtime_unavailable", "realtime_lost", "content_filter",
})
# The gateway gave the call to another bridge (this one was silent too long): it goes on there, so
# this bridge neither frees the line nor reports the call ended.
REPLACED = "bridge_replaced"
# This bridge is draining and the call outlasted its grace: it asked the gateway to offer the call
# to another bridge, which carries it on. Like REPLACED, the call is not over.
HANDED_OFF = "handed_off"
CALL_GOES_ON = frozenset({REPLACED, HANDED_OFF})
# The caller left (or the stream closed under them): agent audio still queued was never heard.
HUNG_UP = frozenset({"caller_hangup", "stream_closed"})


class Phase(enum.Enum):
    TALKING = "talking"  # the conversation goes on
    CLOSING = "closing"  # the agent is to say goodbye, then the call ends
    GOODBYE_SAID = "goodbye_said"  # the goodbye was said: hang up once it has played
    TRANSFERRING = "transferring"  # the line is being handed to another number
    HANGING_UP = "hanging_up"  # the call is being ended through Twilio
    ENDED = "ended"


class Activity(enum.Enum):
    """What the agent is doing, as the live view shows it."""

    LISTENING = "listening"
    SPEAKING = "speaking"
    TOOL = "tool"


class CallPhase:
    """The phase of one call and its transitions."""

    def __init__(self) -> None:
        self.phase = Phase.TALKING
        self.reason: str | None = None  # why the call is ending, once it is
        self.end_reason = "unknown"
        self.ended = asyncio.Event()  # for waiting on the end
        self._before_transfer: tuple[Phase, str | None] | None = None

    def __repr__(self) -> str:
        return f"CallPhase({self.phase.name}, {self.reason!r})"

    @property
    def is_ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def closing(self) -> bool:
        """A goodbye is due or said: the call ends once it has played."""
        return self.phase in (Phase.CLOSING, Phase.GOODBYE_SAID)

    @property
    def leaving(self) -> bool:
        """The call is on its way out (goodbye, transfer, hang-up or over): no idle prompt."""
        return self.phase is not Phase.TALKING

    @property
    def quiet(self) -> bool:
        """The model must not start talking again (after the goodbye, during a transfer or hang-up)."""
        return self.phase in (Phase.GOODBYE_SAID, Phase.TRANSFERRING, Phase.HANGING_UP, Phase.ENDED)

    def close(self, reason: str) -> bool:
        """TALKING -> CLOSING: the agent says goodbye, then the call ends for ``reason``."""
        if self.phase is not Phase.TALKING:
            return False
        self.phase, self.reason = Phase.CLOSING, reason
        return True

    def goodbye_said(self) -> None:
        """CLOSING -> GOODBYE_SAID (the goodbye was said, or given up on)."""
        if self.phase is Phase.CLOSING:
            self.phase = Phase.GOODBYE_SAID

    def transfer(self) -> bool:
        """TALKING, CLOSING or GOODBYE_SAID -> TRANSFERRING."""
        if self.phase not in (Phase.TALKING, Phase.CLOSING, Phase.GOODBYE_SAID):
            return False
        self._before_transfer = (self.phase, self.reason)
        self.phase, self.reason = Phase.TRANSFERRING, "transferred"
        return True

    def transfer_failed(self) -> None:
        """TRANSFERRING -> the phase it left: the call goes on where it was."""
        if self.phase is Phase.TRANSFERRING and self._before_transfer is not None:
            self.phase, self.reason = self._before_transfer
            self._before_transfer = None

    def hang_up(self, reason: str) -> bool:
        """Any live phase -> HANGING_UP for ``reason``; False if already hanging up or ended."""
        if self.phase in (Phase.HANGING_UP, Phase.ENDED):
            return False
        self.phase, self.reason = Phase.HANGING_UP, reason
        return True

    def end(self, reason: str) -> bool:
        """-> ENDED (once): the call is over on this bridge, for ``reason``."""
        if self.phase is Phase.ENDED:
            return False
        self.phase, self.end_reason = Phase.ENDED, reason
        self.ended.set()
        return True

    def end_reason_for(self, observed: str) -> str:
        """The end reason when the stream stops: ours (hang-up, transfer) if we caused it."""
        if self.phase in (Phase.HANGING_UP, Phase.TRANSFERRING) and self.reason:
            return self.reason
        return observed
