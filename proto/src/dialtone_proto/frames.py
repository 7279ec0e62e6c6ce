"""The raw frame format on the per-call audio subjects.

Audio is the hot path (50 frames a second per call and direction), so it travels as raw mu-law
bytes behind a 12-byte header, never as base64 JSON. Control messages (mark, clear, dtmf, stop,
hangup, heartbeat) use the same subject and header so they stay ordered with the audio around them.

    offset size field
    0      1    version (1)
    1      1    kind (see ``Kind``)
    2      2    reserved, 0
    4      4    sequence number, per call and direction, from 0
    8      4    timestamp in ms since the stream started (caller clock for ``in`` frames)
    12     ...  payload: mu-law bytes for AUDIO, a UTF-8 JSON object for control kinds

The call id is the subject token, so it is not repeated in the frame.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024


class Kind(enum.IntEnum):
    AUDIO = 1
    MARK = 2  # out: ask Twilio to echo {"name"}; in: Twilio echoed {"name"}
    CLEAR = 3  # out: drop audio buffered at Twilio
    DTMF = 4  # in: {"digit"}
    STOP = 5  # in: the stream stopped {"reason"}
    HANGUP = 6  # out: close the media socket {"reason"}
    HEARTBEAT = 7  # out: the bridge still holds the call {"bridge"}; its absence is a lost bridge


class FrameError(ValueError):
    """A frame that does not follow this format."""


@dataclass(slots=True, frozen=True)
class Frame:
    kind: Kind
    seq: int
    ts: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        """The payload of a control frame as a dict."""
        try:
            value = orjson.loads(self.payload) if self.payload else {}
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"{self.kind.name} payload is not JSON") from exc
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name} payload is not an object")
        return value


def encode_frame(kind: Kind, seq: int, ts: int, payload: bytes = b"") -> bytes:
    """Pack one frame."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(VERSION, kind, 0, seq & 0xFFFFFFFF, ts & 0xFFFFFFFF) + payload


def encode_control(kind: Kind, seq: int, ts: int, body: dict[str, Any]) -> bytes:
    """Pack one control frame with a JSON body."""
    return encode_frame(kind, seq, ts, orjson.dumps(body))


def decode_frame(data: bytes) -> Frame:
    """Unpack one frame, raising ``FrameError`` on anything malformed."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the header")
    version, kind, _reserved, seq, ts = HEADER.unpack_from(data)
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    try:
        kind = Kind(kind)
    except ValueError as exc:
        raise FrameError(f"unknown frame kind {kind}") from exc
    payload = data[HEADER_SIZE:]
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return Frame(kind, seq, ts, payload)
