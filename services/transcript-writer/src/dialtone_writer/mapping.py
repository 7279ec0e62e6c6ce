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


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, Mapping) else {}


def usage_counters(source: str, usage: Mapping[str, Any]) -> dict[str, int]:
    """Flatten one Realtime usage object into the admin API's counters.

    ``response`` usage is ``response.done.response.usage`` (token totals with
    ``input_token_details`` / ``output_token_details``); ``transcription`` usage is the input
    transcription's usage, counted only as ``transcription_tokens`` because it is billed by the
    transcription model, not the conversation model. Already-flat counters (e.g. from a test or a
    future bridge) are accepted as they are.

    Args:
        source: ``"response"`` or ``"transcription"`` (``UsageReported.source``).
        usage: the provider's usage object.

    Returns:
        Every counter of ``USAGE_COUNTERS`` that is non-zero.
    """
    counters = dict.fromkeys(USAGE_COUNTERS, 0)
    if source == "transcription":
        total = _int(usage.get("total_tokens"))
        if not total:
            total = _int(usage.get("input_tokens")) + _int(usage.get("output_tokens"))
        counters["transcription_tokens"] = total or _int(usage.get("transcription_tokens"))
    else:
        inp, out = _details(usage, "input_token_details"), _details(usage, "output_token_details")
        counters["input_tokens"] = _int(usage.get("input_tokens"))
        counters["output_tokens"] = _int(usage.get("output_tokens"))
        counters["input_text_tokens"] = _int(inp.get("text_tokens")) or _int(usage.get("input_text_tokens"))
        counters["input_audio_tokens"] = _int(inp.get("audio_tokens")) or _int(usage.get("input_audio_tokens"))
        counters["cached_tokens"] = _int(inp.get("cached_tokens")) or _int(usage.get("cached_tokens"))
        counters["output_text_tokens"] = _int(out.get("text_tokens")) or _int(usage.get("output_text_tokens"))
        counters["output_audio_tokens"] = (
            _int(out.get("audio_tokens")) or _int(usage.get("output_audio_tokens"))
        )
        counters["responses"] = 1
    return {k: v for k, v in counters.items() if v}


def empty_usage() -> dict[str, int]:
    """Every usage counter at zero, for a call that has reported none yet."""
    return dict.fromkeys(USAGE_COUNTERS, 0)
