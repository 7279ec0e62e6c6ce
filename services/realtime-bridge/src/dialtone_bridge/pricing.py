"""Cost of model usage, engine-neutrally: tokens by billing kind (an engine's edge counts them from
its provider's usage blocks) priced by the configured table (``PRICES``).

The one place where tokens meet prices: the bridge prices each usage by kind and publishes tokens
and dollars by kind in its ``usage.reported`` event; the writer and the admin API only add those up."""

from __future__ import annotations

KINDS = ("text_in", "text_cached", "audio_in", "audio_cached", "text_out", "audio_out")
# Engines billed by time (GPT-Live): the price table's ``session_seconds`` is USD per second of
# session, and a usage's seconds are priced and reported under this kind.
SECONDS = "session_seconds"


def cost_by_kind(tokens: dict[str, int], prices: dict[str, float] | None) -> dict[str, float]:
    """USD of tokens by billing kind; all zero without prices."""
    prices = prices or {}
    return {kind: n * prices.get(kind, 0) / 1_000_000 for kind, n in tokens.items()}


def cost_usd(tokens: dict[str, int], prices: dict[str, float] | None) -> float:
    """USD for tokens by kind (cached input tokens billed at the cached rate)."""
    if not prices:
        return 0.0
    return round(max(sum(cost_by_kind(tokens, prices).values()), 0.0), 8)


def split(
    counts: dict[str, int], prices: dict[str, float] | None, seconds: float = 0.0
) -> tuple[dict[str, int], dict[str, float]]:
    """Tokens and USD by kind, kinds with no tokens left out (the event's ``tokens`` and ``costs``).
    ``seconds`` of session are priced per second (:data:`SECONDS`), a cost with no tokens.
    Dollars are rounded to 1e-12, far below a cent, so they stay exact sums."""
    tokens = {kind: n for kind, n in counts.items() if n}
    prices = prices or {}
    costs = {kind: round(n * prices.get(kind, 0) / 1_000_000, 12) for kind, n in tokens.items()}
    if seconds > 0:
        costs[SECONDS] = round(seconds * prices.get(SECONDS, 0), 12)
    return tokens, costs
