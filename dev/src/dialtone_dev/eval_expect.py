"""Judging a test call: each expectation of a scenario against the call's session, as the admin
API serves it (``GET /sessions/{call_sid}``), so a test reads exactly what an operator sees.

Every check says what it expected and, when it fails, what happened instead, in words an
operator reads in a CI log (``outcome: expected 'refund_issued', got 'transferred'``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from dialtone_dev.eval_scenarios import Expectations, ToolExpectation

__all__ = ["Check", "check_session", "subset"]

# end_reason values that mean the caller's side ended the call, not the agent.
CALLER_ENDED = frozenset({"caller_hangup", "stream_closed"})


@dataclass(frozen=True)
class Check:
    """One expectation's verdict. ``actual`` is what happened (shown when it failed)."""

    name: str
    passed: bool
    expected: str
    actual: str = ""
    reasoning: str | None = None  # an LLM judge's

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def subset(expected: Any, actual: Any) -> bool:
    """Whether ``expected`` is contained in ``actual``: dict keys recursively, lists item by item,
    strings case-insensitively (a model may capitalise an order number), else equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            subset(e, a) for e, a in zip(expected, actual, strict=True))  # fmt: skip
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.casefold() == actual.casefold()
    return bool(expected == actual)


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _agent_lines(session: dict[str, Any]) -> list[str]:
    return [line.get("full_text") or line.get("text") or "" for line in session.get("transcript") or []
            if line.get("role") == "agent"]  # fmt: skip


def _tool_checks(expect: Expectations, calls: list[dict[str, Any]]) -> list[Check]:
    checks = []
    made = ", ".join(f"{c['name']}({_short(c.get('arguments'), 60)})" for c in calls) or "no tool calls"
    for wanted in expect.tools_called:
        want = wanted if isinstance(wanted, ToolExpectation) else ToolExpectation(name=wanted)
        label = want.name + (f" with {_short(want.arguments)}" if want.arguments else "")
        matched = any(c["name"] == want.name and subset(want.arguments, c.get("arguments") or {}) for c in calls)
        checks.append(Check(f"tool called: {want.name}", matched, label, "" if matched else made))
    for name in expect.tools_not_called:
        count = sum(1 for c in calls if c["name"] == name)
        checks.append(Check(f"tool not called: {name}", count == 0, f"{name} never called",
                            "" if count == 0 else f"called {count} time(s)"))  # fmt: skip
    return checks


def check_session(expect: Expectations, session: dict[str, Any]) -> list[Check]:
    """Every expectation but the LLM criteria (:mod:`dialtone_dev.eval_judge`), judged on ``session``."""
    checks = _tool_checks(expect, session.get("tool_calls") or [])
    end_reason = session.get("end_reason")
    if expect.outcome is not None:
        got = session.get("outcome")
        checks.append(Check("outcome", (got or "").casefold() == expect.outcome.casefold(), repr(expect.outcome),
                            f"got {got!r}"))  # fmt: skip
    if expect.transferred is not None:
        transferred = bool(session.get("transferred_to")) or end_reason == "transferred"
        checks.append(Check("transferred", transferred == expect.transferred,
                            "transferred" if expect.transferred else "not transferred",
                            f"transferred to {session.get('transferred_to')}" if transferred
                            else f"not transferred (ended: {end_reason})"))  # fmt: skip
    if expect.ended_by_agent is not None:
        by_agent = end_reason is not None and end_reason not in CALLER_ENDED and end_reason != "transferred"
        checks.append(Check("ended by agent", by_agent == expect.ended_by_agent,
                            "the agent ended the call" if expect.ended_by_agent else "the caller ended the call",
                            f"end reason {end_reason!r}"))  # fmt: skip
    if expect.handed_off_to is not None:
        to = [h.get("to_agent") for h in session.get("agents") or []]
        checks.append(Check("handed off", expect.handed_off_to in to, f"handoff to {expect.handed_off_to}",
                            f"handoffs: {to or 'none'}"))  # fmt: skip
    lines = _agent_lines(session)
    for pattern in expect.said:
        rx = re.compile(pattern, re.IGNORECASE)
        hit = any(rx.search(line) for line in lines)
        checks.append(Check(f"said /{pattern}/", hit, f"an agent line matches /{pattern}/",
                            "" if hit else "agent said: " + _short(" | ".join(lines) or "(nothing)", 300)))  # fmt: skip
    for pattern in expect.never_said:
        rx = re.compile(pattern, re.IGNORECASE)
        bad = [line for line in lines if rx.search(line)]
        checks.append(Check(f"never said /{pattern}/", not bad, f"no agent line matches /{pattern}/",
                            "" if not bad else "agent said: " + _short(bad[0])))  # fmt: skip
    if expect.turn_latency_p95_ms is not None:
        p95 = (session.get("latency") or {}).get("sent_p95")
        ok = p95 is not None and p95 <= expect.turn_latency_p95_ms
        checks.append(Check("turn latency p95", ok, f"<= {expect.turn_latency_p95_ms:g} ms",
                            "no turns measured" if p95 is None else f"{p95:.0f} ms"))  # fmt: skip
    if expect.max_duration_s is not None:
        duration = session.get("duration_s")
        ok = duration is not None and float(duration) <= expect.max_duration_s
        checks.append(Check("max duration", ok, f"<= {expect.max_duration_s:g} s",
                            "unknown" if duration is None else f"{float(duration):.1f} s"))  # fmt: skip
    return checks
