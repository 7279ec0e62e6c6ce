"""Simulated speech: real espeak-ng speech where CI requires it, never a silent fallback there."""

from __future__ import annotations

import os
import shutil

import pytest
from dialtone_sim import speech
from dialtone_sim.audio import pad_to_frame

pytestmark = pytest.mark.unit

TEXT = "Hi, can you look up my account?"


def spy_on_espeak(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record what espeak-ng (through sox) returns each time the synthesizer runs it."""
    made: list[bytes] = []
    real = speech._espeak

    def spy(text: str, seed: int) -> bytes:
        made.append(real(text, seed))
        return made[-1]

    monkeypatch.setattr(speech, "_espeak", spy)
    speech.synthesize.cache_clear()
    return made


@pytest.mark.skipif(os.environ.get(speech.REQUIRE_ENV) != "1", reason="CI (.ci/run) requires real speech")
def test_ci_speaks_real_espeak_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    # The variable is set by .ci/run: this run's callers and model must be really speaking.
    assert speech.have_espeak(), "espeak-ng and sox must be installed where real speech is required"
    made = spy_on_espeak(monkeypatch)
    said = speech.synthesize(TEXT, seed=3)
    assert len(made) == 1 and said == pad_to_frame(made[0])
    assert said != pad_to_frame(speech._signal(TEXT, 3))
    speech.synthesize.cache_clear()


def test_required_speech_never_falls_back_to_the_synthetic_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(speech.REQUIRE_ENV, "1")
    made = spy_on_espeak(monkeypatch)
    if speech.have_espeak():
        assert speech.synthesize(TEXT, seed=4) == pad_to_frame(made[0])
    monkeypatch.setattr(shutil, "which", lambda name: None)  # espeak-ng and sox missing
    speech.synthesize.cache_clear()
    with pytest.raises(speech.SpeechUnavailable):
        speech.synthesize(TEXT, seed=5)
    speech.synthesize.cache_clear()


def test_without_the_requirement_a_missing_espeak_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(speech.REQUIRE_ENV, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    speech.synthesize.cache_clear()
    assert speech.synthesize(TEXT, seed=6) == pad_to_frame(speech._signal(TEXT, 6))
    speech.synthesize.cache_clear()


def test_one_voice_renders_each_text_once_whatever_the_seed() -> None:
    speech.real_speech(False)
    try:
        assert speech.synthesize("Hello there.", 1) != speech.synthesize("Hello there.", 2)
        speech.one_voice(True)
        assert speech.synthesize("Hello there.", 1) == speech.synthesize("Hello there.", 2) == speech.synthesize("Hello there.", 0)
    finally:
        speech.one_voice(False)
        speech.real_speech(True)
    speech.real_speech(False)
    try:
        assert speech.synthesize("Hello there.", 1) != speech.synthesize("Hello there.", 2)  # distinct again
    finally:
        speech.real_speech(True)
