"""The figure maths of ``make bench``: pure functions over what the load generator and the
simulators recorded, so they can be unit-tested without a platform.

Every figure is matched by position in the audio, never by guessing which message is which:

* caller -> model: each 20 ms frame the load generator sends is numbered, and the silent frames
  carry their number (and the call's) in the audio itself (:func:`tag_frame`: the sign bits of
  digital silence, so the model still hears silence). A simulator finds frame ``n`` of call ``c``
  at a byte position of its session's input; speech frames, which cannot carry a tag, take their
  number from their distance to the last tagged frame;
* model -> caller: the simulator records when it sent each piece of agent audio and the load
  generator when each media message arrived; byte ``b`` of the agent's audio is matched to byte
  ``b`` at the caller.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# The tags live with the simulators, which read them too (a test call tagged with its script).
from dialtone_sim.audio import TAG_BITS as TAG_BITS
from dialtone_sim.audio import read_tag as read_tag
from dialtone_sim.audio import tag_frame as tag_frame

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_S = 0.02
GRACE_S = 1.0  # audio sent this close before the hang-up may still be on its way: not "lost"


def inbound_frames(audio: bytes | bytearray, appends: Sequence[tuple[float, int]]) -> tuple[int | None, list[tuple[int, float]]]:
    """What one model session received: the call it belongs to and ``(frame_no, monotonic
    arrival)`` of every whole frame, in order.

    Args:
        audio: the session's input audio, every append concatenated.
        appends: ``(monotonic time, cumulative bytes)`` after each append.
    """
    ends = [end for _, end in appends]
    call: int | None = None
    last: tuple[int, int] | None = None  # (frame_no, byte position) of the last tagged frame
    out: list[tuple[int, float]] = []
    view = memoryview(bytes(audio))
    for pos in range(0, len(view) - FRAME_BYTES + 1, FRAME_BYTES):
        tag = read_tag(view[pos : pos + FRAME_BYTES])
        if tag is not None:
            call = tag[0] if call is None else call
            last = (tag[1], pos)
            frame_no = tag[1]
        elif last is not None:
            frame_no = last[0] + (pos - last[1]) // FRAME_BYTES
        else:
            continue  # speech before any tag: cannot be placed
        i = bisect.bisect_left(ends, pos + FRAME_BYTES)
        if i < len(appends):
            out.append((frame_no, appends[i][0]))
    return call, out


def inbound_latency(sent: Sequence[float], received: Iterable[tuple[int, float]], hung_up_at: float,
                    since: float = 0.0) -> tuple[list[float], int]:  # fmt: skip
    """Per frame sent from ``since`` on: sent by the caller -> received by the model, in ms; and the
    frames lost (sent more than :data:`GRACE_S` before the hang-up and never received).

    ``since`` leaves out the frames of the call's set-up: audio sent while the model's session is
    still opening waits for it (by design), which is first-words latency, not per-frame cost."""
    got: dict[int, float] = {}
    for frame_no, at in received:
        got.setdefault(frame_no, at)
    latencies = [(at - sent[n]) * 1000 for n, at in got.items() if 0 <= n < len(sent) and sent[n] >= since]
    lost = sum(1 for n, t in enumerate(sent) if n not in got and t < hung_up_at - GRACE_S)
    return latencies, lost


def outbound_latency(model_sent: Sequence[tuple[float, int]], caller_got: Sequence[tuple[float, int]],
                     hung_up_at: float) -> tuple[list[float], int]:  # fmt: skip
    """Per 20 ms of agent audio: sent by the model -> arrived at the caller, in ms; and the frames
    lost (sent more than :data:`GRACE_S` before the hang-up and never arrived).

    Args:
        model_sent: ``(monotonic time, bytes)`` of every piece of agent audio the model sent.
        caller_got: ``(monotonic time, bytes)`` of every media message the caller received.
    """
    sent_ends, got_ends = _cumulative(model_sent), _cumulative(caller_got)
    total_got = got_ends[-1] if got_ends else 0
    latencies: list[float] = []
    lost = 0
    for i, (at, size) in enumerate(model_sent):
        start = sent_ends[i] - size
        for pos in range(start, sent_ends[i], FRAME_BYTES):
            if pos >= total_got:
                lost += at < hung_up_at - GRACE_S
                continue
            j = bisect.bisect_right(got_ends, pos)
            latencies.append((caller_got[j][0] - at) * 1000)
    return latencies, lost


def _cumulative(pieces: Sequence[tuple[float, int]]) -> list[int]:
    out, total = [], 0
    for _, size in pieces:
        total += size
        out.append(total)
    return out


# ---- statistics ----------------------------------------------------------------------------------
def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def per_call_minute(cpu_s: float, call_minutes: float) -> float:
    return cpu_s / call_minutes if call_minutes > 0 else math.nan


def fmt_ms(value: float | None, width: int = 7) -> str:
    if value is None or math.isnan(value):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.1f}"


# ---- the verdict ----------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What makes ``make bench`` fail (exit 1): the work itself failed, whatever the speed."""

    calls: int = 0
    failed_calls: list[str] = field(default_factory=list)
    lost_in: int = 0
    lost_out: int = 0
    sim_errors: list[str] = field(default_factory=list)
    leaked_sockets: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.failed_calls:
            out.append(f"{len(self.failed_calls)} of {self.calls} calls failed")
        if self.lost_in or self.lost_out:
            out.append(f"frames lost: {self.lost_in} caller -> model, {self.lost_out} model -> caller")
        if self.sim_errors:
            out.append(f"{len(self.sim_errors)} simulator protocol errors")
        if self.leaked_sockets:
            out.append(f"{self.leaked_sockets} model sockets still open after the calls")
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.problems() else 0


@dataclass
class Target:
    """One of the issue's targets: what was measured against the goal; informative (the figures
    depend on the machine), never the exit code."""

    name: str
    value: float
    goal: float
    unit: str = "ms"
    why_not: str = ""  # a target this run could not measure: why, and how to measure it

    @property
    def met(self) -> bool | None:
        return None if math.isnan(self.value) or self.why_not else self.value <= self.goal

    def line(self) -> str:
        if self.why_not:
            return f"  {self.name:<52} not measured: {self.why_not}"
        verdict = {True: "met", False: "NOT met", None: "n/a"}[self.met]
        return f"  {self.name:<52} {self.value:>9.2f} {self.unit:<4} (goal <= {self.goal:g})  {verdict}"
