"""G.711 mu-law in pure Python, plus the few frame helpers the simulators need.

``audioop`` is deprecated (and warns, and warnings are errors in our tests), so the codec is
table driven: 256 entries to decode, 65536 (every int16) to encode. Both tables are built once
at import, which costs a few milliseconds.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

__all__ = [
    "FRAME_BYTES",
    "SILENCE_BYTE",
    "TAG_BITS",
    "decode",
    "encode",
    "energy",
    "find_tag",
    "pad_to_frame",
    "read_tag",
    "silence",
    "tag_frame",
]

SILENCE_BYTE = 0xFF
"""mu-law for linear 0 (positive zero); what Twilio sends when nobody speaks."""
FRAME_BYTES = 160
"""One 20 ms frame at 8 kHz, one byte per sample."""
TAG_BITS = 64
"""The samples of a tagged frame that carry its tag (:func:`tag_frame`)."""
_MAGIC = 0xD1A7
_ONE, _ZERO = 0x7F, 0xFF  # mu-law -0 and +0: both digital silence

_BIAS = 0x84
_CLIP = 32635


def _decode_byte(u: int) -> int:
    u = ~u & 0xFF
    magnitude = (((u & 0x0F) << 3) + _BIAS) << ((u >> 4) & 0x07)
    magnitude -= _BIAS
    return -magnitude if u & 0x80 else magnitude


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _CLIP) + _BIAS
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


_DECODE: tuple[int, ...] = tuple(_decode_byte(u) for u in range(256))
_ABS: tuple[int, ...] = tuple(abs(v) for v in _DECODE)
# The same magnitudes split into their high and low bytes, for ``bytes.translate``: summing two
# translated copies of a frame runs in C, where a lookup per sample ran in the interpreter.
_ABS_HIGH = bytes(a >> 8 for a in _ABS)
_ABS_LOW = bytes(a & 0xFF for a in _ABS)
# Indexed by the int16 value reinterpreted as unsigned (value & 0xFFFF).
_ENCODE = bytes(_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))


def decode(data: bytes) -> array:
    """mu-law bytes to signed 16-bit linear samples."""
    return array("h", map(_DECODE.__getitem__, data))


def encode(samples: Iterable[int]) -> bytes:
    """Signed linear samples (clipped to int16) to mu-law bytes."""
    table = _ENCODE
    return bytes(table[(max(-32768, min(32767, int(s)))) & 0xFFFF] for s in samples)


def silence(ms: int | float) -> bytes:
    """``ms`` milliseconds of mu-law silence (8 bytes per ms)."""
    return bytes([SILENCE_BYTE]) * int(ms * 8)


def energy(frame: bytes) -> float:
    """Mean absolute linear amplitude of a mu-law frame (0 for digital silence, up to ~32k)."""
    if not frame:
        return 0.0
    return (sum(frame.translate(_ABS_HIGH)) * 256 + sum(frame.translate(_ABS_LOW))) / len(frame)


def pad_to_frame(data: bytes, frame: int = FRAME_BYTES) -> bytes:
    """Pad mu-law audio with silence up to a whole number of ``frame``-byte frames."""
    short = -len(data) % frame
    return data + bytes([SILENCE_BYTE]) * short if short else data


# ---- tags carried in the audio ---------------------------------------------------------------
# A frame of digital silence can carry a number in the sign bits of its first 64 samples (mu-law +0
# and -0 both decode to 0: the model still hears silence). ``make bench`` numbers every frame of a
# call this way; a test call tagged with its number (``dial(tag=)``) takes the script the model
# simulators hold for that number. Each byte of the tag as its 8 bits, most significant first (the
# bench tags 50 frames a second per call: a table, not a loop over bits).
_BITS = [bytes(_ONE if byte >> (7 - i) & 1 else _ZERO for i in range(8)) for byte in range(256)]
_PAD = bytes([_ZERO]) * (FRAME_BYTES - TAG_BITS)


def tag_frame(call: int, frame_no: int) -> bytes:
    """A 20 ms frame of digital silence carrying ``call`` (16 bits) and ``frame_no`` (32 bits)."""
    value = (_MAGIC << 48) | ((call & 0xFFFF) << 32) | (frame_no & 0xFFFFFFFF)
    return b"".join(_BITS[byte] for byte in value.to_bytes(8, "big")) + _PAD


def read_tag(frame: bytes | memoryview) -> tuple[int, int] | None:
    """``(call, frame_no)`` of a frame made by :func:`tag_frame`, else None."""
    head = bytes(frame[:TAG_BITS])
    if len(head) < TAG_BITS or head.translate(None, b"\x7f\xff"):
        return None
    value = 0
    for byte in head:
        value = (value << 1) | (byte == _ONE)
    if value >> 48 != _MAGIC:
        return None
    return (value >> 32) & 0xFFFF, value & 0xFFFFFFFF


_TAG_PREFIX = _BITS[_MAGIC >> 8] + _BITS[_MAGIC & 0xFF]


def find_tag(audio: bytes | bytearray) -> int | None:
    """The call number of the first tagged frame in ``audio``, at any byte position (a model's
    input need not start on a frame boundary), else None."""
    at = audio.find(_TAG_PREFIX)
    while at >= 0:
        if (tag := read_tag(memoryview(audio)[at : at + TAG_BITS])) is not None:
            return tag[0]
        at = audio.find(_TAG_PREFIX, at + 1)
    return None
