"""Cost of a call's model usage: the Realtime edge counts tokens by kind from the provider's usage
blocks (``token_counts``), and the neutral price table prices them."""

from __future__ import annotations

import pytest
from dialtone_bridge import pricing
from dialtone_bridge.realtime_engine import token_counts
from dialtone_bridge.settings import DEFAULT_MODEL, DEFAULT_PRICES, BridgeSettings

pytestmark = pytest.mark.unit

def cost_usd(usage: dict, prices: dict[str, float] | None) -> float:
    return pricing.cost_usd(token_counts(usage), prices)


def split(usage: dict, prices: dict[str, float] | None) -> tuple[dict[str, int], dict[str, float]]:
    return pricing.split(token_counts(usage), prices)


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


def test_the_default_model_is_the_ga_flagship_and_every_realtime_model_has_its_prices() -> None:
    assert DEFAULT_MODEL == "gpt-realtime-2.1"
    assert BridgeSettings.model_fields["openai_realtime_model"].default == DEFAULT_MODEL
    # OpenAI's model pages, USD per 1M tokens: (text in, cached, out), (audio in, cached, out).
    lineup = {
        "gpt-realtime-2.1": ((4.0, 0.40, 24.0), (32.0, 0.40, 64.0)),
        "gpt-realtime-2.1-mini": ((0.60, 0.06, 2.40), (10.0, 0.30, 20.0)),
        "gpt-realtime-2": ((4.0, 0.40, 24.0), (32.0, 0.40, 64.0)),
        "gpt-realtime-1.5": ((4.0, 0.40, 16.0), (32.0, 0.40, 64.0)),
        "gpt-realtime": ((4.0, 0.40, 16.0), (32.0, 0.40, 64.0)),  # retires January 2027
        "gpt-realtime-mini": ((0.60, 0.06, 2.40), (10.0, 0.30, 20.0)),
    }
    for model, (text, sound) in lineup.items():
        p = DEFAULT_PRICES[model]
        assert (p["text_in"], p["text_cached"], p["text_out"]) == text, model
        assert (p["audio_in"], p["audio_cached"], p["audio_out"]) == sound, model
    assert "gpt-4o-mini-transcribe" in DEFAULT_PRICES


def test_the_split_by_kind_adds_up_to_the_cost() -> None:
    tokens, costs = split(RESPONSE_USAGE, DEFAULT_PRICES[DEFAULT_MODEL])
    assert tokens == {"text_in": 100, "text_cached": 200, "audio_in": 700, "audio_cached": 300,
                      "text_out": 100, "audio_out": 500}  # fmt: skip
    assert costs["text_out"] == pytest.approx(100 * 24.0 / 1e6)
    assert sum(costs.values()) == pytest.approx(cost_usd(RESPONSE_USAGE, DEFAULT_PRICES[DEFAULT_MODEL]))
    assert split(RESPONSE_USAGE, None)[1] == dict.fromkeys(tokens, 0.0)


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
