"""Cost of a call's model usage."""

from __future__ import annotations

import pytest
from dialtone_bridge.pricing import cost_usd
from dialtone_bridge.settings import DEFAULT_PRICES

pytestmark = pytest.mark.unit

RESPONSE_USAGE = {
    "total_tokens": 1900,
    "input_tokens": 1300,
    "output_tokens": 600,
    "input_token_details": {
        "text_tokens": 300,
        "audio_tokens": 1000,
        "cached_tokens": 500,
        "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 300},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 500},
}


def test_response_cost_bills_cached_tokens_at_the_cached_rate() -> None:
    # gpt-realtime per 1M: text 4 / 0.40 / 16, audio 32 / 0.40 / 64.
    expected = (
        (300 - 200) * 4.0 + 200 * 0.40  # text in, of which 200 cached
        + (1000 - 300) * 32.0 + 300 * 0.40  # audio in, of which 300 cached
        + 100 * 16.0 + 500 * 64.0  # text out, audio out
    ) / 1_000_000

    assert expected == pytest.approx(0.0566)
    assert cost_usd(RESPONSE_USAGE, DEFAULT_PRICES["gpt-realtime"]) == pytest.approx(expected)


def test_the_mini_model_is_cheaper() -> None:
    assert cost_usd(RESPONSE_USAGE, DEFAULT_PRICES["gpt-realtime-2.1-mini"]) < cost_usd(
        RESPONSE_USAGE, DEFAULT_PRICES["gpt-realtime"]
    )


def test_transcription_usage_without_details_is_audio_in_and_text_out() -> None:
    usage = {"type": "tokens", "input_tokens": 120, "output_tokens": 30, "total_tokens": 150}

    # gpt-4o-mini-transcribe per 1M: audio in 3, text out 5.
    assert cost_usd(usage, DEFAULT_PRICES["gpt-4o-mini-transcribe"]) == pytest.approx((120 * 3.0 + 30 * 5.0) / 1e6)


def test_no_prices_means_no_cost() -> None:
    assert cost_usd(RESPONSE_USAGE, None) == 0.0
    assert cost_usd(RESPONSE_USAGE, {}) == 0.0
    assert cost_usd(RESPONSE_USAGE, DEFAULT_PRICES.get("some-future-model")) == 0.0


def test_empty_usage_costs_nothing() -> None:
    assert cost_usd({}, DEFAULT_PRICES["gpt-realtime"]) == 0.0
