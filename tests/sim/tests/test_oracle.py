"""The oracle's memo of valid flat events gives the verdict full validation gives."""

from __future__ import annotations

import pytest
from dialtone_sim.oracle import OracleError, check_client_event, check_live_client_event, check_server_event

pytestmark = pytest.mark.unit

DELTA = {"type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1",
         "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "AAAA"}  # fmt: skip


def test_events_like_a_valid_one_pass_and_anything_else_is_still_checked() -> None:
    check_client_event({"type": "input_audio_buffer.append", "audio": "AAAA"})
    check_client_event({"type": "input_audio_buffer.append", "audio": "BBBB"})  # same shape: remembered
    check_server_event(DELTA)
    check_server_event({**DELTA, "output_index": 7, "delta": "CCCC"})
    refused = [
        {"type": "input_audio_buffer.append", "audio": 5},  # a free-form field of another type
        {"type": "input_audio_buffer.append", "audio": None},
        {"type": "input_audio_buffer.append", "audio": "AAAA", "format": "pcm16"},  # an unknown key
        {"type": "input_audio_buffer.append"},  # a missing one
        {**DELTA, "output_index": "first"},
        {**DELTA, "output_index": 1.5},
    ]
    for event in refused:
        with pytest.raises(OracleError):
            check_client_event(event) if event["type"].startswith("input") else check_server_event(event)
    check_live_client_event({"type": "session.input_audio.append", "audio": "AAAA"})
    with pytest.raises(OracleError):
        check_live_client_event({"type": "session.input_audio.append", "audio": "AAAA", "rate": 8000})


def test_nested_events_are_always_validated() -> None:
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Hi"}}
    check_client_event(update)
    with pytest.raises(OracleError):
        check_client_event({"type": "session.update", "session": {"type": "realtime", "voice": "alloy"}})
