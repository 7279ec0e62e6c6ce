"""The call recorder: both sides of every call, from the bus, into storage.

It lives in the transcript-writer (the service that already persists each call) rather than in a
sixth process: it needs the writer's database pool and NATS connection, costs no process of its
own, and only listens (a call never waits on it).

- **Which calls, and which recorder.** Every writer watches the call book (KV ``dialtone_calls``).
  When a call's record appears (the signed webhook, before the media stream even opens), each
  writer subscribes to the gateway's tap of the call, ``dt.v1.call.<sid>.*.rec`` (both sides' frames
  in a batch a quarter of a second, as the gateway saw them), and tries to *claim* the call in the KV
  bucket ``dialtone_recordings`` with a create (compare-and-set): one wins and records, the others
  unsubscribe. Each recorder beats once every ``LEASE_RENEW_S`` (one KV write, ``alive.<owner>``,
  for all its calls); the call of a recorder silent for ``LEASE_S`` may be taken over
  (compare-and-set on the claim's revision), at once by a writer on the same disk whose spool the
  dead holder wrote (the kernel released its ``flock``). Before storing, a recorder checks the claim
  still names it. The greeting cannot be missed:
  the subscription exists before the gateway even offers the call, and caller audio waits in the
  gateway's backlog until a bridge takes it.
- **Opt-out.** A record saying ``record: false`` (the agent's ``record = false``) makes the
  recorder drop the call and all it has of it.
- **What is recorded.** ``recorder_audio.CallAudio``: the caller as received, the agent as played.
  A call whose stream moves to another gateway goes on on the same timeline (the new gateway
  carries the frame sequence and the media clock on); the gap is silence in the file.
- **Restarts.** The call's audio is spooled to ``RECORDINGS_DIR/spool/<sid>/`` about once a second.
  A recorder that restarts (or another that takes the claim over) resumes the call on the same
  timeline: what went by while nobody listened is silence in the file, and the recording is stored
  ``complete = false`` with the reason (how much, from when). So is a call whose caller frames
  skipped sequence numbers (lost on the bus) or that the recorder joined late.
- **The end.** The gateway's ``STOP`` (or the record turning ``ended``) finishes the call: the WAV is
  built from the spool in a thread, uploaded, and its row (``call_recordings``) written. Any failure
  (the store down or refusing, the database, even a bug) is logged, counted and retried with capped
  exponential back-off and jitter, without end, the spool kept until the recording is stored.
- **Retention.** Every ``RECORDINGS_SWEEP_INTERVAL_S`` a writer deletes recordings older than
  ``RECORDINGS_RETENTION_DAYS`` (object first, then row; ``FOR UPDATE SKIP LOCKED``, so writers
  sweeping at once never collide). A round that fails is tried again after the same back-off.
- **No silent death.** Every background task of the recorder survives any exception (logged and
  counted in ``dialtone_writer_background_errors_total``); a task that ends by an exception all
  the same is logged by its done callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import nats.errors
import nats.js.errors
import orjson
from dialtone_common.recording_storage import LocalStorage, RecordingStorageError, S3Storage, private_dir
from dialtone_proto import CallMetric, CallRecord, encode_event, subjects
from dialtone_proto.frames import TAP_IN, Frame, FrameError, Kind, decode_tap
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from dialtone_writer import metrics
from dialtone_writer.metrics import REGISTRY
from dialtone_writer.recorder_audio import CallAudio, LineSpan, Spool, beep_spans, build_wav
from dialtone_writer.settings import WriterSettings

log = logging.getLogger(__name__)

RECORDINGS_ACTIVE = Gauge("dialtone_writer_recordings_active", "Calls this writer is recording now", registry=REGISTRY)
RECORDINGS_STORED = Counter(
    "dialtone_writer_recordings_stored_total", "Recordings stored, complete or not", ["result"], registry=REGISTRY
)
RECORDINGS_TAKEN_OVER = Counter(
    "dialtone_writer_recordings_taken_over_total", "Calls whose recording this writer took over from a stopped recorder",
    registry=REGISTRY,
)
RECORDING_ERRORS = Counter(
    "dialtone_writer_recording_errors_total", "Failed attempts to store a recording (retried)", registry=REGISTRY
)
RECORDINGS_EXPIRED = Counter(
    "dialtone_writer_recordings_expired_total", "Recordings deleted by the retention sweep", registry=REGISTRY
)
RECORDING_SECONDS = Histogram(
    "dialtone_writer_recording_store_seconds", "A call's end to its recording stored (WAV built, uploaded, row written)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)

CLAIMS_BUCKET = subjects.RECORDINGS_BUCKET
LEASE_RENEW_S = 2.0
LEASE_S = 6.0
SPOOL_FLUSH_S = 1.0
END_GRACE_S = 0.5  # frames of the other subject still in flight after the STOP
IDLE_END_S = 120.0  # no frame and no record for this long: the call is over
STOP_TASKS_S = 3.0  # at a stop, how long the background tasks get to end once cancelled
_RETENTION_BATCH = 100

_INSERT = """
INSERT INTO call_recordings (call_sid, storage_key, bytes, duration_ms, sample_rate, channels, complete, reason,
                             bucket_samples, peaks, recorded_by)
