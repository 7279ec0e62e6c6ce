"""Caller and agent "speech" as 8 kHz mu-law.

With ``espeak-ng`` and ``sox`` on PATH the words are really spoken (handy when a human listens
to a recording); otherwise a deterministic speech-like signal is made: voiced syllables at a
syllable rate of ~4-6 Hz, with harmonics and a little noise. Either way the result is loud
enough for the Realtime simulator's VAD (:data:`VOICED_ENERGY`), whose threshold 0xFF silence
never reaches, and different ``(text, seed)`` pairs give different bytes, so a test can find a
given utterance inside a recording.

CI must prove the real speech path: with ``DIALTONE_REQUIRE_SPEECH=1`` in the environment (set by
``.ci/run``) there is no fallback, and :func:`synthesize` raises :class:`SpeechUnavailable` when
espeak-ng or sox is missing or fails. (This test helper reads that one variable itself; the
services read theirs only in their ``settings.py``.)
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import shutil
import subprocess
import wave
from array import array
from pathlib import Path

from .audio import decode, encode, pad_to_frame

__all__ = [
    "VOICED_ENERGY", "SpeechUnavailable", "from_wav", "have_espeak", "one_voice", "real_speech", "speech_required",
    "synthesize",
]  # fmt: skip

VOICED_ENERGY = 300.0
"""Mean absolute amplitude above which a 20 ms frame counts as voiced (the sim's VAD threshold)."""

_MS_PER_CHAR = 60
_MAX_MS = 6000
_MIN_MS = 400


_REAL_SPEECH = True
_ONE_VOICE = False
REQUIRE_ENV = "DIALTONE_REQUIRE_SPEECH"


class SpeechUnavailable(RuntimeError):
    """Real speech is required (``DIALTONE_REQUIRE_SPEECH=1``) but espeak-ng/sox cannot make it."""


def speech_required() -> bool:
    """Whether falling back to the synthetic signal is forbidden (CI)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def real_speech(enabled: bool) -> None:
    """Use espeak-ng when available (the default), or always the cheap synthetic signal: the
    benchmark keeps the simulators' CPU out of the platform's way with it."""
    global _REAL_SPEECH
    _REAL_SPEECH = enabled
    synthesize.cache_clear()


def one_voice(enabled: bool) -> None:
    """Speak every seed with seed 0's voice, so each text is rendered once: the bench's simulator
    answers hundreds of calls with the same few lines, and rendering each anew (pure Python) would
    cost it more than everything else it does. Tests keep distinct voices (the default)."""
    global _ONE_VOICE
    _ONE_VOICE = enabled
    synthesize.cache_clear()


def have_espeak() -> bool:
    """True when real speech synthesis (espeak-ng piped through sox) is available and enabled."""
    return _REAL_SPEECH and shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def _rng(text: str, seed: int) -> random.Random:
    # hash() of a str changes per process; a digest keeps runs reproducible.
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _signal(text: str, seed: int) -> bytes:
    rng = _rng(text, seed)
    duration_ms = max(_MIN_MS, min(_MAX_MS, _MS_PER_CHAR * len(text)))
    n = duration_ms * 8
    syllable_hz = rng.uniform(4.0, 6.0)
    pitch = rng.uniform(100.0, 220.0)
    out = []
    phase = 0.0
    for i in range(n):
        t = i / 8000.0
        # Pitch drifts per syllable like intonation; the envelope never drops to silence so
        # the VAD sees one continuous utterance (real pauses are added by the caller script).
        f0 = pitch * (1.0 + 0.15 * math.sin(2 * math.pi * 0.7 * t))
        phase += 2 * math.pi * f0 / 8000.0
        envelope = 0.35 + 0.65 * abs(math.sin(math.pi * syllable_hz * t))
        voiced = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
        out.append(envelope * 6000.0 * voiced + rng.uniform(-600.0, 600.0))
    # Short fades so the utterance does not click in a recording.
    fade = min(160, n // 4)
    for i in range(fade):
        out[i] *= i / fade
        out[n - 1 - i] *= i / fade
    return encode(out)


def _dither(data: bytes, text: str, seed: int) -> bytes:
    """Add inaudible seeded noise so equal text with different seeds differs byte-wise."""
    rng = _rng(text, seed)
    return encode(s + rng.randint(-48, 48) for s in decode(data))


def _espeak(text: str, seed: int) -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-p", str(30 + (seed * 7) % 40), "--", text],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-e", "mu-law", "-r", "8000", "-c", "1", "-"],
        input=wav,
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    return _dither(raw, text, seed)


@functools.lru_cache(maxsize=512)
def synthesize(text: str, seed: int = 0) -> bytes:
    """Speak ``text`` as 8 kHz mu-law, a whole number of 20 ms frames long.

    Args:
        text: the words; the fallback signal lasts ~60 ms per character (0.4-6 s).
        seed: varies the voice so each (text, seed) pair has its own bytes.

    Raises:
        SpeechUnavailable: ``DIALTONE_REQUIRE_SPEECH=1`` and espeak-ng/sox are missing or fail
            (unless :func:`real_speech` turned real speech off on purpose).
    """
    if _ONE_VOICE and seed:
        return synthesize(text, 0)
    if have_espeak():
        try:
            return pad_to_frame(_espeak(text, seed))
        except (OSError, subprocess.SubprocessError) as exc:
            if speech_required():
                raise SpeechUnavailable(f"espeak-ng/sox failed: {exc!r}") from exc
            # Outside CI a broken install must not break the tests: fall back to the signal.
    elif _REAL_SPEECH and speech_required():
        raise SpeechUnavailable(f"{REQUIRE_ENV}=1 but espeak-ng and sox are not both on PATH")
    return pad_to_frame(_signal(text, seed))


def _resample(samples: list[int], rate: int, target: int = 8000) -> list[int]:
    if rate == target or not samples:
        return samples
    step = rate / target
    count = int(len(samples) / step)
    out = []
    for i in range(count):
        pos = i * step
        j = int(pos)
        frac = pos - j
        nxt = samples[j + 1] if j + 1 < len(samples) else samples[j]
        out.append(int(samples[j] * (1 - frac) + nxt * frac))
    return out


@functools.lru_cache(maxsize=64)
def from_wav(path: str | Path) -> bytes:
    """Read a WAV file of any rate/width/channels into 8 kHz mu-law (whole frames)."""
    path = str(path)
    if shutil.which("sox"):
        raw = subprocess.run(
            ["sox", path, "-t", "raw", "-e", "mu-law", "-r", "8000", "-c", "1", "-"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        return pad_to_frame(raw)
    with wave.open(path, "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        frames = w.readframes(w.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        values = [(b - 128) << 8 for b in frames]
    elif width == 2:
        values = list(array("h", frames))
    else:  # 24/32-bit: keep the top 16 bits, little-endian
        values = [
            int.from_bytes(frames[i + width - 2 : i + width], "little", signed=True)
            for i in range(0, len(frames), width)
        ]
    mono = [sum(values[i : i + channels]) // channels for i in range(0, len(values), channels)]
    return pad_to_frame(encode(_resample(mono, rate)))
