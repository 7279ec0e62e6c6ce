"""Control of the phone line: hanging up, transfers, idle prompts and call length limits.

Twilio's REST API (through the official async client) does what the media socket cannot: closing
the socket does not end a call, and a transfer replaces the call's TwiML with a ``<Dial>``. Without
Twilio credentials (a local simulator run) the bridge falls back to closing the stream.
"""

from __future__ import annotations

import asyncio
import logging

from dialtone_proto.events import CallStatus, CallTransferred
from dialtone_proto.frames import Kind
from dialtone_proto.tools import ToolAction
from twilio.twiml.voice_response import VoiceResponse

from dialtone_bridge.phase import REPLACED, Phase
from dialtone_bridge.roles import CallLine, Talk
from dialtone_bridge.twilio_line import TwilioControlFactory

log = logging.getLogger("dialtone.bridge.control")

GOODBYE_TIMEOUT_S = 30.0
TRANSFER_SETTLE_S = 0.5  # quiet this long before a transfer: words said with the tool call may follow it


class CallControl:
    """The line of one call. Owned by its session; its timers are the session's tasks.

    Args:
        line: the call's session.
        talk: the call's conversation.
        twilio: Twilio's REST API, or None (a local run: closing the stream ends the call).
    """

    def __init__(self, line: CallLine, talk: Talk, twilio: TwilioControlFactory | None) -> None:
        self.s, self.talk, self.twilio = line, talk, twilio
        self.phase = line.phase
        self.log = line.log
        self.caller_speaking = False
        self._released = False  # Twilio was asked to end or move the line (at most once)
        self._op: asyncio.Task | None = None  # a hang-up or transfer in flight
        self._idle_task: asyncio.Task | None = None
        self._prompts = 0
        self._limit_task: asyncio.Task | None = None

    # ---- timers --------------------------------------------------------------------------
    def start(self) -> None:
        limits = self.talk.agent.limits
        if limits.max_duration_s > 0:
            self._limit_task = self.s.spawn(self._limit(limits.max_duration_s), "max-duration")

    async def _limit(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.log.info("maximum call duration (%.0f s) reached", seconds)
        await self.say_goodbye("max_duration")

    def speech_started(self) -> None:
        """The caller spoke: they are not idle."""
        self.caller_speaking = True
        self._prompts = 0
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None

    def speech_stopped(self) -> None:
        self.caller_speaking = False

    async def playback_finished(self) -> None:
        """Everything the agent said has played at the caller, and no response is running."""
        if self.phase.phase is Phase.GOODBYE_SAID:
            await self.hang_up(self.phase.reason or "agent_ended")
            return
        if self.phase.leaving or self.caller_speaking:
            return  # (a caller who is talking is not idle; their turn will bring a response)
        limits = self.talk.agent.limits
        if limits.idle_prompt_s > 0 and self._idle_task is None:
            self._idle_task = self.s.spawn(self._idle(limits.idle_prompt_s), "idle")

    async def _idle(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._idle_task = None
        if self.talk.busy() or self.phase.leaving or self.caller_speaking:
            return
        agent = self.talk.agent
        if self._prompts >= agent.limits.idle_prompts:
            self.log.info("caller silent after %d prompts: ending the call", self._prompts)
            await self.say_goodbye("caller_idle")
            return
        self._prompts += 1
        self.log.info("caller silent for %.0f s: prompt %d", seconds, self._prompts)
        await self.talk.request_response(f'Say exactly: "{agent.idle_prompt}"', purpose="prompt")

    def _closing(self, reason: str) -> bool:
        """Into CLOSING: the goodbye is due. Whatever the model does, the line is freed: hang up
        if the goodbye never comes."""
        if not self.phase.close(reason):
            return False
        self.s.spawn(self._hang_up_anyway(GOODBYE_TIMEOUT_S), "hangup-fallback")
        return True

    async def _hang_up_anyway(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.log.warning("goodbye did not finish within %.0f s: hanging up", seconds)
        await self.hang_up(self.phase.reason or "agent_ended")

    async def say_goodbye(self, reason: str, text: str | None = None) -> None:
        """Have the agent say ``text`` (its goodbye by default), then hang up once it has played."""
        if not self._closing(reason):
            return
        words = text or self.talk.agent.goodbye
        await self.talk.request_response(f'Say exactly: "{words}"', purpose="goodbye", force=True)

    def goodbye_done(self) -> None:
        """The goodbye (the response asked for it, or the one that ended the call) has been said."""
        self.phase.goodbye_said()

    # ---- tool actions --------------------------------------------------------------------
    async def apply(self, action: ToolAction) -> None:
        if action.action == "end_call":
            self._closing("agent_ended")
            self.log.info("agent ends the call (%s); hanging up once the goodbye has played", action.detail)
        elif action.action == "transfer_call":
            await self.transfer(action.detail)

    async def transfer(self, reason: str | None) -> None:
        self._op = asyncio.current_task()
        agent = self.talk.agent
        target = agent.transfer_number
        if not target:
            self.log.warning("agent %s has no transfer_number: transfer refused", agent.name)
            return
        if not self.phase.transfer():
            return
        # Let what the agent is saying ("I'm transferring you now") finish: the redirect cuts the stream.
        await self.talk.wait_quiet(10.0, settle_s=TRANSFER_SETTLE_S)
        self.s.events.emit(CallTransferred, target=target, agent=agent.name)
        twiml = VoiceResponse()
        twiml.dial(target)
        if not await self._ours():
            return
        self._released = True
        if self.twilio is not None:
            try:
                await self.twilio.redirect(self.s.call_id, str(twiml))
            except Exception as exc:
                self.log.error("transfer to %s failed: %s", target, exc)
                self._released = False
                self.phase.transfer_failed()
                return
        self.log.info("transferred to %s (%s)", target, reason)
        self.s.events.emit(CallStatus, status="transferred", source="bridge")
        self.s.end("transferred")

    async def hang_up(self, reason: str) -> None:
        """End the call on Twilio's side (REST), then our side."""
        if self._released or not self.phase.hang_up(reason):
            return
        self._released, self._op = True, asyncio.current_task()
        if not await self._ours():
            return
        if self.twilio is not None:
            # Closing the media socket does not end a Twilio call: only REST does.
            try:
                await self.twilio.hang_up(self.s.call_id)
                self.log.info("call completed through the Twilio REST API (%s)", reason)
            except Exception as exc:
                self.log.error("REST hang-up failed (%s); closing the stream instead", exc)
        # Close our side too (without REST credentials this is what ends a local call).
        await self.s.send_frame(Kind.HANGUP, {"reason": reason})
        self.s.events.emit(CallStatus, status="completed", source="bridge")
        self.s.end(reason)

    async def _ours(self) -> bool:
        """Before acting on the phone line through Twilio: is the call still this bridge's?"""
        if await self.s.still_holds():
            return True
        self.log.warning("the call was given to another bridge: not touching its line")
        self.s.end(REPLACED)
        return False

    def stream_stopped(self, reason: str) -> None:
        """The media stream ended. If we are ending the call ourselves, the stop is its echo: let
        the hang-up or transfer finish and keep its reason."""
        op = self._op
        if op is not None and not op.done() and op is not asyncio.current_task():
            self.s.spawn(self._end_after(op, reason), "end-after")
        else:
            self.s.end(self.phase.end_reason_for(reason))

    async def _end_after(self, op: asyncio.Task, reason: str) -> None:
        await asyncio.wait([op], timeout=5)
        self.s.end(self.phase.end_reason_for(reason))

    async def release_line(self, reason: str) -> None:
        """The bridge is giving the call up (shutdown, failure): free the caller's line rather than
        leave them in silence."""
        if self._released:
            return
        self._released = True
        if self.twilio is not None:
            try:
                async with asyncio.timeout(5):
                    await self.twilio.hang_up(self.s.call_id)
            except Exception as exc:
                self.log.error("REST hang-up on %s failed: %s", reason, exc)
        await self.s.send_frame(Kind.HANGUP, {"reason": reason})
