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
    "decode",
    "encode",
    "energy",
    "pad_to_frame",
    "silence",
]

SILENCE_BYTE = 0xFF
"""mu-law for linear 0 (positive zero); what Twilio sends when nobody speaks."""
FRAME_BYTES = 160
"""One 20 ms frame at 8 kHz, one byte per sample."""

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
