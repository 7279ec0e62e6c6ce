"""The raw frame format on the per-call audio subjects.

Audio is the hot path (50 frames a second per call and direction), so it travels as raw mu-law
bytes behind a 12-byte header, never as base64 JSON. Control messages (mark, clear, dtmf, stop,
hangup, heartbeat) use the same subject and header so they stay ordered with the audio around them.

    offset size field
    0      1    version (1)
    1      1    kind (see ``Kind``)
    2      2    sent: the sender's wall clock in ms, modulo 2**16 (bus transit, see ``transit_ms``)
    4      4    sequence number, per call and direction, from 0
    8      4    timestamp in ms since the stream started (caller clock for ``in`` frames)
    12     ...  payload: mu-law bytes for AUDIO, a UTF-8 JSON object for control kinds

The call id is the subject token, so it is not repeated in the frame.

``sent`` took the place of a reserved zero field, so the header keeps its size and version. Sixteen
bits of milliseconds wrap every 65.5 s, which is plenty for a hop that takes a few milliseconds;
across machines it assumes clocks kept in step by NTP, as the services' hosts are.
"""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

VERSION = 1
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024
TRANSIT_MAX_MS = 30_000  # a longer "transit" is clock skew (or a frame of a sender without the stamp)


class Kind(enum.IntEnum):
    AUDIO = 1
    MARK = 2  # out: ask Twilio to echo {"name"}; in: Twilio echoed {"name"}
    CLEAR = 3  # out: drop audio buffered at Twilio
    DTMF = 4  # in: {"digit"}
    STOP = 5  # in: the stream stopped {"reason"}
    HANGUP = 6  # out: close the media socket {"reason"}
    HEARTBEAT = 7  # out: the bridge still holds the call {"bridge"}; its absence is a lost bridge
    HANDOFF = 8  # out: the bridge is leaving (drained) {"bridge"}; offer the call to another one now
    MOVED = 9  # in: the call's Twilio stream moved to another gateway {"from", "to", "stopped_ts"}


class FrameError(ValueError):
    """A frame that does not follow this format."""


@dataclass(slots=True, frozen=True)
class Frame:
    kind: Kind
    seq: int
    ts: int
    payload: bytes
    sent: int = field(default=0, compare=False)  # sender's wall clock, ms modulo 2**16

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
    return HEADER.pack(VERSION, kind, _now_ms() & 0xFFFF, seq & 0xFFFFFFFF, ts & 0xFFFFFFFF) + payload


def encode_control(kind: Kind, seq: int, ts: int, body: dict[str, Any]) -> bytes:
    """Pack one control frame with a JSON body."""
    return encode_frame(kind, seq, ts, orjson.dumps(body))


def decode_frame(data: bytes) -> Frame:
    """Unpack one frame, raising ``FrameError`` on anything malformed."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the header")
    version, kind, sent, seq, ts = HEADER.unpack_from(data)
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    try:
        kind = Kind(kind)
    except ValueError as exc:
        raise FrameError(f"unknown frame kind {kind}") from exc
    payload = data[HEADER_SIZE:]
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return Frame(kind, seq, ts, payload, sent)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def transit_ms(frame: Frame, now_ms: int | None = None) -> int | None:
    """Milliseconds the frame spent between its sender and here, by the two wall clocks; None when
    that cannot be told (over ``TRANSIT_MAX_MS``: skewed clocks, or a sender that left it 0)."""
    elapsed = ((now_ms if now_ms is not None else _now_ms()) - frame.sent) & 0xFFFF
    return elapsed if elapsed <= TRANSIT_MAX_MS else None


# ---- the recorder's tap ---------------------------------------------------------------------
# The gateway hands the recorder each call's frames in batches on ``dt.v1.call.<id>.<key>.rec``,
# a few a second, instead of the recorder listening to every 20 ms frame on ``in`` and ``out``
# (100 bus messages a second per call, delivered twice). A batch is a version byte, then entries:
#
#     offset size field
#     0      1    side: 0 a frame the gateway published on ``in``, 1 one it took from ``out``
#     1      8    the gateway's wall clock in ms when it did
#     9      2    the frame's length
#     11     ...  the frame, exactly as on the bus (header and payload)
#
# in the order the gateway saw them: the caller's frames, the agent's, and the mark echoes between
# them, as they happened at the one place that sees both.

TAP_VERSION = 1
TAP_ENTRY = struct.Struct(">BQH")
TAP_IN, TAP_OUT = 0, 1


def tap_entry(side: int, at_ms: int, frame: bytes) -> bytes:
    """The header of one tap entry; the frame follows it."""
    return TAP_ENTRY.pack(side, at_ms, len(frame))


def decode_tap(data: bytes) -> list[tuple[int, int, Frame]]:
    """The entries of one tap batch, as (side, at_ms, frame); ``FrameError`` on anything malformed
    (nothing of a malformed batch is used)."""
    if not data or data[0] != TAP_VERSION:
        raise FrameError("not a tap batch of a known version")
    entries, pos, end = [], 1, len(data)
    while pos < end:
        if end - pos < TAP_ENTRY.size:
            raise FrameError("tap batch cut inside an entry's header")
        side, at_ms, size = TAP_ENTRY.unpack_from(data, pos)
        pos += TAP_ENTRY.size
        if side not in (TAP_IN, TAP_OUT) or end - pos < size:
            raise FrameError("tap entry of an unknown side or cut short")
        entries.append((side, at_ms, decode_frame(data[pos:pos + size])))
        pos += size
    return entries
