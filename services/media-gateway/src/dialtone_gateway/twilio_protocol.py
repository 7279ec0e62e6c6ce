"""The Twilio Media Streams edge: Twilio JSON in, Dialtone's small types out, and back.

Nothing past this module sees Twilio's JSON. Every way a message can be wrong raises
``BadMessage`` with a short ``reason`` that becomes a metric label.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import orjson


class BadMessage(ValueError):
    """A Media Streams message we cannot use. ``reason`` is a stable metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True)
class Connected:
    pass


@dataclass(slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str | None
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Media:
    timestamp: int
    payload: bytes


@dataclass(slots=True)
class Mark:
    name: str


@dataclass(slots=True)
class Dtmf:
    digit: str


@dataclass(slots=True)
class Stop:
    pass


Inbound = Connected | Start | Media | Mark | Dtmf | Stop
# Twilio sends 20 ms (160 bytes) per message; a second of audio in one message is not Twilio. The cap
# also bounds the audio held per call while a bridge claims it.
MAX_MEDIA_BYTES = 8000
_DIGITS = set("0123456789*#ABCDabcd")


def parse(text: str | bytes) -> Inbound:
    """Turn one Twilio message into an ``Inbound``; raise ``BadMessage`` otherwise."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadMessage("bad_json", str(exc)) from None
    if not isinstance(msg, dict):
        raise BadMessage("bad_json", "message is not an object")
    event = msg.get("event")
    try:
        if event == "media":
            media = msg["media"]
            if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                raise BadMessage("bad_field", f"unexpected track {media.get('track')!r}")
            payload = base64.b64decode(media["payload"], validate=True)
            if len(payload) > MAX_MEDIA_BYTES:
                raise BadMessage("oversize_media", f"{len(payload)} bytes of audio in one message")
            return Media(int(media["timestamp"]), payload)
        if event == "mark":
            return Mark(str(msg["mark"]["name"]))
        if event == "start":
            start = msg["start"]
            fmt = start.get("mediaFormat") or {}
            if fmt and (fmt.get("encoding") != "audio/x-mulaw" or int(fmt.get("sampleRate", 8000)) != 8000):
                raise BadMessage("bad_format", f"unsupported media format {fmt}")
            params = start.get("customParameters") or {}
            if not isinstance(params, dict):
                raise BadMessage("bad_field", "customParameters is not an object")
            return Start(
                stream_sid=str(start.get("streamSid") or msg["streamSid"]),
                call_sid=str(start["callSid"]),
                account_sid=start.get("accountSid"),
                custom_parameters={str(k): str(v) for k, v in params.items()},
            )
        if event == "dtmf":
            digit = str(msg["dtmf"]["digit"])
            if digit not in _DIGITS or len(digit) != 1:
                raise BadMessage("bad_field", f"bad DTMF digit {digit!r}")
            return Dtmf(digit)
        if event == "stop":
            return Stop()
        if event == "connected":
            return Connected()
    except BadMessage:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise BadMessage("bad_field", f"{event} event: {type(exc).__name__} {exc}") from None
    raise BadMessage("unknown_event", f"unknown event {str(event)[:40]!r}")


def media(stream_sid: str, payload: bytes) -> str:
    return orjson.dumps(
        {"event": "media", "streamSid": stream_sid, "media": {"payload": base64.b64encode(payload).decode()}}
    ).decode()


def mark(stream_sid: str, name: str) -> str:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear(stream_sid: str) -> str:
    return orjson.dumps({"event": "clear", "streamSid": stream_sid}).decode()
