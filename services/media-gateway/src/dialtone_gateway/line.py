"""The gateway's use of Twilio's REST API: the apology of last resort, and moving a call.

Closing the media socket does not end a Twilio call, and nothing on our side can speak without a
bridge. Twilio's REST API can: replacing the call's TwiML with ``<Say>`` then ``<Hangup/>`` ends the
stream, speaks the apology in Twilio's own voice and frees the line.

A draining gateway moves a call the same way: new TwiML, ``<Connect><Stream>`` to a fresh stream
URL. Twilio stops the old stream and opens the new one through the load balancer, which sends it
to a gateway that is not draining.
"""

from __future__ import annotations

import asyncio
import logging

from dialtone_common.twilio_rest import rest_client
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from dialtone_gateway.settings import GatewaySettings

log = logging.getLogger("dialtone.gateway.line")

MOVES_AT_ONCE = 20  # call updates in flight at once while a draining gateway moves its calls


def apology_twiml(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


class TwilioLine:
    """Twilio REST clients by account, made on first use and closed with the app."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._clients: dict[str, tuple[Client, object]] = {}
        self._moves = asyncio.Semaphore(MOVES_AT_ONCE)

    def _client(self, account_sid: str | None) -> Client | None:
        account = self._settings.twilio_account_sid or account_sid
        if not account:
            return None
        if account not in self._clients:
            self._clients[account] = rest_client(
                account, self._settings.twilio_auth_token.get_secret_value(), self._settings.twilio_api_base_url
            )
        return self._clients[account][0]

    async def move(self, call_sid: str, account_sid: str | None, twiml: str) -> str | None:
        """Give the call new TwiML (a ``<Connect><Stream>`` elsewhere). None once Twilio took it,
        else why not (the call goes on where it is)."""
        client = self._client(account_sid)
        if client is None:
            return "no Twilio account sid"
        try:
            async with self._moves, asyncio.timeout(5):
                await client.calls(call_sid).update_async(twiml=twiml)
            return None
        except TwilioRestException as exc:
            return f"Twilio refused the update: HTTP {exc.status} (code {exc.code})"
        except TimeoutError:
            return "Twilio did not answer the update within 5 s"
        except Exception as exc:  # network: the call stays on this gateway
            return f"could not reach Twilio: {type(exc).__name__}"

    async def apologise(self, call_sid: str, account_sid: str | None) -> bool:
        """Have Twilio say the apology and hang up. False if it could not be asked."""
        client = self._client(account_sid)
        if client is None:
            log.error("call %s: no Twilio account sid to hang up with", call_sid)
            return False
        try:
            async with asyncio.timeout(5):
                await client.calls(call_sid).update_async(twiml=apology_twiml(self._settings.apology))
            return True
        except TwilioRestException as exc:
            if exc.code == 20404:  # the call is already over
                return True
            log.error("call %s: Twilio refused the apology: %s", call_sid, exc)
        except Exception as exc:  # network, timeout: the caller still must not hang in silence
            log.error("call %s: could not reach Twilio to apologise: %s", call_sid, exc)
        return False

    async def close(self) -> None:
        for _, http in self._clients.values():
            await http.close()  # type: ignore[attr-defined]
        self._clients.clear()
