"""What the caller heard of an agent line the caller cut off, as text.

The Realtime API gives no transcript of a truncated item: ``conversation.item.truncate`` deletes
the server's transcript of the item ("there is no text in the context that hasn't been heard") and
``conversation.item.truncated`` carries only the item, content index and ``audio_end_ms``. So the
heard part is estimated from the model's transcript of everything it generated for the item, in
proportion to the audio heard (``heard_ms`` of ``audio_ms``), on a word boundary: speech runs at
a fairly even rate of characters, and a word is kept when at least half of it was heard.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\S+")


def cut_text(text: str, heard_ms: float, audio_ms: float) -> str:
    """The part of ``text`` the caller heard when ``heard_ms`` of its ``audio_ms`` played."""
    text = text.strip()
    if audio_ms <= 0 or heard_ms >= audio_ms:
        return text
    if heard_ms <= 0:
        return ""
    reached = len(text) * heard_ms / audio_ms
    end = 0
    for word in _WORD.finditer(text):
        if (word.start() + word.end()) / 2 > reached:
            break
        end = word.end()
    return text[:end]
