"""What the caller heard of an agent line the caller cut off, as text.

The Realtime API gives no transcript of a truncated item: ``conversation.item.truncate`` deletes
the server's transcript of the item ("there is no text in the context that hasn't been heard") and
``conversation.item.truncated`` carries only the item, content index and ``audio_end_ms``. So the
heard part is estimated from the model's transcript of everything it generated for the item, in
proportion to the audio heard (``heard_ms`` of ``audio_ms``), on a word boundary: speech runs at
a fairly even rate of characters, and a word is kept when at least half of it was heard.

GPT-Live times its transcript: each stretch of text says where in the audio it is spoken. There the
heard part follows those times (a pause, or a slow word, moves no later word into what was heard),
in proportion only within the stretch the caller was cut off in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .engine import TextSpan

_WORD = re.compile(r"\S+")


def cut_text(text: str, heard_ms: float, audio_ms: float, timing: Sequence[TextSpan] = ()) -> str:
    """The part of ``text`` the caller heard when ``heard_ms`` of its ``audio_ms`` played; by the
    transcript's ``timing`` when there is one (``text`` as the engine gave it, stripped)."""
    text = text.strip()
    if audio_ms <= 0 or heard_ms >= audio_ms:
        return text
    if heard_ms <= 0:
        return ""
    reached = _timed(timing, heard_ms) if timing else len(text) * heard_ms / audio_ms
    end = 0
    for word in _WORD.finditer(text):
        if (word.start() + word.end()) / 2 > reached:
            break
        end = word.end()
    return text[:end]


def _timed(timing: Sequence[TextSpan], heard_ms: float) -> float:
    """How far into the text the caller heard: every stretch that had played, and the one playing
    in proportion to its time."""
    reached, start = 0.0, 0
    for span in timing:
        if heard_ms >= span.end_ms:
            reached = span.end
        elif heard_ms > span.start_ms:
            return start + (span.end - start) * (heard_ms - span.start_ms) / (span.end_ms - span.start_ms)
        else:
            break
        start = span.end
    return reached
