"""The recorder's model of what the caller heard, against the Twilio simulator's own playout, on
randomized timelines (network delays, bursts of agent audio, gaps, clears), sample by sample."""

from __future__ import annotations

import heapq
import random
from pathlib import Path

import pytest
from dialtone_sim.playout import Playout
from dialtone_writer.recorder_audio import (
    FRAME,
    SILENCE,
    XOR,
    CallAudio,
    Spool,
    build_wav,
    read_wav,
    to_pcm16,
)

pytestmark = pytest.mark.unit


class Timeline:
    """A discrete-event run of one call: the simulator's clock, a gateway, and the recorder."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list = []
        self.n = 0
        self.placed: dict[int, int] = {}  # recorder: sample position -> mu-law byte (agent)
        self.heard: dict[int, int] = {}  # simulator: sample position -> mu-law byte played
        self.audio = CallAudio(self._sink)
        self.pending = bytearray()  # the gateway's coalescing (its rules, written out again)
        self.playout = Playout(self._echo)
        self.tick_no = 0
        self.d_in = self.rng.uniform(0.2, 6)  # simulator -> gateway -> recorder
        self.d_out = self.rng.uniform(0.2, 6)  # gateway -> simulator

    def _sink(self, channel: str, pos: int, data: bytes) -> None:
        if channel == "out":
            for i, b in enumerate(data):
                assert pos + i not in self.placed, "agent audio placed twice at one position"
                self.placed[pos + i] = b

    def at(self, t: float, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.n += 1
        heapq.heappush(self.events, (t, self.n, fn, args))

    def _echo(self, name: str) -> None:
        self.at(self.now + self.d_in, self._caller_mark, name)

    def _caller_mark(self, name: str) -> None:
        self.audio.caller_mark(name, self.now / 1000)

    def _caller_audio(self, ts: int) -> None:
        self.audio.caller_audio(ts, bytes([0xFF]) * FRAME, self.now / 1000)

    # simulator
    def tick(self, k: int) -> None:
        self.at(self.now + self.d_in, self._caller_audio, 20 * k)
        before = len(self.playout.heard)
        self.playout.tick()
        for i, b in enumerate(self.playout.heard[before:]):
            self.heard[k * FRAME + i] = b

    # bridge -> gateway (and the recorder, which hears the same subject)
    def bridge_audio(self, data: bytes, mark: str) -> None:
        self.audio.agent_audio(data, self.now / 1000)
        self.audio.agent_mark(mark, self.now / 1000)
        self.pending += data
        if len(self.pending) < 320:
            self.pending += bytes([0xFF]) * (320 - len(self.pending))
        payload, self.pending = bytes(self.pending), bytearray()
        self.at(self.now + self.d_out, self.playout.add_audio, payload)
        self.at(self.now + self.d_out, self.playout.add_mark, mark)

    def bridge_clear(self) -> None:
        self.audio.agent_clear(self.now / 1000)
        self.pending.clear()
        self.at(self.now + self.d_out, self.playout.clear)

    def bridge_probe(self) -> None:
        self.audio.agent_mark("probe", self.now / 1000)
        self.at(self.now + self.d_out, self.playout.add_mark, "probe")

    def run(self, until_ms: float) -> None:
        self.at(30, self.bridge_probe)
        for k in range(int(until_ms // 20)):
            self.at(20 * k, self.tick, k)
        while self.events:
            self.now, _, fn, args = heapq.heappop(self.events)
            fn(*args)
        self.audio.finish()


def _speech(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choice([b for b in range(256) if b not in (0x7F, 0xFF)]) for _ in range(n))


@pytest.mark.parametrize("seed", range(16))
def test_the_agent_channel_is_what_the_caller_heard_where_they_heard_it(seed: int) -> None:
    line = Timeline(seed)
    rng = line.rng
    t, mark = 200.0, 0
    while t < 9000:
        # An utterance: chunks sent faster than real time (or about real time), maybe cut by a clear.
        size = rng.choice([160, 320, 480, 500, 800, 1200, 961])
        for _ in range(rng.randint(1, 12)):
            data = _speech(rng, rng.choice([size, rng.randint(40, 2000)]))
            line.at(t, line.bridge_audio, data, f"a{mark}")
            mark += 1
            t += rng.choice([1.0, 5.0, len(data) / 8 * rng.uniform(0.3, 1.2)])
        if rng.random() < 0.4:
            line.at(t + rng.uniform(0, 1500), line.bridge_clear)
        t += rng.uniform(100, 2500)
    line.run(12000)
    assert line.heard, "the simulator played nothing"
    assert line.placed == line.heard


def test_a_short_tail_is_padded_as_the_gateway_pads_it() -> None:
    out: list[tuple[str, int, bytes]] = []
    audio = CallAudio(lambda ch, pos, data: out.append((ch, pos, data)))
    for k in range(5):
        audio.caller_audio(20 * k, b"\x01" * FRAME)
    audio.agent_audio(b"\x10" * 100, 0.0)  # 12.5 ms: padded to 40 ms before the mark
    audio.agent_mark("a0", 0.0)
    for k in range(5, 7):
        audio.caller_audio(20 * k, b"\x01" * FRAME)
    audio.caller_mark("a0")
    agent = [(pos, data) for ch, pos, data in out if ch == "out"]
    assert agent == [(5 * FRAME, b"\x10" * 100 + b"\xff" * 220)]


def test_a_moved_stream_keeps_what_played_until_its_stop_and_nothing_after() -> None:
    """The stream moved: the chunk queued at Twilio played until the old stream's last caller
    frame and no further; what the bridge sends again to the new stream follows it, once."""
    out: list[tuple[str, int, bytes]] = []
    audio = CallAudio(lambda ch, pos, data: out.append((ch, pos, data)))
    audio.caller_audio(0, b"\x01" * FRAME)
    audio.agent_audio(b"\x10" * 1600, 0.0)  # 200 ms, queued behind nothing
    audio.agent_mark("a0", 0.0)
    audio.agent_audio(b"\x11" * 100, 0.0)  # the old gateway's unsent tail: never played
    for k in range(1, 5):
        audio.caller_audio(20 * k, b"\x01" * FRAME)  # the old stream's last frame ends at 100 ms
    audio.moved()
    for k in range(30, 33):  # the new stream, after a 500 ms gap on the call's clock
        audio.caller_audio(20 * k, b"\x01" * FRAME)
    audio.agent_audio(b"\x12" * 800, 0.0)  # the unheard rest, sent again
    audio.agent_mark("a1", 0.0)
    for k in range(33, 40):
        audio.caller_audio(20 * k, b"\x01" * FRAME)
    audio.caller_mark("a1")
    audio.caller_mark("a0")  # a late echo of the old stream's mark changes nothing
    agent = [(pos, data) for ch, pos, data in out if ch == "out"]
    assert agent[0] == (FRAME, b"\x10" * 640)  # from its arrival, after the first frame, to the stop
    assert len(agent) == 2 and agent[1][1] == b"\x12" * 800 and agent[1][0] >= 33 * FRAME


def test_the_wav_is_stereo_caller_left_agent_right(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.lock()
    spool.write("in", 0, bytes(range(256)))
    spool.write("out", 400, b"\x00\x80")
    spool.flush()
    built = build_wav(spool.dir, tmp_path / "r.wav")
    left, right = read_wav(built.path)
    assert len(left) == len(right) == 402 == built.samples
    assert bytes(to_pcm16(bytes(range(256)))) == b"".join(v.to_bytes(2, "little", signed=True) for v in left[:256])
    assert left[256:] == [0] * 146  # a hole is silence
    assert right[:400] == [0] * 400 and right[400] == -32124 and right[401] == 32124
    assert built.peaks["in"][0] > 0.9 and built.bytes == (tmp_path / "r.wav").stat().st_size
    assert oct((tmp_path / "r.wav").stat().st_mode & 0o777) == "0o600"
    other = Spool(tmp_path / "spool")
    assert not other.lock(), "a live holder keeps the spool"


def test_the_spools_positions_are_written_in_place_and_the_rest_only_when_it_changes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.lock()
    meta = {"caller_end": 8000, "play_pos": 4000, "next_in_seq": 50, "reasons": [], "owner": "w1", "ended": None}
    spool.write_meta(meta)
    renamed_at = (spool.dir / "meta.json").stat().st_mtime_ns
    for second in range(2, 6):  # the call goes on: only the positions move
        spool.write_meta({**meta, "caller_end": 8000 * second, "play_pos": 4000 * second, "next_in_seq": 50 * second})
    assert (spool.dir / "meta.json").stat().st_mtime_ns == renamed_at  # not rewritten
    assert spool.read_meta() == {**meta, "caller_end": 40000, "play_pos": 20000, "next_in_seq": 250}
    spool.write_meta({**meta, "caller_end": 48000, "reasons": ["a recorder stopped"], "next_in_seq": None})
    assert Spool(spool.dir).read_meta()["reasons"] == ["a recorder stopped"]  # another process sees it all
    assert Spool(spool.dir).read_meta()["next_in_seq"] is None and Spool(spool.dir).read_meta()["caller_end"] == 48000
    spool.write_meta({**meta, "caller_end": 56000, "reasons": ["a recorder stopped"], "next_in_seq": 300})
    assert Spool(spool.dir).read_meta()["caller_end"] == 56000
    # A torn positions record (a crash mid-write) is refused: meta.json's own, older, positions stand.
    record = bytearray((spool.dir / "positions").read_bytes())
    record[3] ^= 0xFF
    (spool.dir / "positions").write_bytes(bytes(record))
    assert Spool(spool.dir).read_meta()["caller_end"] == 48000  # (written in meta.json with the reason)
    spool.unlock()


def test_contiguous_frames_reach_the_spool_in_one_write_and_the_bytes_are_the_same(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.lock()
    frames = [bytes([n]) * FRAME for n in range(1, 51)]  # one second of a caller, frame by frame
    for n, frame in enumerate(frames):
        spool.write("in", n * FRAME, frame)
    spool.write("in", 60 * FRAME, b"\x07" * FRAME)  # after a gap: a write of its own
    spool.write("in", 10 * FRAME, b"\x09" * FRAME)  # over what was written before: it wins, in order
    taken = spool.take()
    assert [(pos, len(data)) for pos, data in taken["in"]] == [(0, 50 * FRAME), (60 * FRAME, FRAME), (10 * FRAME, FRAME)]
    spool.put(taken)
    raw = (spool.dir / "in.raw").read_bytes().translate(XOR)  # the spool keeps mu-law XOR 0xFF
    expected = bytearray(b"".join(frames)) + bytes([SILENCE]) * (10 * FRAME) + b"\x07" * FRAME
    expected[10 * FRAME:11 * FRAME] = b"\x09" * FRAME
    assert raw == bytes(expected)
    spool.unlock()
