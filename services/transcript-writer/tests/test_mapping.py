"""Unit tests of the pure event-to-row rules."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from dialtone_writer.mapping import (
    RANK_IMPLIED_BY_END,
    cost_breakdown,
    status_rank,
    status_wins,
    usage_counters,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("status", ["completed", "busy", "no-answer", "failed", "canceled", "transferred"])
def test_terminal_statuses_outrank_progress(status: str) -> None:
    assert status_rank(status) > status_rank("in-progress") == status_rank("ringing")
    assert status_rank(status) > RANK_IMPLIED_BY_END


def _fold(statuses: list[tuple[str, int]]) -> str:
    current: tuple[int, datetime] | None = None
    name = None
    for status, second in statuses:
        candidate = (status_rank(status), T0 + timedelta(seconds=second))
        if status_wins(candidate, current):
            current, name = candidate, status
    assert name is not None
    return name


def test_status_outcome_does_not_depend_on_arrival_order() -> None:
    # Twilio sends callbacks out of order; a late "ringing" must not undo "completed".
    statuses = [("ringing", 1), ("in-progress", 2), ("completed", 30)]
    assert {_fold(list(p)) for p in itertools.permutations(statuses)} == {"completed"}


def test_later_terminal_status_wins() -> None:
    assert _fold([("transferred", 10), ("completed", 40)]) == "completed"
    assert _fold([("completed", 40), ("transferred", 10)]) == "completed"


def test_a_responses_tokens_by_kind_become_the_admin_counters() -> None:
    tokens = {"text_in": 10, "text_cached": 40, "audio_in": 150, "text_out": 20, "audio_out": 80}
    assert usage_counters("response", tokens) == {
        "input_tokens": 200,
        "output_tokens": 100,
        "input_text_tokens": 50,
        "input_audio_tokens": 150,
        "cached_tokens": 40,
        "output_text_tokens": 20,
        "output_audio_tokens": 80,
        "responses": 1,
    }


def test_transcription_usage_counts_only_transcription_tokens() -> None:
    assert usage_counters("transcription", {"audio_in": 20, "text_out": 7}) == {"transcription_tokens": 27}
    # A transcription billed by time has no tokens to count.
    assert usage_counters("transcription", {}) == {}


def test_garbage_token_values_count_as_zero() -> None:
    assert usage_counters("response", {"text_in": "12", "text_out": True, "audio_in": [1]}) == {"responses": 1}  # type: ignore[dict-item]


def test_a_responses_cost_is_filed_by_kind_with_cached_text_and_audio_together() -> None:
    tokens = {"text_in": 100, "text_cached": 200, "audio_in": 700, "audio_cached": 300, "text_out": 100,
              "audio_out": 500}  # fmt: skip
    costs = {"text_in": 0.0004, "text_cached": 0.00008, "audio_in": 0.0224, "audio_cached": 0.00012,
             "text_out": 0.0024, "audio_out": 0.032}  # fmt: skip
    out = cost_breakdown("response", tokens, costs, 0.05744)
    assert out == pytest.approx({
        "text_in_usd": 0.0004, "text_in_tokens": 100, "cached_usd": 0.0002, "cached_tokens": 500,
        "audio_in_usd": 0.0224, "audio_in_tokens": 700, "text_out_usd": 0.0024, "text_out_tokens": 100,
        "audio_out_usd": 0.032, "audio_out_tokens": 500})  # fmt: skip
    assert sum(v for k, v in out.items() if k.endswith("_usd")) == pytest.approx(sum(costs.values()))


def test_a_transcription_is_one_kind_and_an_unsplit_event_is_kept_whole() -> None:
    assert cost_breakdown("transcription", {"audio_in": 120, "text_out": 30}, {"audio_in": 0.00036, "text_out": 0.00015},
                          0.00051) == pytest.approx({"transcription_usd": 0.00051, "transcription_tokens": 150})
    # An event from a bridge older than the split: its total, under its own kind.
    assert cost_breakdown("response", {}, {}, 0.0125) == {"other_usd": 0.0125, "other_tokens": 0}
    assert cost_breakdown("transcription", {}, {}, 0.0005) == {"transcription_usd": 0.0005, "transcription_tokens": 0}
    assert cost_breakdown("response", {}, {}, 0.0) == {}
