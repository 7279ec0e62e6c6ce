"""``Playout``: where to cut the agent's reply when the caller barges in.

The key property, checked in a deterministic simulation of the phone line (no real time): when the
bridge calls ``interrupt()`` at some moment, the ``audio_end_ms`` it returns is within 40 ms of
what the caller had really heard when the ``clear`` sent at that moment reaches Twilio.

The simulated line:

* two clocks: the caller's (Twilio's media timestamps) and the bridge's; the bridge clock reads
  ``OFFSET + c`` when the caller clock reads ``c``;
* a one-way delay ``d`` both ways between bridge and Twilio;
* Twilio sends a 20 ms inbound frame stamped ``ts`` at caller time ``ts``;
* Twilio plays its buffer at 8 bytes/ms from when audio lands, echoes a mark when every byte before
  it has played (at once when nothing is buffered), and on ``clear`` drops the buffer and echoes
  every pending mark; echoes travel back on the inbound stream, so they arrive ``d`` later in
  order with the frames.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from dialtone_bridge.playout import Playout, Truncation

pytestmark = pytest.mark.unit

OFFSET = 7_321.3  # bridge ms when the caller's clock reads 0 (any value: the clocks are unrelated)
FRAME_MS = 20
TOLERANCE_MS = 40


@dataclass
class Segment:
    item: str
    start: float  # caller ms when its first byte plays
    nbytes: int


@dataclass
class Line:
    """Bridge <-> Twilio <-> caller, driven by a discrete event queue on the bridge's clock."""

    d: float
    playout: Playout
    tick_echoes: bool = False  # Twilio echoes played marks on its 20 ms frame boundaries
    now: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    buffer_end: float = -math.inf  # caller ms when Twilio's buffer runs dry
    pending: dict[str, float] = field(default_factory=dict)  # mark at Twilio -> caller ms it echoes
    echoed: list[str] = field(default_factory=list)  # marks echoed back to the bridge, in order
    _queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    # --- clocks ---------------------------------------------------------------------------------
    def caller(self, wall: float) -> float:
        return wall - OFFSET

    def at(self, wall: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (wall, next(self._seq), action))

    def run_until(self, wall: float) -> None:
        while self._queue and self._queue[0][0] <= wall:
            self.now, _, action = heapq.heappop(self._queue)
            action()
        self.now = wall

    def start_inbound(self, ts: int = 0) -> None:
        """Twilio's inbound frames, for as long as the simulation runs (each schedules the next)."""

        def deliver() -> None:
            self.playout.on_inbound_audio(ts, self.now)
            self.start_inbound(ts + FRAME_MS)

        self.at(ts + OFFSET + self.d, deliver)

    # --- the bridge sends -----------------------------------------------------------------------
    def send_probe(self) -> None:
        name = self.playout.probe(self.now)
        assert name is not None
        self._mark_lands(name, self.caller(self.now) + self.d)

    def send_audio(self, item: str, nbytes: int) -> str:
        mark = self.playout.on_audio_sent(item, nbytes, self.now)
        lands = self.caller(self.now) + self.d
        start = max(lands, self.buffer_end)
        self.segments.append(Segment(item, start, nbytes))
        self.buffer_end = start + nbytes / 8
        self._mark_lands(mark, lands)
        return mark

    def send_clear(self) -> None:
        lands = self.caller(self.now) + self.d
        for seg in self.segments:
            seg.nbytes = min(seg.nbytes, max(0, int((lands - seg.start) * 8)))
        self.buffer_end = lands
        for name, emit in list(self.pending.items()):
            if emit > lands:
                self._echo_at(name, lands)

    # --- Twilio ---------------------------------------------------------------------------------
    def _mark_lands(self, name: str, lands: float) -> None:
        emit = max(lands, self.buffer_end)
        if emit > lands and self.tick_echoes:
            emit = math.ceil(emit / FRAME_MS) * FRAME_MS
        self._echo_at(name, emit)

    def _echo_at(self, name: str, emit: float) -> None:
        self.pending[name] = emit

        def deliver() -> None:
            if self.pending.get(name) != emit:
                return  # superseded by a clear
            del self.pending[name]
            self.echoed.append(name)
            self.playout.on_mark(name, self.now)

        # Same path and delay as the inbound frames; a frame sent at the same instant goes first.
        self.at(emit + OFFSET + self.d + 1e-6, deliver)

    # --- the caller's ear -----------------------------------------------------------------------
    def heard_ms(self, item: str, caller_ms: float) -> float:
        played = sum(min(s.nbytes, max(0.0, (caller_ms - s.start) * 8)) for s in self.segments if s.item == item)
        return played / 8


