"""Cost of model usage, from the ``usage`` blocks of ``response.done`` and transcriptions.

The one place where tokens meet prices: the bridge prices each usage block by kind with the
configured table (``PRICES``) and publishes tokens and dollars by kind in its ``usage.reported``
event; the writer and the admin API only add those up."""

from __future__ import annotations

from typing import Any


def _n(d: dict[str, Any] | None, key: str) -> int:
    value = (d or {}).get(key) or 0
    return int(value) if isinstance(value, int | float) else 0


KINDS = ("text_in", "text_cached", "audio_in", "audio_cached", "text_out", "audio_out")


def token_counts(usage: dict[str, Any]) -> dict[str, int]:
    """Tokens of one usage block by billing kind (:data:`KINDS`). Cached tokens are a subset of
    input tokens, counted apart from them. A usage with no per-modality details (transcription)
    counts as audio in, text out."""
    inp = usage.get("input_token_details") or {}
    out = usage.get("output_token_details") or {}
    cached = inp.get("cached_tokens_details") or {}
    if inp or out:
        text_in, audio_in = _n(inp, "text_tokens"), _n(inp, "audio_tokens")
        text_cached, audio_cached = _n(cached, "text_tokens"), _n(cached, "audio_tokens")
        if not cached and _n(inp, "cached_tokens"):
            text_cached = min(text_in, _n(inp, "cached_tokens"))
        text_out = _n(out, "text_tokens")
        audio_out = _n(out, "audio_tokens")
        if not out:
            text_out = _n(usage, "output_tokens")
    else:
        text_in, audio_in, text_cached, audio_cached = 0, _n(usage, "input_tokens"), 0, 0
        text_out, audio_out = _n(usage, "output_tokens"), 0
    return {
        "text_in": max(text_in - text_cached, 0), "text_cached": text_cached,
        "audio_in": max(audio_in - audio_cached, 0), "audio_cached": audio_cached,
        "text_out": text_out, "audio_out": audio_out,
    }


def cost_by_kind(usage: dict[str, Any], prices: dict[str, float] | None) -> dict[str, float]:
    """USD of one usage block by billing kind; all zero without prices."""
    prices = prices or {}
    return {kind: n * prices.get(kind, 0) / 1_000_000 for kind, n in token_counts(usage).items()}


def cost_usd(usage: dict[str, Any], prices: dict[str, float] | None) -> float:
    """USD for one usage block. Cached tokens are a subset of input tokens, billed at the cached rate.
    A usage with no per-modality details (transcription) is billed as audio in, text out."""
    if not prices:
        return 0.0
    return round(max(sum(cost_by_kind(usage, prices).values()), 0.0), 8)


def split(usage: dict[str, Any], prices: dict[str, float] | None) -> tuple[dict[str, int], dict[str, float]]:
    """Tokens and USD of one usage block by kind, kinds with no tokens left out (the event's
    ``tokens`` and ``costs``). Dollars are rounded to 1e-12, far below a cent, so they stay exact sums."""
    tokens = {kind: n for kind, n in token_counts(usage).items() if n}
    prices = prices or {}
    return tokens, {kind: round(n * prices.get(kind, 0) / 1_000_000, 12) for kind, n in tokens.items()}
