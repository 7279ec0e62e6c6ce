"""How much agent audio the caller has actually heard, for barge-in truncation.

Agent audio reaches Twilio faster than real time and waits in its buffer. When the caller
interrupts we must tell the model where its reply was cut (``audio_end_ms``), and that point is
what the caller heard, not what we sent. Echoed marks say "played up to here", but they arrive a
network trip late, so we place everything on the caller's own clock:

* Inbound media timestamps are the caller's clock. A frame reaches us a trip, plus whatever queueing
  or scheduling delayed it, after the caller sent it; the least delayed frame of the last
  ``CLOCK_WINDOW_MS`` sets the clock (a burst of late frames on a busy machine would otherwise set
  it back, and every truncation with it).
* Marks travel on the same ordered stream, so the mark echo that follows a frame stamped ``ts``
  was emitted at caller time ``ts`` (within one frame). That gives an anchor: byte position P had played at caller time T.
* After an anchor, playout goes on in whole 20 ms frames, capped by what was sent. Where the
  estimate is uncertain it errs early: telling the model the caller heard words they did not is
  worse than the reverse.
* A clear sent now reaches the caller one network trip later. The one-way delay comes from a probe
  mark sent while nothing is buffered: its echo returns after exactly one round trip. (The session
  sends one as the call starts. Probing again mid-call would need care: the gateway pads the audio
  it holds to a whole message at every mark, so a probe must never go out while a reply is sent.)
* When audio starts from an empty buffer there is no anchor yet; playout then starts when the first
  chunk lands, i.e. one trip after we sent it.

All positions are byte offsets in the call's outgoing audio (mu-law: 8 bytes per ms).

When the call's stream moves to another gateway, Twilio drops what it still held for the old
stream and echoes none of its marks. ``moved`` says where the caller stopped hearing (on the
caller's clock the old stream stopped at) and rewinds to there: what followed is sent again, to
the new stream, as if for the first time. There it errs late, by less than one 20 ms frame: a
sliver of a word skipped is better than a sliver heard twice.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

BYTES_PER_MS = 8
FRAME_MS = 20
CLOCK_WINDOW_MS = 2000.0  # inbound frames whose least delay sets the caller's clock


@dataclass(slots=True)
class Truncation:
    item_id: str
    audio_end_ms: int
    played_ms: float
    generated_ms: float


class Playout:
    def __init__(self) -> None:
        self.sent = 0  # bytes sent to Twilio so far
        self._items: OrderedDict[str, tuple[int, int]] = OrderedDict()  # item -> (start, bytes)
        self._marks: OrderedDict[str, int] = OrderedDict()  # outstanding mark -> end position
        self._anchor: tuple[float, int] | None = None  # (caller ms, position)
        self._mark_seq = 0
        self._last_ts = 0.0  # caller ms of the latest inbound frame
        # (arrival, arrival - ts) of recent frames, the lags rising from the front: the front's is
        # the least of the window (a sliding minimum, O(1) per frame). Empty until the first frame,
        # never emptied after it (the newest frame is always in the window): the caller's clock.
        self._lags: deque[tuple[float, float]] = deque()
        self.one_way_ms = 0.0
        self._probe: tuple[str, float] | None = None
        self.played_to = 0  # position known played (echoed)
        self._starts: dict[str, float | None] = {}  # item -> caller ms its first audio plays at

    def _plays_at(self, position: int) -> float | None:
        """Caller-clock ms at which the byte at ``position`` plays, playout being continuous from
        the anchor; None before the caller's clock is known."""
        if self._anchor is None:
            return None
        t_anchor, pos = self._anchor
        return max(0.0, t_anchor + (position - pos) / BYTES_PER_MS)

    def item_offset_ms(self, item_id: str) -> float | None:
        """Where ``item_id``'s first audio plays (or played) to the caller, in ms on the caller's
        clock, i.e. Twilio's media timestamps: from the start of the stream."""
        return self._starts.get(item_id)

    # --- caller clock -----------------------------------------------------------------------
    def on_inbound_audio(self, ts_ms: float, wall_ms: float) -> None:
        self._last_ts = ts_ms
        lag, lags = wall_ms - ts_ms, self._lags
        while lags and lags[-1][1] >= lag:
            lags.pop()
        lags.append((wall_ms, lag))
        while lags[0][0] < wall_ms - CLOCK_WINDOW_MS:
            lags.popleft()

    def caller_now(self, wall_ms: float) -> float:
        """Caller-clock time right now: the least delayed recent frame was sent one trip before it
        reached us."""
        if not self._lags:
            return 0.0
        return wall_ms - self._lags[0][1] + self.one_way_ms

    # --- probe ------------------------------------------------------------------------------
    def probe(self, wall_ms: float) -> str | None:
        """A mark to send now to measure the round trip, if nothing is buffered at Twilio."""
        if self._marks or self._probe is not None:
            return None
        name = f"probe-{self._mark_seq}"
        self._mark_seq += 1
        self._probe = (name, wall_ms)
        return name

    # --- outgoing audio ---------------------------------------------------------------------
    def on_audio_sent(self, item_id: str, nbytes: int, wall_ms: float) -> str:
        """Record agent audio sent to Twilio; return the mark name to send right after it."""
        if not self._marks and self._lags:
            # Nothing buffered: this chunk starts playing when it lands, one trip from now.
            self._anchor = (self.caller_now(wall_ms) + self.one_way_ms, self.sent)
        start, size = self._items.get(item_id, (self.sent, 0))
        if item_id not in self._items and self._starts.get(item_id) is None:
            self._starts[item_id] = self._plays_at(start)
        self._items[item_id] = (start, size + nbytes)
        while len(self._items) > 32:
            self._starts.pop(self._items.popitem(last=False)[0], None)
        self.sent += nbytes
        name = f"a{self._mark_seq}"
        self._mark_seq += 1
        self._marks[name] = self.sent
        return name

    def on_mark(self, name: str, wall_ms: float) -> None:
        """Twilio echoed a mark: played (or cleared) up to it."""
        if self._probe is not None and name == self._probe[0]:
            self.one_way_ms = max(0.0, (wall_ms - self._probe[1]) / 2)
            self._probe = None
            return
        pos = self._marks.pop(name, None)
        if pos is None:
            return  # a mark we already wrote off (cleared) or not ours
        # Marks echo in order: any older outstanding mark has played too.
        while self._marks and next(iter(self._marks.values())) <= pos:
            self._marks.popitem(last=False)
        self.played_to = max(self.played_to, pos)
        if self._lags:
            self._anchor = (self._last_ts, pos)

    @property
    def playing(self) -> bool:
        """Audio is still queued at Twilio (a mark is outstanding)."""
        return bool(self._marks)

    def played_position(self, wall_ms: float, *, at_caller_in_ms: float = 0.0) -> int:
        """Estimated position the caller has heard up to, ``at_caller_in_ms`` after now."""
        if self._anchor is None:
            return self.played_to
        t_anchor, pos = self._anchor
        t = self.caller_now(wall_ms) + at_caller_in_ms
        frames = int(max(0.0, t - t_anchor) // FRAME_MS)
        estimate = pos + frames * FRAME_MS * BYTES_PER_MS
        return max(self.played_to, min(estimate, self.sent))

    def interrupt(self, wall_ms: float) -> Truncation | None:
        """The caller barged in. If audio is still queued, return where to truncate (for a clear
        sent now, which reaches the caller one trip later) and forget the queued marks, which the
        clear will echo. None once playback has finished: there is nothing to cut."""
        if not self._marks:
            return None
        played = self.played_position(wall_ms, at_caller_in_ms=self.one_way_ms)
        self._marks.clear()
        self._anchor = None
        self.played_to = self.sent  # everything sent is now played or dropped
        for item_id, (start, size) in reversed(self._items.items()):
            if start <= played or item_id == next(iter(self._items)):
                heard = min(max(played - start, 0), size)
                return Truncation(item_id, heard // BYTES_PER_MS, heard / BYTES_PER_MS, size / BYTES_PER_MS)
        return None

    def moved(self, stopped_ts: float) -> int:
        """The stream moved; the old one stopped at ``stopped_ts`` (caller ms: the end of its last
        frame). Return the position heard by then, and rewind to it: the outstanding marks are
        written off, ``sent`` goes back there and the items end there, so the audio after it is
        sent again as new (resending it extends its items again)."""
        heard = self.sent
        if self._marks and self._anchor is not None:
            t_anchor, pos = self._anchor
            # The anchor's echo came with the frame starting at t_anchor; a frame plays each 20 ms
            # after it, the last one ending at stopped_ts. Counting that first frame whole errs late.
            frames = int(max(0.0, stopped_ts - t_anchor) // FRAME_MS)
            heard = min(self.sent, pos + frames * FRAME_MS * BYTES_PER_MS)
        elif self._marks:
            heard = self.played_to  # no anchor yet: nothing known played beyond the echoes
        heard = max(heard, self.played_to)
        for item_id, (start, size) in list(self._items.items()):
            if start >= heard:
                del self._items[item_id]
            elif start + size > heard:
                self._items[item_id] = (start, heard - start)
        self._marks.clear()
        self._anchor = None
        self._probe = None
        self.sent = self.played_to = heard
        return heard

    def item_generated_ms(self, item_id: str) -> float:
        return self._items.get(item_id, (0, 0))[1] / BYTES_PER_MS
