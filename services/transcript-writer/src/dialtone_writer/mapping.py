"""Pure rules for turning call events into rows: status precedence and usage counters.

Kept free of I/O so the rules the dashboard depends on are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Twilio's final call statuses plus the platform's own "transferred". Once a call has one of these,
# a late "ringing" or "in-progress" callback (Twilio does not order its callbacks) must not undo it.
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled", "transferred"})

# Precedence of a status on the session row; within one rank the later status wins.
RANK_IN_PROGRESS = 0
RANK_IMPLIED_BY_END = 1  # "completed" inferred from call.ended: any reported terminal status beats it
RANK_TERMINAL = 2

# The counters of the admin API's usage object (docs/CONTRACTS.md), besides cost_usd.
USAGE_COUNTERS = (
    "input_tokens",
    "output_tokens",
    "input_text_tokens",
    "input_audio_tokens",
    "cached_tokens",
    "output_text_tokens",
    "output_audio_tokens",
    "responses",
    "transcription_tokens",
)


def status_rank(status: str) -> int:
    """The precedence of a reported status: terminal statuses outrank everything else."""
    return RANK_TERMINAL if status in TERMINAL_STATUSES else RANK_IN_PROGRESS


def status_wins(new: tuple[int, Any], current: tuple[int, Any] | None) -> bool:
    """Whether a status ``(rank, at)`` replaces the current one.

    The rule is commutative (the greatest ``(rank, at)`` wins), so the session ends in the same
    state whatever order the events arrive in. SQL applies the same comparison in ``store.py``.
    """
    if current is None or current[1] is None:
        return True
    return new >= current


def _int(value: Any) -> int:
    """A token count from provider JSON; anything that is not a number counts as zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def usage_counters(source: str, tokens: Mapping[str, int]) -> dict[str, int]:
    """One usage event's tokens by billing kind (``UsageReported.tokens``, engine-neutral) as the
    admin API's counters.

    A ``transcription`` counts only as ``transcription_tokens``, because it is billed by the
    transcription model, not the conversation model. Cached tokens are part of the input tokens.

    Args:
        source: ``"response"`` or ``"transcription"`` (``UsageReported.source``).
        tokens: tokens by billing kind.

    Returns:
        Every counter of ``USAGE_COUNTERS`` that is non-zero.
    """
    n = {kind: _int(tokens.get(kind)) for kind in ("text_in", "text_cached", "audio_in", "audio_cached", "text_out", "audio_out")}
    counters = dict.fromkeys(USAGE_COUNTERS, 0)
    if source == "transcription":
        counters["transcription_tokens"] = sum(n.values())
    else:
        counters["input_text_tokens"] = n["text_in"] + n["text_cached"]
        counters["input_audio_tokens"] = n["audio_in"] + n["audio_cached"]
        counters["cached_tokens"] = n["text_cached"] + n["audio_cached"]
        counters["input_tokens"] = counters["input_text_tokens"] + counters["input_audio_tokens"]
        counters["output_text_tokens"] = n["text_out"]
        counters["output_audio_tokens"] = n["audio_out"]
        counters["output_tokens"] = n["text_out"] + n["audio_out"]
        counters["responses"] = 1
    return {k: v for k, v in counters.items() if v}


# The kinds of a session's cost breakdown (docs/CONTRACTS.md, Admin API session JSON, ``cost``).
# ``other`` holds the cost of usage events from bridges older than the split by kind.
COST_KINDS = ("audio_in", "audio_out", "text_in", "text_out", "cached", "transcription", "analysis", "other")
# The bridge's billing kinds (``UsageReported.tokens``/``costs``) in a response's breakdown.
_RESPONSE_KINDS = {
    "audio_in": "audio_in", "audio_out": "audio_out", "text_in": "text_in", "text_out": "text_out",
    "text_cached": "cached", "audio_cached": "cached",
}  # fmt: skip


def cost_breakdown(source: str, tokens: Mapping[str, int], costs: Mapping[str, float], cost_usd: float) -> dict[str, float]:
    """One usage event's share of the session's cost breakdown, as ``<kind>_usd`` and
    ``<kind>_tokens`` for the kinds of :data:`COST_KINDS` it has. No arithmetic on prices here:
    the bridge priced every kind (``costs``); this only files them under the breakdown's kinds
    (a transcription is one kind; cached text and audio tokens are ``cached``).

    Args:
        source: ``"response"`` or ``"transcription"``.
        tokens: tokens by billing kind (``UsageReported.tokens``).
        costs: USD by billing kind (``UsageReported.costs``); empty from an older bridge.
        cost_usd: the event's total, used alone when ``costs`` is empty.
    """
    out: dict[str, float] = {}

    def add(kind: str, usd: float, n: int) -> None:
        out[f"{kind}_usd"] = out.get(f"{kind}_usd", 0.0) + usd
        out[f"{kind}_tokens"] = out.get(f"{kind}_tokens", 0) + n

    if not costs:
        if cost_usd or tokens:
            add("transcription" if source == "transcription" else "other", cost_usd, sum(tokens.values()))
        return out
    for kind in sorted(set(costs) | set(tokens)):
        usd, n = float(costs.get(kind, 0.0)), _int(tokens.get(kind, 0))
        add("transcription" if source == "transcription" else _RESPONSE_KINDS.get(kind, "other"), usd, n)
    return out


def empty_usage() -> dict[str, int]:
    """Every usage counter at zero, for a call that has reported none yet."""
    return dict.fromkeys(USAGE_COUNTERS, 0)