def _line(d: float, *, tick_echoes: bool = False) -> Line:
    """A line whose round trip has been measured and whose inbound clock is running."""
    line = Line(d=d, playout=Playout(), tick_echoes=tick_echoes)
    line.start_inbound()
    line.run_until(OFFSET + 200)
    line.send_probe()
    line.run_until(OFFSET + 500)
    assert line.playout.one_way_ms == pytest.approx(d)
    return line


@dataclass
class Reply:
    """The model's audio for one item, as the bridge forwards it."""

    marks: list[str] = field(default_factory=list)
    last_send: float = 0.0  # bridge ms of the last chunk
    cancelled: bool = False  # the bridge drops the audio of a reply the caller interrupted


def _speak(line: Line, item: str, start_wall: float, total_ms: int, rng: random.Random) -> Reply:
    """Schedule a reply generated faster than real time: chunks of 20-300 ms every 5-60 ms."""
    reply = Reply()

    def send(nbytes: int) -> None:
        if not reply.cancelled:
            reply.marks.append(line.send_audio(item, nbytes))

    wall, left = start_wall, total_ms * 8
    while left > 0:
        nbytes = min(left, rng.choice([160, 480, 800, 1200, 2400]))
        line.at(wall, lambda n=nbytes: send(n))
        reply.last_send = wall
        left -= nbytes
        wall += rng.uniform(5, 60)
    return reply


def _barge_in(line: Line, wall: float) -> tuple[Truncation | None, float]:
    """Run to ``wall``, interrupt, send the clear; return the cut and when the clear lands."""
    line.run_until(wall)
    cut = line.playout.interrupt(line.now)
    if cut is not None:
        line.send_clear()
    return cut, line.caller(wall) + line.d


def _moments(seed: int, n: int, lo: float, hi: float) -> list[float]:
    rng = random.Random(seed)
    return sorted(rng.uniform(lo, hi) for _ in range(n))


REPLY_MS = 4000
REPLY_AT = OFFSET + 1000


@pytest.mark.parametrize("tick_echoes", [False, True], ids=["exact-echoes", "20ms-echoes"])
@pytest.mark.parametrize("d", [20, 60, 80])
def test_interrupt_cuts_where_the_caller_stopped_hearing(d: float, tick_echoes: bool) -> None:
    # Moments from before the first chunk lands until well after the reply finished playing.
    for i, moment in enumerate(_moments(seed=d, n=40, lo=REPLY_AT - 20, hi=REPLY_AT + REPLY_MS + 4 * d + 200)):
        line = _line(d, tick_echoes=tick_echoes)
        rng = random.Random(1000 * d + i)
        _speak(line, "item_A", REPLY_AT + rng.uniform(0, FRAME_MS), REPLY_MS, rng)

        cut, clear_lands = _barge_in(line, moment)

        heard = line.heard_ms("item_A", clear_lands)
        if cut is None:
            # Nothing to cut: every mark had come back, so the caller heard all that was sent.
            assert not line.pending
            assert heard == line.playout.item_generated_ms("item_A")
            continue
        assert cut.item_id == "item_A"
        assert abs(cut.audio_end_ms - heard) <= TOLERANCE_MS, (
            f"d={d} barge-in at +{moment - REPLY_AT:.0f} ms: cut at {cut.audio_end_ms} ms, caller heard {heard:.0f} ms"
        )
        assert 0 <= cut.audio_end_ms <= cut.generated_ms
        assert cut.generated_ms == pytest.approx(line.playout.item_generated_ms("item_A"))


@pytest.mark.parametrize("d", [20, 60, 80])
def test_interrupt_mid_stream_while_audio_is_still_arriving(d: float) -> None:
    # Barge in while the model is still generating: the cut must not exceed what was generated
    # so far (truncating past the generated audio is an API error).
    for i, moment in enumerate(_moments(seed=7 + d, n=20, lo=REPLY_AT, hi=REPLY_AT + 300)):
        line = _line(d)
        _speak(line, "item_A", REPLY_AT, REPLY_MS, random.Random(i))

        cut, clear_lands = _barge_in(line, moment)

        if cut is None:
            continue  # nothing sent yet
        assert cut.audio_end_ms <= line.playout.item_generated_ms("item_A")
        assert abs(cut.audio_end_ms - line.heard_ms("item_A", clear_lands)) <= TOLERANCE_MS


