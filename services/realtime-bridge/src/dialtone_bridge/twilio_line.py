"""Twilio's REST API for the bridge: one client per bridge, shared by its calls.

Closing the media socket does not end a Twilio call, and a transfer replaces the call's TwiML with
a ``<Dial>``: both go through REST (the official async client).
"""

from __future__ import annotations

from dialtone_common.twilio_rest import rest_client
from twilio.base.exceptions import TwilioRestException

from dialtone_bridge.settings import BridgeSettings


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
