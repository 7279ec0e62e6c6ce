"""Control of the phone line: hanging up, transfers, idle prompts and call length limits.

Twilio's REST API (through the official async client) does what the media socket cannot: closing
the socket does not end a call, and a transfer replaces the call's TwiML with a ``<Dial>``. Without
Twilio credentials (a local simulator run) the bridge falls back to closing the stream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import VoiceResponse

from dialtone_bridge.settings import BridgeSettings
from dialtone_proto.events import CallStatus, CallTransferred
from dialtone_proto.frames import Kind
from dialtone_proto.tools import ToolAction

if TYPE_CHECKING:
    from twilio.rest import Client

    from dialtone_bridge.session import CallSession

log = logging.getLogger("dialtone.bridge.control")


class TwilioControlFactory:
    """One Twilio REST client per bridge, shared by its calls."""

    def __init__(self, settings: BridgeSettings) -> None:
        import warnings

        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        self._http = AsyncTwilioHttpClient()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.client: Client = Client(
                settings.twilio_account_sid,
                settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None,
                http_client=self._http,
            )
        if settings.twilio_api_base_url:
            self.client.api.base_url = settings.twilio_api_base_url.rstrip("/")

    async def hang_up(self, call_sid: str) -> None:
        try:
            await self.client.calls(call_sid).update_async(status="completed")
        except TwilioRestException as exc:
            if exc.code != 20404:  # already over: nothing to end
                raise

    async def redirect(self, call_sid: str, twiml: str) -> None:
        await self.client.calls(call_sid).update_async(twiml=twiml)

    async def close(self) -> None:
        session = getattr(self._http, "session", None)
        if session is not None:
            await session.close()


class CallControl:
    """The line of one call. Owned by its ``CallSession``; its timers are the session's tasks."""

    def __init__(self, session: CallSession, twilio: TwilioControlFactory | None) -> None:
        self.s, self.twilio = session, twilio
        self.log = session.log
        self.hangup_pending: str | None = None  # reason, once the agent has said goodbye
        self.transferring = False
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
        self._prompts = 0
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None

    async def playback_finished(self) -> None:
        """Everything the agent said has played at the caller."""
        if self.hangup_pending:
            await self.hang_up(self.hangup_pending)
            return
        if self.transferring or self.s.ended.is_set():
            return
        limits = self.s.conversation.agent.limits
        if limits.idle_prompt_s > 0 and self._idle_task is None:
            self._idle_task = self.s.spawn(self._idle(limits.idle_prompt_s), "idle")

    async def _idle(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._idle_task = None
        if self.s.conversation.busy():
            return
        agent = self.s.conversation.agent
        if self._prompts >= agent.limits.idle_prompts:
            self.log.info("caller silent after %d prompts: ending the call", self._prompts)
            await self.say_goodbye("caller_idle")
            return
        self._prompts += 1
        self.log.info("caller silent for %.0f s: prompt %d", seconds, self._prompts)
        await self.s.conversation.request_response(f'Say exactly: "{agent.idle_prompt}"')

    async def say_goodbye(self, reason: str) -> None:
        """Have the agent say its goodbye, then hang up once it has played."""
        if self.hangup_pending or self.s.ended.is_set():
            return
        self.hangup_pending = reason
        await self.s.conversation.request_response(f'Say exactly: "{self.s.conversation.agent.goodbye}"',
                                                   force=True)

    # ---- tool actions --------------------------------------------------------------------
    def suppress_response(self) -> bool:
        """After end_call or a transfer the model must not start talking again."""
        return bool(self.hangup_pending) or self.transferring

    async def apply(self, action: ToolAction) -> None:
        if action.action == "end_call":
            self.hangup_pending = "agent_ended"
            self.log.info("agent ends the call (%s); hanging up after the goodbye plays", action.detail)
            if not self.s.playout.playing and not self.s.conversation.speaking():
                await self.hang_up("agent_ended")
        elif action.action == "transfer_call":
            await self.transfer(action.detail)

    async def transfer(self, reason: str | None) -> None:
        agent = self.s.conversation.agent
        target = agent.transfer_number
        if not target:
            self.log.warning("agent %s has no transfer_number: transfer refused", agent.name)
            return
        self.transferring = True
        self.s.events.emit(CallTransferred, target=target, agent=agent.name)
        twiml = VoiceResponse()
        twiml.dial(target)
        if self.twilio is not None:
            try:
                await self.twilio.redirect(self.s.call_id, str(twiml))
            except Exception as exc:
                self.log.error("transfer to %s failed: %s", target, exc)
                self.transferring = False
                return
        self.log.info("transferred to %s (%s)", target, reason)
        self.s.events.emit(CallStatus, status="transferred", source="bridge")
        self.s.end("transferred")

    async def hang_up(self, reason: str) -> None:
        """End the call on Twilio's side (REST), then our side."""
        if self.s.ended.is_set():
            return
        if self.twilio is not None:
            try:
                await self.twilio.hang_up(self.s.call_id)
            except Exception as exc:
                self.log.error("REST hang-up failed (%s); closing the stream instead", exc)
                await self.s.send_frame(Kind.HANGUP, {"reason": reason})
        else:
            await self.s.send_frame(Kind.HANGUP, {"reason": reason})
        self.s.events.emit(CallStatus, status="completed", source="bridge")
        self.s.end(reason)