@pytest.mark.parametrize("d", [20, 60, 80])
def test_interrupt_after_a_reply_stalled_and_resumed(d: float) -> None:
    # The model pauses mid-reply (a slow tool): Twilio's buffer runs dry, every mark comes back,
    # then the same item resumes from an empty buffer.
    for i, moment in enumerate(_moments(seed=300 + d, n=20, lo=REPLY_AT + 2000, hi=REPLY_AT + 5000)):
        line = _line(d)
        _speak(line, "item_A", REPLY_AT, 500, random.Random(i))
        _speak(line, "item_A", REPLY_AT + 2000 + random.Random(i).uniform(0, FRAME_MS), 2500, random.Random(i + 1))

        cut, clear_lands = _barge_in(line, moment)

        heard = line.heard_ms("item_A", clear_lands)
        if cut is None:
            assert heard == line.playout.item_generated_ms("item_A")
            continue
        assert abs(cut.audio_end_ms - heard) <= TOLERANCE_MS, f"d={d} at +{moment - REPLY_AT:.0f} ms"
        assert cut.audio_end_ms <= cut.generated_ms


@pytest.mark.parametrize("d", [20, 60, 80])
def test_interrupt_returns_none_once_playback_finished(d: float) -> None:
    line = _line(d)
    marks = _speak(line, "item_A", REPLY_AT, 1000, random.Random(3)).marks
    line.run_until(REPLY_AT + 10_000)

    assert line.echoed[-len(marks):] == marks
    assert not line.playout.playing
    assert line.playout.interrupt(line.now) is None


def test_interrupt_just_before_the_last_echo_cuts_at_the_end_at_most() -> None:
    d = 80
    line = _line(d)
    _speak(line, "item_A", REPLY_AT, 1000, random.Random(4))
    line.run_until(REPLY_AT + 5000)
    last_end = max(s.start + s.nbytes / 8 for s in line.segments)
    line2 = _line(d)
    _speak(line2, "item_A", REPLY_AT, 1000, random.Random(4))

    # The caller has heard everything; the last echo is still on its way back.
    cut, _ = _barge_in(line2, last_end + OFFSET + d)

    assert cut is not None
    assert cut.audio_end_ms == 1000 == cut.generated_ms


@pytest.mark.parametrize("d", [20, 60, 80])
def test_echoes_of_cleared_marks_are_ignored(d: float) -> None:
    for i, moment in enumerate(_moments(seed=100 + d, n=10, lo=REPLY_AT + 500, hi=REPLY_AT + 2500)):
        line = _line(d)
        reply_a = _speak(line, "item_A", REPLY_AT, REPLY_MS, random.Random(i))
        cut, _ = _barge_in(line, moment)
        reply_a.cancelled = True
        assert cut is not None and cut.item_id == "item_A"
        assert not line.playout.playing  # the agent is no longer speaking, as far as the bridge knows

        # The next reply starts at once, so the cleared marks' echoes come back while it plays.
        reply_b = moment + 5
        _speak(line, "item_B", reply_b, 3000, random.Random(50 + i))
        line.run_until(moment + 2 * d + 10)
        assert line.playout.playing  # stale echoes did not end item_B

        second = moment + 2 * d + 10 + random.Random(i).uniform(0, 1500)
        cut_b, clear_lands = _barge_in(line, second)

        assert cut_b is not None and cut_b.item_id == "item_B"
        assert abs(cut_b.audio_end_ms - line.heard_ms("item_B", clear_lands)) <= TOLERANCE_MS
        assert cut_b.audio_end_ms <= cut_b.generated_ms


def test_a_second_interrupt_without_new_audio_does_nothing() -> None:
    line = _line(60)
    _speak(line, "item_A", REPLY_AT, REPLY_MS, random.Random(0))

    assert _barge_in(line, REPLY_AT + 1500)[0] is not None
    assert _barge_in(line, REPLY_AT + 1520)[0] is None


def test_interrupt_before_any_agent_audio_does_nothing() -> None:
    line = _line(60)

    assert line.playout.interrupt(line.now) is None


def test_the_probe_is_only_sent_when_nothing_is_buffered() -> None:
    line = _line(60)
    assert line.playout.probe(line.now) is not None  # nothing buffered: a probe may go out
    line2 = _line(60)
    _speak(line2, "item_A", REPLY_AT, REPLY_MS, random.Random(0))
    line2.run_until(REPLY_AT + 100)

    assert line2.playout.probe(line2.now) is None  # marks outstanding: the echo would not be a round trip


