"""TwiML answers, built with the official SDK."""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse


def connect_stream(stream_url: str) -> str:
    """Connect the call to a bidirectional Media Stream at the call's own URL. No ``<Parameter>``
    is sent: the call's details stay server-side (the call record), since whatever comes back in
    ``start.customParameters`` is only as trustworthy as the socket it arrives on. Nothing follows
    ``</Connect>``: when the stream ends the call ends, unless it is redirected (transfer, apology)."""
    response = VoiceResponse()
    response.connect().stream(url=stream_url)
    return str(response)