VALUES ($1, $2, $3, $4, 8000, 2, $5, $6, $7, $8::jsonb, $9)
ON CONFLICT (call_sid) DO UPDATE
SET storage_key = EXCLUDED.storage_key, bytes = EXCLUDED.bytes, duration_ms = EXCLUDED.duration_ms,
    complete = EXCLUDED.complete, reason = EXCLUDED.reason, bucket_samples = EXCLUDED.bucket_samples,
    peaks = EXCLUDED.peaks, recorded_by = EXCLUDED.recorded_by, created_at = now()
"""

# Whether the call's end is written (every line the bridge published is then written too), and
# the lines to beep over.
_ENDED_AT = "SELECT ended_at FROM call_sessions WHERE call_sid = $1"
_LINES = """
SELECT role, source, offset_ms, heard_ms, redacted IS NOT NULL AS redacted
FROM transcript_lines WHERE call_sid = $1
"""
TRANSCRIPT_SETTLE_S = 1.0  # another writer may still be committing a batch written before the end

_EXPIRED = """
SELECT call_sid, storage_key FROM call_recordings
WHERE created_at < now() - make_interval(days => $1)
ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: float | None = None) -> float:
    """The wait after the ``attempt``-th consecutive failure (1, 2, ...): ``initial_s`` doubled at
    each failure up to ``max_s``, of which a random half to whole ("equal jitter", so writers that
    failed together do not retry together, and none retries sooner than half the step)."""
    step = min(max_s, initial_s * 2 ** min(attempt - 1, 30))
    return step * (0.5 + 0.5 * (random.random() if rand is None else rand))  # noqa: S311 - not a secret


def _put_all(batch: list) -> None:
    for rec, taken in batch:
        rec.put(taken)


def storage_key(call_sid: str) -> str:
    return f"{subjects.check_call_id(call_sid)}.wav"