def test_a_burst_of_late_frames_does_not_set_the_callers_clock_back() -> None:
    """Frames every 20 ms arrive 30 ms after they were sent; then, the bridge's loop stalled, a
    burst arrives 150 ms late at once: the caller's clock is still the least delayed frame's."""
    playout = Playout()
    for n in range(50):
        playout.on_inbound_audio(n * 20, n * 20 + 30)
    assert playout.caller_now(1020) == 990  # ts 980 arrived at 1010; 10 ms later
    for n in range(50, 55):
        playout.on_inbound_audio(n * 20, 1250)  # ts 1000..1080, all reaching us at 1250
    assert playout.caller_now(1250) == 1220  # not 1080, as the latest frame alone would say
    for n in range(55, 200):  # the least delayed frame ages out of the window: the path got slower
        playout.on_inbound_audio(n * 20, n * 20 + 80)
    assert playout.caller_now(199 * 20 + 80) == 199 * 20


def test_the_cut_names_the_reply_the_caller_was_hearing() -> None:
    # Two replies queued back to back; the caller is still in the first when they barge in.
    d = 60
    line = _line(d)
    reply_a = _speak(line, "item_A", REPLY_AT, 2000, random.Random(1))
    _speak(line, "item_B", reply_a.last_send + 10, 2000, random.Random(2))
    line.run_until(reply_a.last_send + 20)
    assert line.now < REPLY_AT + 1000
    assert line.playout.item_generated_ms("item_B") > 0  # both replies are queued at Twilio

    cut, clear_lands = _barge_in(line, REPLY_AT + 1000)

    assert cut is not None and cut.item_id == "item_A"
    assert abs(cut.audio_end_ms - line.heard_ms("item_A", clear_lands)) <= TOLERANCE_MS
    assert line.heard_ms("item_B", clear_lands) == 0


def _line_with_anchor() -> tuple[Playout, list[str]]:
    """600 ms sent in three 200 ms chunks (items i1, i1, i2); the first echoed with the frame
    stamped 1000 ms: the anchor is (1000 ms, 1600)."""
    p = Playout()
    p.on_inbound_audio(980.0, 0.0)
    marks = [p.on_audio_sent("i1", 1600, 1.0), p.on_audio_sent("i1", 1600, 2.0), p.on_audio_sent("i2", 1600, 3.0)]
    p.on_inbound_audio(1000.0, 200.0)
    p.on_mark(marks[0], 200.0)
    return p, marks


def test_a_move_rewinds_to_what_the_caller_heard_erring_late_by_less_than_a_frame() -> None:
    p, marks = _line_with_anchor()
    start = p.item_offset_ms("i2")
    # The old stream's last frame ends at 1060 ms: frames of 1000, 1020 and 1040 ms played after
    # the anchor (counting the anchor's own frame whole: late by less than one frame).
    assert p.moved(1060.0) == 1600 + 3 * 160
    assert p.sent == p.played_to == 2080 and not p.playing
    p.on_mark(marks[1], 300.0)  # an echo of the old stream, should one still come: ignored
    assert p.sent == 2080
    # Sent again: the items go on where they were cut, and keep where they first played.
    p.on_audio_sent("i1", 1120, 310.0)
    p.on_audio_sent("i2", 1600, 311.0)
    assert p.item_generated_ms("i1") == 400 and p.item_generated_ms("i2") == 200
    assert p.item_offset_ms("i2") == start and p.playing


@pytest.mark.parametrize(("stopped_ts", "heard"), [(99_999.0, 4800), (900.0, 1600)])
def test_a_move_never_goes_past_what_was_sent_nor_before_what_was_echoed(stopped_ts: float, heard: int) -> None:
    p, _ = _line_with_anchor()
    assert p.moved(stopped_ts) == heard


def test_a_move_with_nothing_queued_or_no_echo_yet() -> None:
    idle = Playout()
    idle.on_inbound_audio(0.0, 0.0)
    mark = idle.on_audio_sent("i1", 800, 0.0)
    idle.on_mark(mark, 150.0)
    assert idle.moved(500.0) == 800  # all played: nothing to send again
    unknown = Playout()  # no caller frame yet, nothing echoed: nothing is known heard
    unknown.on_audio_sent("i1", 800, 0.0)
    assert unknown.moved(500.0) == 0 and unknown.sent == 0
