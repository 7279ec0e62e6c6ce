"""What the simulators saw go wrong, gathered so that the test it happened in fails.

Every simulator object (a :class:`~dialtone_sim.twilio_edge.SimCall`, a
:class:`~dialtone_sim.realtime.RealtimeSimulator`, a :class:`~dialtone_sim.twilio_api.FakeTwilioApi`)
registers itself here when it is made and keeps an append-only list of what it saw go wrong:
protocol errors, events the real service would refuse, events of its own that fail the SDK oracle,
internal errors. A :class:`Watch` attributes those entries to a span of time (one test) with a
watermark per object: an object made during the span counts from its first entry, an older one
(a session-scoped simulator) from where its list stood when the span began.

``dialtone_sim.fixtures`` opens a watch around every test and fails the test on what it finds.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Protocol

__all__ = ["Source", "Watch", "register"]


class Source(Protocol):
    """A simulator that records what went wrong."""

    def sim_errors(self) -> Sequence[str]:
        """Everything recorded so far, oldest first; entries are only ever appended."""
        ...


_known: weakref.WeakSet[Source] = weakref.WeakSet()
_open: list[Watch] = []


def register(source: Source) -> None:
    """Called by each simulator object as it is made."""
    _known.add(source)
    for watch in _open:
        watch._born.append(source)  # held strongly: a call dropped mid-test still gets judged


class Watch:
    """The entries recorded between :meth:`open` and :meth:`close` (or now)."""

    def __init__(self) -> None:
        self._marks: list[tuple[weakref.ref[Source], int]] = []
        self._born: list[Source] = []

    def open(self) -> Watch:
        """Start the span: remember how far every known simulator's list has got."""
        self._marks = [(weakref.ref(s), len(s.sim_errors())) for s in list(_known)]
        self._born = []
        _open.append(self)
        return self

    def errors(self) -> list[str]:
        """What was recorded in the span so far."""
        found: list[str] = []
        for ref, mark in self._marks:
            source = ref()
            if source is not None:
                found += source.sim_errors()[mark:]
        for source in self._born:
            found += source.sim_errors()
        return found

    def close(self) -> list[str]:
        """End the span; returns :meth:`errors`."""
        if self in _open:
            _open.remove(self)
        return self.errors()