class CallRecording:
    """One call being recorded by this writer."""

    def __init__(self, recorder: Recorder, sid: str, spool: Spool) -> None:
        self.r, self.sid, self.spool = recorder, sid, spool
        self.audio = CallAudio(spool.write, min_bytes=recorder.settings.min_chunk_ms * 8)
        self.reasons: list[str] = []
        self.next_in_seq: int | None = None
        self.first_ts: int | None = None
        self.retired: set[str] = set()
        self._resumed: str | None = None  # why we did not hear the call from its start, if so
        self._resume_at = 0
        self.subs: list = []
        self.last_heard = time.monotonic()
        self.lost_frames = 0
        self.lost_ms = 0  # audio known missing, besides lost frames
        self.claim_revision = 0
        self.finishing: asyncio.Task | None = None
        self.ended_reason: str | None = None
        self.ended_before = False  # the spool resumed was of a call already over, being stored

    # ---- frames -------------------------------------------------------------------------
    async def on_rec(self, msg: Msg) -> None:
        """A batch of the gateway's tap: the call's frames both ways, in the order the gateway saw
        them, each with the gateway's clock (the agent side's timing rules run on it)."""
        key = msg.subject.split(".")[-2]
        try:
            entries = decode_tap(msg.data)
        except FrameError as exc:
            log.warning("call %s: bad tap batch on the bus: %s", self.sid, exc)
            return
        self.last_heard = time.monotonic()
        for side, at_ms, frame in entries:
            try:
                if side == TAP_IN:
                    self.on_in(frame, key)
                else:
                    self.on_out(frame, key, at_ms / 1000)
            except (FrameError, KeyError, ValueError) as exc:
                log.warning("call %s: bad frame in the tap: %s", self.sid, exc)

    def on_in(self, frame: Frame, key: str) -> None:
        self._check_seq(frame.seq, frame.ts)
        if frame.kind is Kind.AUDIO:
            self.audio.caller_audio(frame.ts, frame.payload)
        elif frame.kind is Kind.MARK:
            self.audio.caller_mark(str(frame.json().get("name", "")))
        elif frame.kind is Kind.MOVED:
            self.audio.moved()
        elif frame.kind is Kind.STOP:
            if frame.json().get("reason") == "bridge_replaced":
                self.retired.add(key)  # the gateway no longer plays what that bridge sends
                self.audio.new_bridge()
            else:
                self.r.finish_soon(self, END_GRACE_S, "stream stopped")

    def on_out(self, frame: Frame, key: str, now: float) -> None:
        if key in self.retired:
            return
        if frame.kind is Kind.AUDIO:
            self.audio.agent_audio(frame.payload, now)
        elif frame.kind is Kind.MARK:
            self.audio.agent_mark(str(frame.json().get("name", "")), now)
        elif frame.kind is Kind.CLEAR:
            self.audio.agent_clear(now)
        elif frame.kind is Kind.HANGUP:
            self.audio.agent_hangup(now)

    def resume(self, why: str) -> None:
        """We did not hear this call from its start (a restart, a take-over): pick up the spool a
        previous recorder left here, if any, and say what is missing."""
        meta = self.spool.read_meta()
        self.audio.caller_end = max(self.audio.caller_end, int(meta.get("caller_end", 0)))
        self.audio.play_pos = max(self.audio.play_pos, int(meta.get("play_pos", 0)))
        self.reasons = list(meta.get("reasons", [])) + self.reasons
        self.lost_ms += int(meta.get("lost_ms", 0))
        self.lost_frames += int(meta.get("lost_frames", 0))
        self.ended_before = bool(meta.get("ended"))
        self.retired |= set(meta.get("retired", []))
        self._resumed, self._resume_at = why, int(meta.get("caller_end", 0))
        if self.first_ts is not None:
            self._note_gap(self.first_ts)

    def _note_gap(self, ts: int) -> None:
        self.lost_ms += max(0, ts - self._resume_at // 8)
        self.reasons.append(
            f"{self._resumed}: audio from {self._resume_at / 8000:.2f} s to {ts / 1000:.2f} s was not recorded"
        )
        self._resumed = None

    def _check_seq(self, seq: int, ts: int) -> None:
        """Caller-side frames share one sequence per call (the gateway's): a gap is audio lost."""
        expected = self.next_in_seq
        if expected is None:
            self.first_ts = ts
            if self._resumed:
                self._note_gap(ts)
            elif seq > 0:
                self.reasons.append(f"the recorder joined late: {seq} caller frames before {ts / 1000:.2f} s missed")
                self.lost_ms += ts
        elif seq > expected:
            self.lost_frames += seq - expected
        if expected is None or seq >= expected:
            self.next_in_seq = seq + 1

    # ---- spool ----------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "caller_end": self.audio.caller_end, "play_pos": self.audio.play_pos, "reasons": self.reasons,
            "next_in_seq": self.next_in_seq, "retired": sorted(self.retired), "owner": self.r.owner,
            "lost_ms": self.lost_ms, "lost_frames": self.lost_frames,
            # Set once the call is over and its store began (the spool then holds all of it): a
            # writer that stops while the store is down leaves the next start nothing to guess.
            "ended": self.ended_reason,
        }

    def take(self) -> tuple[dict, dict]:
        """What to write to the spool now (on the event loop); ``put`` it in a thread."""
        return self.spool.take(), self.meta()

    def put(self, taken: tuple[dict, dict]) -> None:
        self.spool.put(taken[0])
        self.spool.write_meta(taken[1])

    def all_reasons(self) -> list[str]:
        reasons = list(self.reasons)
        if self.lost_frames:
            reasons.append(f"{self.lost_frames} caller frames never reached the recorder")
        return reasons


class _LeftForNextStart(Exception):  # noqa: N818 - a signal, not an error
    """The writer stops while the store refuses a recording: its spool waits for the next start."""


