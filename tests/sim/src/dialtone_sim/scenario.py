"""What the simulated model says: a script of turns.

Each caller utterance the simulator's VAD detects, and each client ``response.create`` that is
not the continuation of a tool call, consumes the next :class:`Turn`. A greeting is a first turn
with ``caller=None``. When the script runs out the model says :attr:`Scenario.fallback_agent`.

A turn is answered by one or more responses (:meth:`Turn.plan`):

- without tools, one response: the ``preamble`` message (if any), then the ``agent`` message;
  two assistant message items in one response, as gpt-realtime-2 does;
- with tools, one response per tool call (the first one spoken after the ``preamble``, i.e.
  speech plus a function call), or all calls in one response with ``parallel_tools``; each is
  continued by the client's ``response.create`` once it has sent the outputs, and the last
  response says ``agent``.

What can go wrong, as it does with the real API, is scripted per turn too: the caller's words
fail to transcribe (``transcription_fails``), the answering response fails (``failures`` times,
``status: failed``) before one completes, or it stops early (``incomplete``: ``max_output_tokens``
or ``content_filter``). ``audio_chunks`` gives the sizes of successive audio deltas (bytes of
8 kHz mu-law, cycled); by default every delta carries the simulator's ``audio_chunk_ms``.

JSON form::

    {"turns": [{"caller": null, "agent": "Hi, how can I help?"},
               {"caller": "Book a table", "agent": "Done.", "preamble": "Let me see.",
                "tools": [{"name": "book", "arguments": {"people": 2}}], "parallel_tools": false,
                "transcription_fails": false, "failures": 0, "incomplete": null,
                "audio_chunks": [37, 800, 1603]}],
     "fallback_agent": "Anything else?", "audio_chunks": []}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .audio import TAG_BITS, find_tag

__all__ = ["Item", "Scenario", "ToolCall", "Turn"]

Incomplete = Literal["max_output_tokens", "content_filter"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model makes before speaking."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One output item of a planned response: a spoken message or a function call."""

    text: str | None = None
    tool: ToolCall | None = None


@dataclass(frozen=True)
class Turn:
    """One exchange: what the caller says (the transcript reported), the tools, the reply.

    Attributes:
        caller: the transcript of the caller's words (None: a turn the caller did not start).
        agent: the spoken answer.
        tools: function calls made before the answer.
        preamble: a short message spoken first, in the same response as the first tool call
            or, without tools, as a message item of its own before the answer.
        parallel_tools: every tool call in one response instead of one response each.
        transcription_fails: the caller's words come back as
            ``conversation.item.input_audio_transcription.failed`` (no text).
        failures: the answering response fails (``status: failed``) this many times; each
            ``response.create`` after a failure tries again.
        incomplete: the answer stops half-way with ``status: incomplete`` and this reason.
        audio_chunks: sizes of this turn's audio deltas (overrides the scenario's).
    """

    caller: str | None
    agent: str
    tools: list[ToolCall] = field(default_factory=list)
    preamble: str | None = None
    parallel_tools: bool = False
    transcription_fails: bool = False
    failures: int = 0
    incomplete: Incomplete | None = None
    audio_chunks: tuple[int, ...] = ()

    def plan(self) -> list[list[Item]]:
        """The output items of each response that answers this turn, in order."""
        preamble = [Item(text=self.preamble)] if self.preamble else []
        calls = [Item(tool=t) for t in self.tools]
        if not calls:
            return [[*preamble, Item(text=self.agent)]]
        if self.parallel_tools:
            tool_responses = [[*preamble, *calls]]
        else:
            tool_responses = [[*preamble, calls[0]]] + [[c] for c in calls[1:]]
        return [*tool_responses, [Item(text=self.agent)]]


@dataclass
class Scenario:
    """An ordered script of turns plus the reply used once it is exhausted."""

    turns: list[Turn] = field(default_factory=list)
    fallback_agent: str = "Is there anything else I can help you with?"
    audio_chunks: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build from the JSON form shown in the module docstring."""
        turns = [
            Turn(
                caller=t.get("caller"),
                agent=t["agent"],
                tools=[ToolCall(c["name"], dict(c.get("arguments", {}))) for c in t.get("tools", [])],
                preamble=t.get("preamble"),
                parallel_tools=bool(t.get("parallel_tools", False)),
                transcription_fails=bool(t.get("transcription_fails", False)),
                failures=int(t.get("failures", 0)),
                incomplete=t.get("incomplete"),
                audio_chunks=tuple(t.get("audio_chunks", ())),
            )
            for t in data.get("turns", [])
        ]
        fallback = data.get("fallback_agent", cls.fallback_agent)
        return cls(turns=turns, fallback_agent=fallback, audio_chunks=tuple(data.get("audio_chunks", ())))

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario JSON file."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def turn(self, index: int) -> Turn:
        """The ``index``-th turn, or a fallback turn past the end of the script."""
        if index < len(self.turns):
            return self.turns[index]
        return Turn(caller=None, agent=self.fallback_agent)


def session_script(shared: Scenario | None, tagged: Scenario | None) -> Scenario:
    """The script a simulator session follows: its tagged call's (:func:`tagged_script`), else the
    simulator's shared ``scenario``, else the empty one."""
    return tagged or shared or Scenario()


def tagged_script(scripts: dict[int, Scenario], heard: bytes | bytearray, data: bytes) -> Scenario | None:
    """The script held in ``scripts`` for the tagged call (``dial(tag=)``) whose tag is in the
    input audio ``data`` just appended to ``heard`` (a tag may span two appends), else None."""
    tag = find_tag(bytes(heard[-(TAG_BITS - 1) :]) + data)
    return scripts.get(tag) if tag is not None else None
