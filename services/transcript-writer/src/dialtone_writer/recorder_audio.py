"""A call's two sides on one timeline, as the caller lived them: pure logic and file formats.

The timeline is the caller's media clock: Twilio stamps each inbound frame with its time since the
stream started, so caller audio goes at ``ts * 8`` samples, exactly. The agent's side is what was
*played* to the caller, which no frame says directly; it is rebuilt from what the bus carries:

1. What the gateway sent Twilio. The gateway (``streams.py``) coalesces agent audio into media
   messages of at least ``min_chunk_ms``, pads a short tail with mu-law silence (0xFF) before a
   mark, a hang-up, or after 60 ms with nothing behind it, and drops its unsent tail on a clear.
   ``Gateway`` repeats those rules on the same frames, so the bytes are those Twilio got.
2. When Twilio played it. Twilio plays its buffer in real time, 160 bytes per 20 ms, on the same
   clock as the caller's frames; it echoes each mark when the audio before it has played (or been
   cleared), and the gateway puts the echo on ``...in`` between the caller frames around it. So the
   echo of the mark behind a chunk, seen after the caller frame ending at ``E``, says that chunk's
   last byte played in the 20 ms before ``E``. A chunk played straight after the one before it
   starts where that one ended; a chunk that found the buffer empty starts on a frame boundary, the
   one that puts its end in that last 20 ms.
3. What a clear took away. After a clear, the echoes of the marks still queued come back at once:
   the chunk then playing stopped at ``E``; the ones behind it never played.

So the agent channel holds exactly the bytes Twilio played, where it played them; the one guess is
where a chunk that found the buffer empty *and* was cleared before its end started (then it is
placed at the first caller frame after it reached the recorder, within one frame of the truth).

Files: the spool keeps each channel as raw mu-law indexed by sample (``pwrite`` at the sample's
position), each byte XOR 0xFF so that a hole (zeros) reads back as mu-law silence; the finished
recording is a stereo 16-bit PCM WAV at 8 kHz, caller left and agent right.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RATE = 8000
FRAME = 160  # one 20 ms frame, in samples (= mu-law bytes)
SILENCE = 0xFF
FLUSH_AFTER_S = 0.06  # the gateway sends a short tail after this long with nothing behind it


def _decode(u: int) -> int:
    u = ~u & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84
    return -magnitude if u & 0x80 else magnitude


ULAW_TO_PCM = tuple(_decode(u) for u in range(256))
# bytes.translate tables (C speed): the low and the high byte of each decoded little-endian sample,
# the spool's XOR, and a rank growing with the absolute amplitude (for peaks).
_LO = bytes(v & 0xFF for v in ULAW_TO_PCM)
_HI = bytes((v >> 8) & 0xFF for v in ULAW_TO_PCM)
XOR = bytes(b ^ SILENCE for b in range(256))
_ABS_SORTED = sorted({abs(v) for v in ULAW_TO_PCM})
_RANK = bytes(_ABS_SORTED.index(abs(v)) for v in ULAW_TO_PCM)
RANK_TO_ABS = tuple(_ABS_SORTED)


def to_pcm16(ulaw: bytes) -> bytes:
    """mu-law bytes to signed 16-bit little-endian PCM."""
    out = bytearray(2 * len(ulaw))
    out[0::2] = ulaw.translate(_LO)
    out[1::2] = ulaw.translate(_HI)
    return bytes(out)


@dataclass
class Chunk:
    """Agent audio sent to Twilio up to a mark (``mark`` None: no mark followed it)."""

    data: bytearray
    arrival: int  # caller timeline position (samples) when it reached us
    mark: str | None = None
    cleared: bool = False


Sink = Callable[[str, int, bytes], None]  # (channel "in" | "out", sample position, mu-law bytes)


@dataclass
class CallAudio:
    """Places one call's caller and agent audio on the caller's timeline.

    Feed it the call's frames in bus order (``caller_audio``, ``caller_mark``, ``agent_audio``,
    ``agent_mark``, ``agent_clear``, ``agent_hangup``, ``new_bridge``), then ``finish``. Every
    placed piece goes to ``sink``.
    """

    sink: Sink
    min_bytes: int = 320
    caller_end: int = 0  # end of the latest caller frame, in samples
    play_pos: int = 0  # end of the agent audio placed so far
    pending: bytearray = field(default_factory=bytearray)  # the gateway's unsent tail
    pending_since: float | None = None
    open: Chunk | None = None  # sent, no mark behind it yet
    queue: deque[Chunk] = field(default_factory=deque)  # sent and marked, echo awaited
    idle: bool = True  # everything sent has played (the last echo emptied the queue)
    rtt_s: float = 0.0  # us -> Twilio -> us, from a mark sent with nothing buffered
    _clock: tuple[int, float] | None = None  # (ts ms, our time) of the latest caller frame
    _probes: dict[str, float] = field(default_factory=dict)

    # ---- caller side ----------------------------------------------------------------------
    def caller_audio(self, ts_ms: int, payload: bytes, now: float | None = None) -> None:
        pos = ts_ms * 8
        self.sink("in", pos, payload)
        self.caller_end = max(self.caller_end, pos + len(payload))
        if now is not None and (self._clock is None or ts_ms >= self._clock[0]):
            self._clock = (ts_ms, now)

    def _arrival(self, now: float) -> int:
        """Where on the caller's timeline audio we see now starts playing, if nothing is ahead of
        it: Twilio gets it half a round trip from now, the caller's clock there is half a trip
        ahead of the frame we last heard; Twilio plays from its next 20 ms tick."""
        if self._clock is None:
            return self.caller_end
        ts, seen = self._clock
        at_twilio_ms = ts + (now - seen + self.rtt_s) * 1000
        return max(self.caller_end, math.ceil(at_twilio_ms / 20) * FRAME)

    def caller_mark(self, name: str, now: float | None = None) -> None:
        """Twilio echoed a mark (played, or cleared): place the chunks up to it."""
        if (sent := self._probes.pop(name, None)) is not None and now is not None:
            self.rtt_s = max(0.0, now - sent)
        if not any(c.mark == name for c in self.queue):
            return  # a probe's, or one of a fenced-off bridge
        while self.queue:
            chunk = self.queue.popleft()
            self._place(chunk)
            if chunk.mark == name:
                break
        self.idle = not self.queue and self.open is None and not self.pending

    # ---- agent side: the gateway's rules ----------------------------------------------------
    def _timer(self, now: float) -> None:
        if self.pending and self.pending_since is not None and now - self.pending_since >= FLUSH_AFTER_S:
            self._send(pad=True, now=now)

    def _send(self, *, pad: bool, now: float = 0.0) -> None:
        self.pending_since = None
        if not self.pending:
            return
        if len(self.pending) < self.min_bytes:
            if not pad:
                return
            self.pending += bytes([SILENCE]) * (self.min_bytes - len(self.pending))
        if self.open is None:
            self.open = Chunk(bytearray(), self._arrival(now))
            self.idle = False
        self.open.data += self.pending
        self.pending = bytearray()

    def agent_audio(self, payload: bytes, now: float) -> None:
        self._timer(now)
        if not self.pending:
            self.pending_since = now
        self.pending += payload
        if len(self.pending) >= self.min_bytes:
            self._send(pad=False, now=now)

    def agent_mark(self, name: str, now: float) -> None:
        self._timer(now)
        self._send(pad=True, now=now)
        if self.open is None and not self.queue and self.idle:
            self._probes[name] = now  # nothing buffered at Twilio: its echo times a round trip
            if len(self._probes) > 8:
                self._probes.pop(next(iter(self._probes)))
        chunk = self.open or Chunk(bytearray(), self.caller_end)
        chunk.mark, self.open = name, None
        self.queue.append(chunk)

    def agent_clear(self, now: float) -> None:
        self.pending, self.pending_since = bytearray(), None
        if self.open is not None:
            self.queue.append(self.open)
            self.open = None
        for chunk in self.queue:
            chunk.cleared = True

    def agent_hangup(self, now: float) -> None:
        self._timer(now)
        self._send(pad=True, now=now)

    def moved(self) -> None:
        """The call's stream moved to another gateway: Twilio dropped what the old stream still
        held, which had played until that stream's last caller frame (as at a stream's end); the
        old gateway's unsent tail was never sent. The bridge sends the unheard rest again, and
        the new stream starts with nothing queued."""
        self.pending, self.pending_since = bytearray(), None
        if self.open is not None:
            self.queue.append(self.open)
            self.open = None
        while self.queue:
            self._place(self.queue.popleft(), stopped=True)
        self.idle = True

    def new_bridge(self) -> None:
        """The gateway re-offered the call: it forgot its unsent tail."""
        self.pending, self.pending_since = bytearray(), None

    # ---- placing ----------------------------------------------------------------------------
    def _place(self, chunk: Chunk, *, stopped: bool = False) -> None:
        n = len(chunk.data)
        if not n:
            return
        end_tick = self.caller_end  # the echo came after the caller frame ending here
        if chunk.cleared or stopped:
            # Played from its start until the clear (or the stream's end) reached the caller. It
            # started where the one before ended, or, if it came after that, when it came.
            start = max(self.play_pos, chunk.arrival)
            played = max(0, min(n, end_tick - start))
        else:
            # Its last byte played in the 20 ms before ``end_tick``. Straight after the one before
            # (contiguous), or from a frame boundary if the buffer had run dry when it came.
            contiguous = self.play_pos
            aligned = end_tick - FRAME * -(-n // FRAME)
            fits = end_tick - FRAME < contiguous + n <= end_tick
            if fits and aligned >= contiguous and aligned != contiguous:
                start = aligned if chunk.arrival > contiguous else contiguous
            else:
                start = contiguous if fits else max(aligned, contiguous)
            played = n
        if played:
            self.sink("out", start, bytes(chunk.data[:played]))
            self.play_pos = start + played
        elif start > self.play_pos:
            self.play_pos = min(start, end_tick)

    def finish(self) -> None:
        """The stream ended: what was still queued at Twilio played until the caller's last frame."""
        self._send(pad=True)
        if self.open is not None:
            self.queue.append(self.open)
            self.open = None
        while self.queue:
            self._place(self.queue.popleft(), stopped=True)



