"""TwiML answers, built with the official SDK."""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse


def connect_stream(stream_url: str, parameters: dict[str, str]) -> str:
    """Connect the call to a bidirectional Media Stream. The URL takes no query string, so values
    travel as ``<Parameter>`` and come back in ``start.customParameters``. Nothing follows
    ``</Connect>``: when the stream ends the call ends, unless the bridge redirects it (transfer)."""
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        if value is not None:
            stream.parameter(name=name, value=value)
    return str(response)
