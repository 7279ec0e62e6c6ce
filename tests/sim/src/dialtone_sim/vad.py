"""Server voice activity detection driven by audio time, as the Realtime API's ``server_vad``.

Time is the position in the appended audio, never the wall clock, so a test that appends two
seconds of audio in one go gets exactly the events real time would have produced.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerVad"]


@dataclass
class ServerVad:
    """Per-frame speech start/stop decisions.

    Attributes:
        silence_duration_ms: unvoiced audio that ends an utterance.
        prefix_padding_ms: audio before the first voiced frame included in the utterance.
        threshold: frame energy (mean abs amplitude) above which a frame is voiced.
    """

    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300
    threshold: float = 300.0
    in_speech: bool = False
    start_ms: int = 0
    stop_ms: int = 0
    _silence_run_ms: int = 0

    def reset(self) -> None:
        """Forget any utterance in progress (``input_audio_buffer.clear``, commit)."""
        self.in_speech = False
        self._silence_run_ms = 0

    def process(
        self, frame_energy: float, frame_start_ms: int, frame_ms: int, buffer_start_ms: int
    ) -> str | None:
        """Feed one frame; returns ``"started"``, ``"stopped"`` or None.

        After ``"started"``, :attr:`start_ms` holds ``audio_start_ms`` (padding included, never
        before the start of the uncommitted buffer); after ``"stopped"``, :attr:`stop_ms` holds
        ``audio_end_ms`` (which includes the trailing silence, like the real API).
        """
        voiced = frame_energy > self.threshold
        if not self.in_speech:
            if voiced:
                self.in_speech = True
                self._silence_run_ms = 0
                self.start_ms = max(buffer_start_ms, frame_start_ms - self.prefix_padding_ms)
                return "started"
            return None
        if voiced:
            self._silence_run_ms = 0
            return None
        self._silence_run_ms += frame_ms
        if self._silence_run_ms >= self.silence_duration_ms:
            self.in_speech = False
            self._silence_run_ms = 0
            self.stop_ms = frame_start_ms + frame_ms
            return "stopped"
        return None
