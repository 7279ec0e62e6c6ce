"""What the simulated model says: a script of turns.

Each caller utterance the simulator's VAD detects, and each client ``response.create`` that is
not the continuation of a tool call, consumes the next :class:`Turn`. A greeting is a first turn
with ``caller=None``. When the script runs out the model says :attr:`Scenario.fallback_agent`.

JSON form::

    {"turns": [{"caller": null, "agent": "Hi, how can I help?"},
               {"caller": "Book a table", "agent": "Done.",
                "tools": [{"name": "book", "arguments": {"people": 2}}]}],
     "fallback_agent": "Anything else?"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Scenario", "ToolCall", "Turn"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model makes before speaking."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One exchange: what the caller says (the transcript reported), the tools, the reply."""

    caller: str | None
    agent: str
    tools: list[ToolCall] = field(default_factory=list)


@dataclass
class Scenario:
    """An ordered script of turns plus the reply used once it is exhausted."""

    turns: list[Turn] = field(default_factory=list)
    fallback_agent: str = "Is there anything else I can help you with?"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build from the JSON form shown in the module docstring."""
        turns = [
            Turn(
                caller=t.get("caller"),
                agent=t["agent"],
                tools=[ToolCall(c["name"], dict(c.get("arguments", {}))) for c in t.get("tools", [])],
            )
            for t in data.get("turns", [])
        ]
        fallback = data.get("fallback_agent", cls.fallback_agent)
        return cls(turns=turns, fallback_agent=fallback)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario JSON file."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def turn(self, index: int) -> Turn:
        """The ``index``-th turn, or a fallback turn past the end of the script."""
        if index < len(self.turns):
            return self.turns[index]
        return Turn(caller=None, agent=self.fallback_agent)