class Recorder:
    """Records the calls this writer claims. ``start`` then ``run(stop)``; ``close`` at the end."""

    def __init__(self, pool: asyncpg.Pool, nc: Client, js: JetStreamContext, settings: WriterSettings,
                 storage: LocalStorage | S3Storage, *, book_bucket: str = subjects.CALLS_BUCKET,
                 claims_bucket: str = CLAIMS_BUCKET, redacting: bool = False) -> None:
        """``book_bucket`` and ``claims_bucket`` are other buckets only in tests that must not meet
        the recorders of a platform running beside them. ``redacting``: the words redacted from the
        transcript are beeped over in the recording, which then waits for the call's transcript."""
        self.pool, self.nc, self.js, self.settings, self.storage = pool, nc, js, settings, storage
        self.redacting = redacting
        self._book_bucket, self._claims_bucket = book_bucket, claims_bucket
        self.lease_s, self.beat_s = LEASE_S, LEASE_RENEW_S
        base = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.owner = re.sub(r"[^A-Za-z0-9_-]", "_", base)[:40] + "-" + secrets.token_hex(3)
        self.spool_root = Path(settings.recordings_dir) / "spool"
        self.calls: dict[str, CallRecording] = {}
        self._others: set[str] = set()  # live calls another recorder holds (taken over if it goes quiet)
        self._done: set[str] = set()  # finished here: a late record update must not start it again
        self._claims: KeyValue | None = None
        self._book: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = asyncio.Event()  # a stop: a recording the store refused waits for the next start
        self._lock = asyncio.Lock()
        self._last_renew = self._last_check = 0.0  # monotonic times of _keep's last beat and check

    # ---- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        # Recordings are personal data: the directory and the spool in it are the service's alone.
        private_dir(Path(self.settings.recordings_dir))
        private_dir(self.spool_root)
        self._claims = await self._bucket(self._claims_bucket, "Dialtone recordings: which recorder holds each call")
        self._book = await self._bucket(self._book_bucket, None if self._book_bucket == subjects.CALLS_BUCKET
                                        else "Dialtone calls (a test's own)")
        await self._beat()
        log.info("recording calls to %s (spool %s)", self.storage.describe(), self.spool_root)

    async def _bucket(self, name: str, description: str | None) -> KeyValue:
        if description is None:
            from dialtone_common.bus import ensure_calls_bucket

            return await ensure_calls_bucket(self.js, self.settings.jetstream_replicas)
        with contextlib.suppress(nats.js.errors.BucketNotFoundError):
            return await self.js.key_value(name)
        try:
            return await self.js.create_key_value(KeyValueConfig(
                bucket=name, description=description, history=1, ttl=6 * 3600, max_value_size=1024,
                storage=StorageType.FILE, replicas=self.settings.jetstream_replicas,
            ))
        except nats.js.errors.BadRequestError:  # another writer created it meanwhile
            return await self.js.key_value(name)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the call book, keep the claims, flush spools and sweep old recordings until ``stop``."""
        assert self._book is not None
        tasks = [self._spawn(self._watch(stop), "watch"), self._spawn(self._keep(stop), "keep"),
                 self._spawn(self._retention(stop), "retention")]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            # A cancelled task ends at once, unless a library call it was in holds on in its own
            # clean-up (a bus client reconnecting): the writer's stop must not wait on that.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TASKS_S)
            for t in stuck:
                log.warning("recorder: task %s did not stop within %.0f s: left behind", t.get_name(), STOP_TASKS_S)
            await self.close()

    def _spawn(self, coro, task: str) -> asyncio.Task:
        """A background task, held (not garbage-collected mid-way) and watched: should it end by an
        exception after all, that is logged and counted, never lost with the task."""
        t = asyncio.create_task(coro, name=f"recorder-{task}")
        self._tasks.add(t)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                metrics.BACKGROUND_ERRORS.labels(task.split("-")[0]).inc()
                log.error("recorder: task %s died: %r", t.get_name(), t.exception(), exc_info=t.exception())

        t.add_done_callback(done)
        return t

    async def close(self) -> None:
        """Stop listening, keep each unfinished call's spool (a restart resumes it), let finishes end."""
        for rec in list(self.calls.values()):
            for sub in rec.subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        # A recording being stored gets up to 10 s to finish; one the store has refused (an
        # outage: it waits to try again) gives up at once.
        self._closing.set()
        pending = [r.finishing for r in self.calls.values() if r.finishing is not None]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for rec in list(self.calls.values()):
            if rec.finishing is not None:
                # Not stored (the store is down): the spool stays, and the next start of a writer
                # on this disk stores it (an orphaned spool).
                if not rec.finishing.done():
                    rec.finishing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await rec.finishing
                if self.calls.get(rec.sid) is not rec:
                    continue  # stored (or forgotten) meanwhile: its spool is not kept
                rec.spool.unlock()
                log.warning("call %s: recording not stored yet; its spool %s is kept for the next start",
                            rec.sid, rec.spool.dir)
        for rec in list(self.calls.values()):
            if rec.finishing is None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(rec.put, rec.take())
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    # ---- the call book ----------------------------------------------------------------------
    async def _watch(self, stop: asyncio.Event) -> None:
        assert self._book is not None
        while not stop.is_set():
            try:
                watcher = self._watcher = await self._book.watchall()
                synced = False
                while not stop.is_set():
                    try:
                        entry = await watcher.updates(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    if entry is None:
                        if not synced:
                            synced = True
                            await self._orphans()
                        continue
                    await self._on_record(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus went away: watch again once it is back
                log.warning("recorder: watching the call book failed: %s", exc)
                await asyncio.sleep(1.0)

    async def _on_record(self, entry) -> None:
        sid = entry.key
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._others.discard(sid)
            return
        try:
            record = CallRecord.model_validate_json(entry.value)
        except ValidationError:
            return
        rec = self.calls.get(sid)
        if not record.record:
            self._others.discard(sid)
            if rec is not None:
                await self._drop(rec, "the agent does not record calls")
            return
        if record.state == "ended":
            self._others.discard(sid)
            if rec is not None:
                self.finish_soon(rec, 2 * END_GRACE_S, "call ended")
            return
        if rec is None and sid not in self._done and self.settings.recordings_enabled:
            await self._try_claim(sid)

    # ---- claims ---------------------------------------------------------------------------
    def _claim_value(self) -> bytes:
        return orjson.dumps({"owner": self.owner})

    async def _beat(self) -> None:
        """One heartbeat for all of this recorder's claims (a write per recorder, not per call)."""
        assert self._claims is not None
        await self._claims.put(f"alive.{self.owner}", orjson.dumps({"at": time.time()}))

    async def _holder_alive(self, owner: str) -> bool:
        """Whether the recorder ``owner`` beat within ``LEASE_S`` (hosts' clocks kept by NTP)."""
        assert self._claims is not None
        if owner == self.owner:
            return True
        try:
            entry = await self._claims.get(f"alive.{owner}")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False
        try:
            at = float(orjson.loads(entry.value or b"{}").get("at", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return False
        return time.time() - at < self.lease_s

    async def still_ours(self, sid: str) -> bool:
        """Whether the claim on ``sid`` still names this recorder (it may have been taken over while
        this process stalled); asked before storing, so a call is stored by one recorder."""
        assert self._claims is not None
        try:
            entry = await self._claims.get(sid)
            return orjson.loads(entry.value or b"{}").get("owner") == self.owner
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, orjson.JSONDecodeError):
            return False

    async def _try_claim(self, sid: str, *, takeover_only: bool = False) -> CallRecording | None:
        """Subscribe, then claim; keep the subscriptions only if the claim is ours."""
        assert self._claims is not None
        async with self._lock:
            if sid in self.calls:
                return self.calls[sid]
            try:
                subjects.check_call_id(sid)
            except ValueError:
                return None
            spool = Spool(self.spool_root / sid)
            rec = CallRecording(self, sid, spool)
            leftover = spool.dir.exists()  # a spool of an earlier run of a recorder on this disk
            # The gateway's tap, under whichever stream key holds the call (``*`` follows a re-offer).
            rec.subs = [
                await self.nc.subscribe(f"{subjects.PREFIX}.call.{sid}.*.rec", cb=rec.on_rec, pending_msgs_limit=2000),
            ]
            revision, why = None, None
            try:
                await self.nc.flush(timeout=2)
                if not takeover_only:
                    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                        revision = await self._claims.create(sid, self._claim_value())
                if revision is None:
                    revision, why = await self._take_over(sid, spool)
                elif leftover:
                    why = "a recorder stopped"
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("call %s: could not claim its recording: %s", sid, exc)
                revision = None
            if revision is not None and not spool.lock():
                revision = None  # a live recorder on this disk holds the spool after all
            if revision is None:
                for sub in rec.subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                spool.unlock()
                self._others.add(sid)
                return None
            self._others.discard(sid)
            if why:
                rec.resume(why)
                log.warning("call %s: recording taken over (%s)", sid, why)
                RECORDINGS_TAKEN_OVER.inc()
            rec.claim_revision = revision
            self.calls[sid] = rec
            RECORDINGS_ACTIVE.set(len(self.calls))
            if rec.ended_before:  # its recorder stopped while storing it: the spool holds the whole call
                self.finish_soon(rec, 0, "its recorder stopped while storing it")
            return rec

    async def _take_over(self, sid: str, spool: Spool) -> tuple[int | None, str | None]:
        """Take a claim whose holder stopped: it stopped renewing it, or it recorded on this disk
        and its lock on the spool is gone (the process died). (revision, why) or (None, None)."""
        assert self._claims is not None
        try:
            entry = await self._claims.get(sid)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            revision = await self._claims.create(sid, self._claim_value())
            return revision, ("a recorder stopped" if spool.dir.exists() else None)
        try:
            held = orjson.loads(entry.value or b"{}")
        except orjson.JSONDecodeError:
            held = {}
        if held.get("done"):
            return None, None
        expired = not await self._holder_alive(str(held.get("owner", "")))
        # The holder wrote this spool here and no longer holds its lock: its process is gone.
        dead = spool.dir.exists() and spool.read_meta().get("owner") == held.get("owner") and spool.lock()
        if not expired and not dead:
            return None, None
        revision = await self._claims.update(sid, self._claim_value(), last=entry.revision)
        return revision, f"the recorder {held.get('owner', '?')} stopped"

    async def _keep(self, stop: asyncio.Event) -> None:
        """Flush spools, beat, take over calls of recorders that stopped, end calls nobody speaks of."""
        assert self._claims is not None
        self._last_renew = self._last_check = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(SPOOL_FLUSH_S, self.beat_s))
            try:
                await self._keep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: the spools must still be flushed and the claims kept next time
                metrics.BACKGROUND_ERRORS.labels("keep").inc()
                log.error("recorder: keeping the calls failed: %r", exc, exc_info=exc)

    async def _keep_once(self) -> None:
        """One round of ``_keep``: flush the spools; every ``beat_s`` beat and end silent calls;
        every ``lease_s`` look for calls whose recorder stopped."""
        live = [r for r in self.calls.values() if r.finishing is None]
        batch = [(r, r.take()) for r in live]
        try:
            await asyncio.to_thread(_put_all, batch)
        except OSError as exc:
            log.error("recorder: spool write failed: %s", exc)
        now = time.monotonic()
        if now - self._last_renew < self.beat_s:
            return
        self._last_renew = now
        try:
            await self._beat()
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("recorder: heartbeat failed: %s", exc)
        for rec in live:
            if now - rec.last_heard > IDLE_END_S:
                self.finish_soon(rec, 0, "no audio for a long time")
        if now - self._last_check >= self.lease_s:
            self._last_check = now
            for sid in list(self._others):
                if sid not in self.calls:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        await self._check_other(sid)

    async def _check_other(self, sid: str) -> None:
        """Take over a live call whose recorder stopped beating (one read while it beats)."""
        assert self._claims is not None
        try:
            held = orjson.loads((await self._claims.get(sid)).value or b"{}")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, orjson.JSONDecodeError):
            held = {}
        if held.get("done"):
            self._others.discard(sid)
        elif not held or not await self._holder_alive(str(held.get("owner", ""))):
            await self._try_claim(sid, takeover_only=True)

    async def _orphans(self) -> None:
        """Spools left by a previous run whose call is no longer live: store what they hold."""
        assert self._book is not None
        for directory in sorted(self.spool_root.iterdir()) if self.spool_root.exists() else []:
            sid = directory.name
            if sid in self.calls or not directory.is_dir():
                continue
            # A call that was over and being stored when its writer stopped (the store was down, say).
            over = bool(Spool(directory).read_meta().get("ended"))
            try:
                entry = await self._book.get(sid)
                record = CallRecord.model_validate_json(entry.value or b"")
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, ValidationError):
                record = None
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                continue
            if record is not None and record.state != "ended" and record.record and not over:
                continue  # live: claimed (and resumed) through the watch
            rec = await self._try_claim(sid, takeover_only=True)
            if rec is None:
                continue
            if record is not None and not record.record:
                await self._drop(rec, "the agent does not record calls")
            elif rec.ended_before:
                pass  # being stored already (_try_claim)
            else:
                rec.reasons.append(
                    f"the recorder stopped before the call ended: audio after {rec.audio.caller_end / 8000:.2f} s lost"
                )
                self.finish_soon(rec, 0, "orphaned spool")

    # ---- the end of a call ------------------------------------------------------------------
    def finish_soon(self, rec: CallRecording, delay: float, why: str) -> None:
        if rec.finishing is not None:
            return
        rec.ended_reason = why
        rec.finishing = self._spawn(self._finish(rec, delay), f"finish-{rec.sid}")

    async def _finish(self, rec: CallRecording, delay: float) -> None:
        """Store the call's recording (``_finish_call``); whatever happens, this task ends normally
        and the call does not stay ``finishing`` for ever."""
        try:
            await self._finish_call(rec, delay)
        except asyncio.CancelledError:
            raise
        except _LeftForNextStart:
            return  # close() keeps its spool for the next start, and says so
        except Exception as exc:  # a bug outside the retried store: keep the spool for the next start
            metrics.BACKGROUND_ERRORS.labels("finish").inc()
            log.error("call %s: finishing the recording failed; its spool %s is kept for the next start: %r",
                      rec.sid, rec.spool.dir, exc, exc_info=exc)
            with contextlib.suppress(Exception):
                await self._forget(rec, keep_spool=True, done=False)

    async def _finish_call(self, rec: CallRecording, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        for sub in rec.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        rec.audio.finish()
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            if not await self.still_ours(rec.sid):
                await self._drop(rec, "another recorder took the call over", keep_spool=True)
                return
        if rec.audio.caller_end == 0 and rec.audio.play_pos == 0:
            # No stream ever carried audio (a webhook with no stream, an outbound call not answered).
            await self._drop(rec, "no audio")
            return
        reasons = rec.all_reasons()
        started = time.perf_counter()
        target = rec.spool.dir / "recording.wav"
        s = self.settings
        attempt = 0
        while True:  # no limit: the spool is the only copy until the recording is stored
            attempt += 1
            try:
                await asyncio.to_thread(rec.put, rec.take())
                beeps = await self._beeps(rec.sid) if self.redacting else None
                built = await asyncio.to_thread(build_wav, rec.spool.dir, target, 64 * 1024, beeps)
                key = storage_key(rec.sid)
                await self.storage.put_file(key, built.path)
                peaks = orjson.dumps({"caller": built.peaks["in"], "agent": built.peaks["out"]}).decode()
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        _INSERT, rec.sid, key, built.bytes, built.samples // 8, not reasons,
                        "; ".join(reasons) or None, built.bucket_samples, peaks, self.owner,
                    )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                RECORDING_ERRORS.inc()
                wait = backoff_delay(attempt, s.recordings_retry_initial_s, s.recordings_retry_max_s)
                self._log_failure(f"call {rec.sid}: storing the recording failed (attempt {attempt}), "
                                  f"retrying in {wait:.1f} s, spool kept", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
                if self._closing.is_set():
                    raise _LeftForNextStart from exc
        if attempt > 1:
            log.warning("call %s: recording stored after %d failed attempts", rec.sid, attempt - 1)
        await self._tell_session(rec, not reasons)
        RECORDINGS_STORED.labels("complete" if not reasons else "incomplete").inc()
        RECORDING_SECONDS.observe(time.perf_counter() - started)
        log.info("call %s: recording stored (%d bytes, %.1f s%s)", rec.sid, built.bytes, built.samples / 8000,
                 f"; incomplete: {'; '.join(reasons)}" if reasons else "")
        await self._forget(rec, keep_spool=False, done=True)

    async def _beeps(self, sid: str) -> list[tuple[str, int, int]]:
        """Where the recording is beeped over: the redacted lines of the call's transcript, once
        it is whole. It is whole once the call's end is written, since the bridge publishes every
        line before ``call.ended`` (or the sweeper closes a call whose bridge died). Waits as long
        as that takes: a recording is never stored before its redactions are known."""
        waited = 0.0
        while True:
            async with self.pool.acquire() as conn:
                if await conn.fetchval(_ENDED_AT, sid) is not None:
                    break
            if waited and waited % 60 == 0:
                log.warning("call %s: the recording waits for the call's end to be written (%.0f s)", sid, waited)
            await asyncio.sleep(0.5)
            waited += 0.5
        await asyncio.sleep(TRANSCRIPT_SETTLE_S)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_LINES, sid)
        return beep_spans([LineSpan(r["role"], r["source"], r["offset_ms"], r["heard_ms"], r["redacted"]) for r in rows])

    @staticmethod
    def _log_failure(what: str, exc: Exception, *, count: bool = True) -> None:
        """Log (and count, by kind) a failure that is retried.

        A fatal storage error (credentials refused, bucket missing, request rejected) is retried all
        the same, as patiently as an outage: giving up would delete the only copy of a call, while an
        operator can fix credentials, a bucket policy or a bucket; it is logged as an error, at each
        attempt, so the operator hears of it. An error nobody expected (a bug) is logged with its
        traceback and retried too: the spool is kept, nothing is lost waiting for the fix."""
        if isinstance(exc, RecordingStorageError):
            if count:
                metrics.RECORDING_STORAGE_ERRORS.labels(exc.operation, exc.kind).inc()
            if exc.fatal:
                log.error("%s: %s (an operator must act: check the store's credentials, bucket and policy)",
                          what, exc)
            else:
                log.warning("%s: %s", what, exc)
        elif isinstance(exc, OSError | asyncpg.PostgresError | asyncpg.InterfaceError | TimeoutError):
            log.warning("%s: %s: %s", what, type(exc).__name__, exc)
        else:
            log.error("%s: unexpected %r", what, exc, exc_info=exc)

    async def _tell_session(self, rec: CallRecording, complete: bool) -> None:
        """The session's metrics say whether its recording is whole (``recording_complete`` 1 or
        0) and, if not, how much is known missing (``recording_lost_ms``): CallMetric events,
        written by the consumer like any other."""
        at = datetime.now(UTC)
        events = [CallMetric(id=f"{rec.sid}-recording-complete", call_id=rec.sid, at=at,
                             name="recording_complete", value=1.0 if complete else 0.0)]
        if not complete:
            events.append(CallMetric(id=f"{rec.sid}-recording-lost", call_id=rec.sid, at=at,
                                     name="recording_lost_ms", value=float(rec.lost_ms + 20 * rec.lost_frames)))
        for event in events:
            try:
                await self.js.publish(event.subject, encode_event(event), headers={"Nats-Msg-Id": event.id}, timeout=5)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("call %s: could not publish %s: %s", rec.sid, event.name, exc)

    async def _drop(self, rec: CallRecording, why: str, *, keep_spool: bool = False) -> None:
        log.info("call %s: not recorded: %s", rec.sid, why)
        for sub in rec.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self._forget(rec, keep_spool=keep_spool, done=not keep_spool)

    async def _forget(self, rec: CallRecording, *, keep_spool: bool, done: bool) -> None:
        self.calls.pop(rec.sid, None)
        RECORDINGS_ACTIVE.set(len(self.calls))
        if done:
            self._done.add(rec.sid)
            if len(self._done) > 100_000:
                self._done.clear()
        rec.spool.unlock()
        if not keep_spool:
            await asyncio.to_thread(shutil.rmtree, rec.spool.dir, True)
        if done and self._claims is not None:
            # Mark the claim done (not deleted): no recorder may start the call again.
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await self._claims.put(rec.sid, orjson.dumps({"owner": self.owner, "at": time.time(), "done": True}))

    # ---- retention ---------------------------------------------------------------------------
    async def sweep_once(self) -> int:
        """Delete recordings older than the retention period (object, then row); returns how many.

        Raises:
            RecordingStorageError: the store failed a delete; the rows of the recordings deleted
                before it are gone, the rest wait for the next round.
        """
        days = self.settings.recordings_retention_days
        if not days:
            return 0
        deleted = 0
        failure: RecordingStorageError | None = None
        try:
            while failure is None:
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(_EXPIRED, int(days), _RETENTION_BATCH)
                    gone = []
                    for row in rows:
                        try:
                            await self.storage.delete(row["storage_key"])
                        except RecordingStorageError as exc:
                            metrics.RECORDING_STORAGE_ERRORS.labels("delete", exc.kind).inc()
                            failure = exc  # the store is likely down for the others too: stop this round
                            break
                        gone.append(row["call_sid"])
                    if gone:
                        await conn.execute("DELETE FROM call_recordings WHERE call_sid = ANY($1::text[])", gone)
                deleted += len(gone)
                if len(rows) < _RETENTION_BATCH or not gone:
                    break
        finally:
            if deleted:
                RECORDINGS_EXPIRED.inc(deleted)
                log.info("retention: deleted %d recordings older than %d days", deleted, days)
        if failure is not None:
            raise failure
        return deleted

    async def _retention(self, stop: asyncio.Event) -> None:
        """Sweep every ``recordings_sweep_interval_s``; after a failed round, sooner: with the
        store's back-off (capped by the interval), until a round succeeds. Never dies."""
        s = self.settings
        failures = 0
        while not stop.is_set():
            wait = s.recordings_sweep_interval_s
            try:
                await self.sweep_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                wait = min(wait, backoff_delay(failures, s.recordings_retry_initial_s, s.recordings_retry_max_s))
                if not isinstance(exc, RecordingStorageError | OSError | asyncpg.PostgresError
                                  | asyncpg.InterfaceError | TimeoutError):
                    metrics.BACKGROUND_ERRORS.labels("retention").inc()
                # (a storage error was counted by sweep_once, by kind)
                self._log_failure(f"retention sweep failed (round {failures}), again in {wait:.1f} s", exc,
                                  count=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
