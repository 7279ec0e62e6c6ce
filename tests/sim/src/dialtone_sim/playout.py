"""The caller's ear: Twilio's outbound buffer played in real time (PROTOCOLS.md 1.3).

Audio and marks sit in one FIFO. Each 20 ms tick plays up to 160 bytes; a mark is echoed once
every byte queued before it has played (at once if nothing is buffered); ``clear`` drops the
audio and echoes every pending mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .audio import FRAME_BYTES

__all__ = ["Playout"]


class Playout:
    """A FIFO of agent audio and marks.

    Args:
        echo: called with a mark's name when Twilio would echo it back.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo
        self._queue: deque[bytearray | str] = deque()
        self.buffered = 0  # audio bytes waiting to be played
        self.heard = bytearray()

    def add_audio(self, data: bytes) -> None:
        """Queue received media payload bytes behind everything already queued."""
        if data:
            self._queue.append(bytearray(data))
            self.buffered += len(data)

    def add_mark(self, name: str) -> None:
        """Queue a mark; echoed immediately when no audio is ahead of it."""
        self._queue.append(name)
        self._flush_marks()

    def clear(self) -> None:
        """Drop all buffered audio; every pending mark is echoed (``played or cleared``)."""
        pending = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self.buffered = 0
        for name in pending:
            self._echo(name)

    def discard(self) -> None:
        """The stream stopped: what is still queued is dropped and no mark is echoed (the socket
        that would carry the echoes is gone)."""
        self._queue.clear()
        self.buffered = 0

    def tick(self, frame: int = FRAME_BYTES) -> int:
        """Play one 20 ms frame; returns how many bytes were played (0..frame)."""
        need = frame
        while self._queue and need:
            head = self._queue[0]
            if isinstance(head, str):
                self._queue.popleft()
                self._echo(head)
                continue
            played = head[:need]
            del head[:need]
            self.heard += played
            self.buffered -= len(played)
            need -= len(played)
            if not head:
                self._queue.popleft()
        self._flush_marks()
        return frame - need

    def _flush_marks(self) -> None:
        while self._queue and isinstance(self._queue[0], str):
            self._echo(self._queue.popleft())  # type: ignore[arg-type]
