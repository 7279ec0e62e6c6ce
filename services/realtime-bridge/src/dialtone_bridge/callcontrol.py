"""Control of the phone line: hanging up, transfers, idle prompts and call length limits.

Twilio's REST API (through the official async client) does what the media socket cannot: closing
the socket does not end a call, and a transfer replaces the call's TwiML with a ``<Dial>``. Without
Twilio credentials (a local simulator run) the bridge falls back to closing the stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dialtone_common.twilio_rest import rest_client
from dialtone_proto.events import CallStatus, CallTransferred
from dialtone_proto.frames import Kind
from dialtone_proto.tools import ToolAction
from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import VoiceResponse

from dialtone_bridge.settings import BridgeSettings

if TYPE_CHECKING:
    from dialtone_bridge.session import CallSession

log = logging.getLogger("dialtone.bridge.control")

GOODBYE_TIMEOUT_S = 30.0


class TwilioControlFactory:
    """One Twilio REST client per bridge, shared by its calls."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.client, self._http = rest_client(
            settings.twilio_account_sid or "",
            settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else "",
            settings.twilio_api_base_url,
        )

    async def hang_up(self, call_sid: str) -> None:
        try:
            await self.client.calls(call_sid).update_async(status="completed")
        except TwilioRestException as exc:
            if exc.code != 20404:  # already over: nothing to end
                raise

    async def redirect(self, call_sid: str, twiml: str) -> None:
        await self.client.calls(call_sid).update_async(twiml=twiml)

    async def close(self) -> None:
        await self._http.close()


class CallControl:
    """The line of one call. Owned by its ``CallSession``; its timers are the session's tasks."""

    def __init__(self, session: CallSession, twilio: TwilioControlFactory | None) -> None:
        self.s, self.twilio = session, twilio
        self.log = session.log
        self.hangup_pending: str | None = None  # why we will hang up once the goodbye has played
        self.goodbye_said = False
        self.transferring = False
        self.caller_speaking = False
        self.ending: str | None = None  # set before we end the call through Twilio
        self.hung_up = False
        self._op: asyncio.Task | None = None  # a hang-up or transfer in flight
        self._idle_task: asyncio.Task | None = None
        self._prompts = 0
        self._limit_task: asyncio.Task | None = None

    # ---- timers --------------------------------------------------------------------------
    def start(self) -> None:
        limits = self.s.conversation.agent.limits
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
        if self.hangup_pending:
            if self.goodbye_said:
                await self.hang_up(self.hangup_pending)
            return
        if self.transferring or self.s.ended.is_set() or self.caller_speaking:
            return  # (a caller who is talking is not idle; their turn will bring a response)
        limits = self.s.conversation.agent.limits
        if limits.idle_prompt_s > 0 and self._idle_task is None:
            self._idle_task = self.s.spawn(self._idle(limits.idle_prompt_s), "idle")

    async def _idle(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._idle_task = None
        if self.s.conversation.busy() or self.hangup_pending or self.caller_speaking:
            return
        agent = self.s.conversation.agent
        if self._prompts >= agent.limits.idle_prompts:
            self.log.info("caller silent after %d prompts: ending the call", self._prompts)
            await self.say_goodbye("caller_idle")
            return
        self._prompts += 1
        self.log.info("caller silent for %.0f s: prompt %d", seconds, self._prompts)
        await self.s.conversation.request_response(f'Say exactly: "{agent.idle_prompt}"', purpose="prompt")

    def _pending(self, reason: str) -> None:
        self.hangup_pending, self.goodbye_said = reason, False
        # Whatever the model does, the line is freed: hang up if the goodbye never comes.
        self.s.spawn(self._hang_up_anyway(GOODBYE_TIMEOUT_S), "hangup-fallback")

    async def _hang_up_anyway(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.log.warning("goodbye did not finish within %.0f s: hanging up", seconds)
        await self.hang_up(self.hangup_pending or "agent_ended")

    async def say_goodbye(self, reason: str, text: str | None = None) -> None:
        """Have the agent say ``text`` (its goodbye by default), then hang up once it has played."""
        if self.hangup_pending or self.s.ended.is_set():
            return
        self._pending(reason)
        words = text or self.s.conversation.agent.goodbye
        await self.s.conversation.request_response(f'Say exactly: "{words}"', purpose="goodbye", force=True)

    def goodbye_done(self) -> None:
        """The goodbye (the response asked for it, or the one that ended the call) has been said."""
        if self.hangup_pending:
            self.goodbye_said = True

    # ---- tool actions --------------------------------------------------------------------
    def suppress_response(self) -> bool:
        """After the goodbye or during a transfer the model must not start talking again."""
        return (bool(self.hangup_pending) and self.goodbye_said) or self.transferring

    async def apply(self, action: ToolAction) -> None:
        if action.action == "end_call":
            if not self.hangup_pending:
                self._pending("agent_ended")
            self.log.info("agent ends the call (%s); hanging up once the goodbye has played", action.detail)
        elif action.action == "transfer_call":
            await self.transfer(action.detail)

    async def transfer(self, reason: str | None) -> None:
        self._op = asyncio.current_task()
        agent = self.s.conversation.agent
        target = agent.transfer_number
        if not target:
            self.log.warning("agent %s has no transfer_number: transfer refused", agent.name)
            return
        self.transferring = True
        # Let what the agent is saying ("I'm transferring you now") finish: the redirect cuts the stream.
        await self.s.conversation.wait_quiet(10.0)
        self.s.events.emit(CallTransferred, target=target, agent=agent.name)
        twiml = VoiceResponse()
        twiml.dial(target)
        self.ending = "transferred"
        if not await self._ours():
            return
        if self.twilio is not None:
            try:
                await self.twilio.redirect(self.s.call_id, str(twiml))
            except Exception as exc:
                self.log.error("transfer to %s failed: %s", target, exc)
                self.transferring, self.ending = False, None
                return
        self.log.info("transferred to %s (%s)", target, reason)
        self.s.events.emit(CallStatus, status="transferred", source="bridge")
        self.s.end("transferred")

    async def hang_up(self, reason: str) -> None:
        """End the call on Twilio's side (REST), then our side."""
        if self.s.ended.is_set() or self.hung_up:
            return
        self.hung_up, self.ending, self._op = True, reason, asyncio.current_task()
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
        from dialtone_bridge.session import REPLACED

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
            self.s.end(self.ending or reason)

    async def _end_after(self, op: asyncio.Task, reason: str) -> None:
        await asyncio.wait([op], timeout=5)
        self.s.end(self.ending or reason)

    async def release_line(self, reason: str) -> None:
        """The bridge is giving the call up (shutdown, failure): free the caller's line rather than
        leave them in silence."""
        if self.hung_up or self.transferring:
            return
        self.hung_up = True
        if self.twilio is not None:
            try:
                async with asyncio.timeout(5):
                    await self.twilio.hang_up(self.s.call_id)
            except Exception as exc:
                self.log.error("REST hang-up on %s failed: %s", reason, exc)
        await self.s.send_frame(Kind.HANGUP, {"reason": reason})