POSITIONS = ("caller_end", "play_pos", "next_in_seq")  # the metadata that moves with the audio

class Spool:
    """A call in progress on disk: ``in.raw`` and ``out.raw`` (mu-law XOR 0xFF by sample
    position) and ``meta.json``. Writes are kept in memory and ``flush``ed about once a second, so
    a crash loses at most the last second besides the audio in flight."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._writes: dict[str, list[tuple[int, bytearray]]] = {"in": [], "out": []}
        self._lock_fd: int | None = None
        self._steady_written: dict | None = None
        self._positions_fd: int | None = None

    def lock(self) -> bool:
        """Hold the spool (an advisory lock the kernel lets go when this process dies); False if a
        live process holds it."""
        if self._lock_fd is not None:
            return True
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        self.close_meta()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write(self, channel: str, pos: int, data: bytes) -> None:
        """Hold ``data`` for ``channel`` at sample ``pos``. A write that goes on where the one
        before it ended joins it: a second of a caller's 20 ms frames is one ``pwrite``, not 50."""
        writes = self._writes[channel]
        if writes and (last := writes[-1])[0] + len(last[1]) == pos:
            last[1].extend(data.translate(XOR))
        else:
            writes.append((pos, bytearray(data.translate(XOR))))

    def take(self) -> dict[str, list[tuple[int, bytearray]]]:
        """The writes held in memory, handed over (call it on the event loop, then ``put`` them)."""
        taken, self._writes = self._writes, {"in": [], "out": []}
        return taken

    def put(self, taken: dict[str, list[tuple[int, bytearray]]]) -> None:
        """Write taken writes to the files (blocking: in a thread)."""
        for channel, writes in taken.items():
            if not writes:
                continue
            fd = os.open(self.dir / f"{channel}.raw", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for pos, data in writes:
                    os.pwrite(fd, data, pos)
            finally:
                os.close(fd)

    def flush(self) -> None:
        self.put(self.take())

    def read_meta(self) -> dict:
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
        except (OSError, ValueError):
            return {}
        positions = self._read_positions()
        if positions is not None:
            meta.update((k, None if v == -1 else v) for k, v in zip(POSITIONS, positions, strict=True))
        return meta

    def write_meta(self, meta: dict) -> None:
        """The metadata. The positions, which move every second of every call, are written in
        place into ``positions`` (24 bytes and a checksum, one ``pwrite``); ``meta.json``, by an
        atomic rename, only when the rest of it changed: renaming it every second for every call
        was most of the recorder's disk work (a profile at 50 calls)."""
        steady = {k: v for k, v in meta.items() if k not in POSITIONS}
        if steady != self._steady_written or not (self.dir / "meta.json").exists():
            tmp = self.dir / "meta.json.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, self.dir / "meta.json")
            self._steady_written = steady
        values = [-1 if meta.get(k) is None else int(meta[k]) for k in POSITIONS]
        record = struct.pack("<3q", *values)
        record += struct.pack("<I", zlib.crc32(record))
        if self._positions_fd is None:
            self._positions_fd = os.open(self.dir / "positions", os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self._positions_fd, record, 0)

    def _read_positions(self) -> tuple[int, int, int] | None:
        try:
            record = (self.dir / "positions").read_bytes()
        except OSError:
            return None
        if len(record) != 28 or struct.unpack("<I", record[24:])[0] != zlib.crc32(record[:24]):
            return None  # torn or missing: meta.json's own positions (older) are used
        return struct.unpack("<3q", record[:24])

    def close_meta(self) -> None:
        if self._positions_fd is not None:
            os.close(self._positions_fd)
            self._positions_fd = None


@dataclass
class Built:
    path: Path
    bytes: int
    samples: int
    peaks: dict[str, list[float]]
    bucket_samples: int


PEAK_BUCKETS = 1000


# Redacted words are beeped over (redaction.py): a 1 kHz tone, on the same absolute phase in every
# recording, so a listener hears where something was taken out and a test can check each sample.
BEEP_HZ = 1000
BEEP_LEVEL = 4000


def _nearest_ulaw(value: float) -> int:
    """The mu-law byte whose sample is nearest ``value``."""
    return min(range(256), key=lambda u: abs(ULAW_TO_PCM[u] - value))


BEEP = bytes(_nearest_ulaw(BEEP_LEVEL * math.sin(2 * math.pi * BEEP_HZ * i / RATE)) for i in range(RATE // BEEP_HZ))
DTMF_BEFORE_MS = 1500  # a keypress reaches the bridge after its tone: beep the 1.5 s before it
DTMF_AFTER_MS = 500
LEAD_MS = 250  # a line's offset is where its speech started: beep a little before it too


@dataclass(frozen=True)
class LineSpan:
    """What the recorder needs of a transcript line to beep over it (``transcript_lines``)."""

    role: str
    source: str
    offset_ms: float | None
    heard_ms: float | None
    redacted: bool


def beep_spans(lines: list[LineSpan]) -> list[tuple[str, int, int]]:
    """Where to beep, as ``(channel, first sample, end sample)``, for the lines with redacted words.

    The model's transcription has no word timings, so a caller line is beeped over all of it: from
    its offset to the next line's (the agent answers only after the caller stopped; a pause that
    ended the caller's turn starts a new line), or to the end of the recording. A keypress, whose
    tone ended before its frame reached the bridge, is beeped over the ``DTMF_BEFORE_MS`` before it
    and ``DTMF_AFTER_MS`` after. An agent line is beeped over what the caller heard of it. A line
    without an offset cannot be placed: the whole of its side is beeped.
    """
    starts = sorted(line.offset_ms for line in lines if line.offset_ms is not None)
    spans: list[tuple[str, int, int]] = []
    end_of_call = 1 << 62
    for line in lines:
        if not line.redacted:
            continue
        channel = "in" if line.role == "caller" else "out"
        if line.offset_ms is None:
            spans.append((channel, 0, end_of_call))
            continue
        at = line.offset_ms
        if line.source == "dtmf":
            start, end = at - DTMF_BEFORE_MS, at + DTMF_AFTER_MS
        elif line.role == "caller":
            later = [s for s in starts if s > at]
            start, end = at - LEAD_MS, (later[0] if later else math.inf)
        else:
            later = [s for s in starts if s > at]
            length = line.heard_ms if line.heard_ms is not None else (later[0] - at if later else math.inf)
            start, end = at - LEAD_MS, at + length + LEAD_MS
        spans.append((channel, max(0, int(start * 8)), int(min(end * 8, end_of_call))))
    return spans


def _beep(raw: bytearray, first: int, spans: list[tuple[int, int]]) -> None:
    """Overwrite ``raw`` (mu-law samples from the absolute sample ``first``) with the beep where
    ``spans`` say."""
    n = len(raw)
    for a, b in spans:
        lo, hi = max(a, first), min(b, first + n)
        if lo < hi:
            phase = lo % len(BEEP)
            raw[lo - first:hi - first] = (BEEP * ((hi - lo) // len(BEEP) + 2))[phase:phase + hi - lo]


def wav_header(samples: int) -> bytes:
    data = samples * 4
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, RATE, RATE * 4, 4, 16)
            + b"data" + struct.pack("<I", data))


def build_wav(spool_dir: Path, target: Path, block: int = 64 * 1024,
              beeps: list[tuple[str, int, int]] | None = None) -> Built:
    """Interleave the spool's two channels into a stereo 16-bit WAV at ``target`` (0600), and
    measure peaks per channel (``PEAK_BUCKETS`` buckets at most, each at least 10 ms). ``beeps``
    (``beep_spans``) replace the audio of redacted words with the beep."""
    by_channel = {ch: [(a, b) for c, a, b in beeps or () if c == ch] for ch in ("in", "out")}
    paths = {ch: Path(spool_dir) / f"{ch}.raw" for ch in ("in", "out")}
    sizes = {ch: (p.stat().st_size if p.exists() else 0) for ch, p in paths.items()}
    samples = max(sizes.values())
    bucket = max(80, -(-samples // PEAK_BUCKETS)) if samples else 80
    block = max(bucket, block // bucket * bucket)
    peaks: dict[str, list[float]] = {"in": [], "out": []}
    files = {ch: (open(p, "rb") if p.exists() else None) for ch, p in paths.items()}
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(fd, "wb") as out:
            out.write(wav_header(samples))
            done = 0
            while done < samples:
                n = min(block, samples - done)
                frame = bytearray(4 * n)
                for ch, offset in (("in", 0), ("out", 2)):
                    f = files[ch]
                    raw = bytearray((f.read(n) if f else b"").ljust(n, b"\0").translate(XOR))
                    _beep(raw, done, by_channel[ch])
                    frame[offset::4] = raw.translate(_LO)
                    frame[offset + 1::4] = raw.translate(_HI)
                    ranks = raw.translate(_RANK)
                    peaks[ch].extend(
                        round(RANK_TO_ABS[max(ranks[i:i + bucket])] / 32768, 4) for i in range(0, n, bucket)
                    )
                out.write(frame)
                done += n
            out.flush()
            os.fsync(out.fileno())
    finally:
        for f in files.values():
            if f:
                f.close()
    return Built(Path(target), 44 + samples * 4, samples, peaks, bucket)


def read_wav(path: Path) -> tuple[list[int], list[int]]:
    """The left and right samples of a stereo 16-bit WAV written by ``build_wav`` (for tests)."""
    import array

    data = Path(path).read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a WAV file"
    samples = array.array("h")
    samples.frombytes(data[44:])
    return list(samples[0::2]), list(samples[1::2])
