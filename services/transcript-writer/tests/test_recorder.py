"""The recorder in a writer, against real NATS and PostgreSQL: one recorder per call however many
writers run, a restart that says what it lost, the agent's opt-out, and retention."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path

import pytest
from dialtone_common import bus
from dialtone_common.callbook import CallBook, new_record
from dialtone_common.recording_storage import LocalStorage, RecordingStorageError, open_storage
from dialtone_proto import CallMetric, subjects
from dialtone_proto.frames import TAP_IN, TAP_VERSION, Kind, encode_control, encode_frame, tap_entry
from dialtone_writer import metrics
from dialtone_writer import recorder as recorder_module
from dialtone_writer.recorder import Recorder, storage_key
from dialtone_writer.recorder_audio import read_wav, to_pcm16
from dialtone_writer.settings import WriterSettings

pytestmark = pytest.mark.integration

# Buckets of these tests' own: the e2e platform's writers (same NATS, same session) record too.
BOOK, CLAIMS = f"test_calls_{secrets.token_hex(4)}", f"test_recordings_{secrets.token_hex(4)}"


async def own_book(nc) -> CallBook:
    js = nc.jetstream()
    try:
        return CallBook(await js.key_value(BOOK))
    except Exception:
        return CallBook(await js.create_key_value(bucket=BOOK, history=1))


class Running:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder, self.stop = recorder, asyncio.Event()
        self.task: asyncio.Task | None = None


@pytest.fixture
async def nc(nats_url: str):
    nc = await bus.connect(nats_url, "recorder-tests")
    await bus.ensure_stream(nc.jetstream())  # as the writer does at start
    yield nc
    await nc.drain()


@pytest.fixture
async def recorders(nc, pool, nats_url: str, database_url: str):
    """``await start(directory, **settings) -> Running``: a recorder as a writer runs it."""
    running: list[Running] = []

    async def start(directory: Path, lease_s: float | None = None, storage=None, **overrides) -> Running:
        settings = WriterSettings(database_url=database_url, nats_url=nats_url, recordings_dir=directory,
                                  **overrides)
        recorder = Recorder(pool, nc, nc.jetstream(), settings, storage or open_storage(settings), book_bucket=BOOK,
                            claims_bucket=CLAIMS)
        if lease_s:
            recorder.lease_s, recorder.beat_s = lease_s, lease_s / 3
        await recorder.start()
        r = Running(recorder)
        r.task = asyncio.create_task(recorder.run(r.stop))
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop.set()
    for r in running:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(r.task, 15)


async def new_call(nc) -> tuple[str, str]:
    """A call as the gateway leaves it in the call book once its stream has started."""
    sid, key = "CA" + secrets.token_hex(16), secrets.token_urlsafe(16)
    book = await own_book(nc)
    await book.register(new_record(sid, agent="support"))
    assert await book.claim(sid, key, "gw-test")
    return sid, key


def caller_frame(seq: int) -> bytes:
    """Twenty milliseconds of caller audio that says which frame it is."""
    return bytes([(seq * 7 + i) % 0x7F for i in range(160)])


def tap(frames: list[bytes]) -> bytes:
    """Caller frames as the gateway's tap hands them to the recorder: one batch."""
    now_ms = time.time_ns() // 1_000_000
    return bytes([TAP_VERSION]) + b"".join(tap_entry(TAP_IN, now_ms, f) + f for f in frames)


async def send_caller(nc, sid: str, key: str, seqs: range) -> None:
    frames = [encode_frame(Kind.AUDIO, seq, seq * 20, caller_frame(seq)) for seq in seqs]
    for at in range(0, len(frames), 12):  # a quarter of a second a batch, as the gateway sends them
        await nc.publish(subjects.call_rec(sid, key), tap(frames[at:at + 12]))
    await nc.flush()


async def stop_stream(nc, sid: str, key: str, seq: int) -> None:
    await nc.publish(subjects.call_rec(sid, key), tap([encode_control(Kind.STOP, seq, 0, {"reason": "stop"})]))
    await nc.flush()


async def recording_row(pool, sid: str, poll):
    async def row():
        async with pool.acquire() as conn:
            return await conn.fetchrow("SELECT * FROM call_recordings WHERE call_sid = $1", sid)

    return await poll(row, 15, f"the recording of {sid}")


async def test_each_call_is_recorded_by_one_writer_and_a_restart_says_what_it_lost(nc, pool, recorders, poll, tmp_path):
    a = await recorders(tmp_path / "a")
    b = await recorders(tmp_path / "b")  # another writer, on another disk
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in a.recorder.calls or sid in b.recorder.calls), 10, "a claim")
    await asyncio.sleep(0.3)
    holders = [r for r in (a, b) if sid in r.recorder.calls]
    assert len(holders) == 1, "exactly one recorder records a call"
    holder = holders[0]
    directory = Path(holder.recorder.settings.recordings_dir)

    await send_caller(nc, sid, key, range(0, 50))  # 0 to 1 s
    spool = directory / "spool" / sid
    await poll(lambda: asyncio.sleep(0, (spool / "meta.json").exists() and (spool / "in.raw").stat().st_size == 8000),
               5, "the spool")

    # The holder dies: no flush, no goodbye (the kernel lets go of its spool lock).
    rec = holder.recorder.calls.pop(sid)
    for sub in rec.subs:
        await sub.unsubscribe()
    rec.spool.unlock()
    holder.task.cancel()
    await send_caller(nc, sid, key, range(50, 100))  # 1 to 2 s: nobody listens

    again = await recorders(directory)  # the writer comes back on its disk and resumes the call
    await poll(lambda: asyncio.sleep(0, sid in again.recorder.calls), 10, "the restarted recorder to resume")
    await send_caller(nc, sid, key, range(100, 150))  # 2 to 3 s
    await asyncio.sleep(0.2)
    await stop_stream(nc, sid, key, 150)

    row = await recording_row(pool, sid, poll)
    assert row["complete"] is False
    assert "audio from 1.00 s to 2.00 s was not recorded" in row["reason"], row["reason"]
    assert row["duration_ms"] == 3000
    # The session says so too: the metrics the recorder published for it (events on the bus).
    sub = await nc.jetstream().subscribe(f"{subjects.PREFIX}.events.{sid}.call_metric", ordered_consumer=True)
    metrics = {}
    while len(metrics) < 2:
        event = CallMetric.model_validate_json((await sub.next_msg(timeout=5)).data)
        metrics[event.name] = event.value
    await sub.unsubscribe()
    assert metrics == {"recording_complete": 0.0, "recording_lost_ms": 1000.0}
    left, right = read_wav(directory / "store" / storage_key(sid))
    expected = [to_pcm16(caller_frame(s)) if s < 50 or s >= 100 else bytes(320) for s in range(150)]
    assert b"".join(v.to_bytes(2, "little", signed=True) for v in left) == b"".join(expected)
    assert not any(right)
    await poll(lambda: asyncio.sleep(0, not spool.exists()), 5, "the spool to go once the recording is stored")


async def test_a_writer_elsewhere_takes_over_the_call_of_a_recorder_that_stopped(nc, pool, recorders, poll, tmp_path):
    a = await recorders(tmp_path / "a", lease_s=0.6)
    b = await recorders(tmp_path / "b", lease_s=0.6)
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in a.recorder.calls or sid in b.recorder.calls), 10, "a claim")
    holder, other = (a, b) if sid in a.recorder.calls else (b, a)
    await send_caller(nc, sid, key, range(0, 25))
    rec = holder.recorder.calls.pop(sid)  # the holder's machine goes away
    for sub in rec.subs:
        await sub.unsubscribe()
    holder.task.cancel()
    await poll(lambda: asyncio.sleep(0, sid in other.recorder.calls), 10, "the other writer to take over")
    await send_caller(nc, sid, key, range(25, 50))
    await stop_stream(nc, sid, key, 50)
    row = await recording_row(pool, sid, poll)
    assert row["complete"] is False and "audio from 0.00 s to 0.50 s was not recorded" in row["reason"], row["reason"]
    left, _ = read_wav(Path(other.recorder.settings.recordings_dir) / "store" / storage_key(sid))
    assert len(left) == 50 * 160 and not any(left[: 25 * 160]) and any(left[25 * 160:])


async def test_a_whole_call_is_complete_and_its_opt_out_is_kept(nc, pool, recorders, poll, tmp_path):
    r = await recorders(tmp_path)
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in r.recorder.calls), 10, "the claim")
    await send_caller(nc, sid, key, range(0, 25))
    await stop_stream(nc, sid, key, 25)
    row = await recording_row(pool, sid, poll)
    assert row["complete"] is True and row["reason"] is None and row["duration_ms"] == 500
    stored = tmp_path / "store" / storage_key(sid)
    assert stored.stat().st_mode & 0o777 == 0o600 and (tmp_path / "store").stat().st_mode & 0o777 == 0o700

    # An agent with record = false: the bridge marks the record, the recorder drops the call.
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in r.recorder.calls), 10, "the claim")
    await send_caller(nc, sid, key, range(0, 25))
    book = await own_book(nc)
    assert await book.assign(sid, key, 0, "bridge-test")
    assert await book.do_not_record(sid, key, 0, "bridge-test")
    await poll(lambda: asyncio.sleep(0, sid not in r.recorder.calls), 10, "the recorder to drop the call")
    await send_caller(nc, sid, key, range(25, 50))
    await stop_stream(nc, sid, key, 50)
    await asyncio.sleep(1.0)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", sid) == 0
    assert not (tmp_path / "spool" / sid).exists() and not (tmp_path / "store" / storage_key(sid)).exists()

    # A call whose stream never carried audio leaves no recording.
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in r.recorder.calls), 10, "the claim")
    assert await book.end(sid, {key})
    await poll(lambda: asyncio.sleep(0, sid not in r.recorder.calls), 10, "the recorder to let the call go")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", sid) == 0
    assert not (tmp_path / "spool" / sid).exists()


async def test_retention_deletes_old_recordings_and_their_rows(nc, pool, recorders, poll, tmp_path):
    r = await recorders(tmp_path, recordings_retention_days=7)
    store = LocalStorage(tmp_path / "store")
    old, new = "CA" + secrets.token_hex(16), "CA" + secrets.token_hex(16)
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"RIFF")
    async with pool.acquire() as conn:
        for sid, age in ((old, timedelta(days=8)), (new, timedelta(days=6))):
            await store.put_file(storage_key(sid), wav)
            await conn.execute(
                "INSERT INTO call_recordings (call_sid, storage_key, bytes, duration_ms, complete, bucket_samples, "
                "peaks, created_at) VALUES ($1, $2, 4, 0, true, 80, '{}'::jsonb, now() - $3::interval)",
                sid, storage_key(sid), age,
            )
    await r.recorder.sweep_once()
    # Its own first sweep, at start, may have come first, or be under way still (seen under load):
    # then this one skipped the row that one holds (FOR UPDATE SKIP LOCKED), gone once that one commits.

    async def left() -> set[str]:
        async with pool.acquire() as conn:
            return {row["call_sid"] for row in await conn.fetch(
                "SELECT call_sid FROM call_recordings WHERE call_sid = ANY($1::text[])", [old, new])}

    async def only_the_new_one() -> bool:
        return await left() == {new}

    await poll(only_the_new_one, 10, "the old recording's row to go and the new one's to stay")
    assert await left() == {new}
    assert not (tmp_path / "store" / storage_key(old)).exists() and (tmp_path / "store" / storage_key(new)).exists()


class FailingStorage(LocalStorage):
    """A local store whose puts and deletes fail with the errors given, one per call, then work."""

    def __init__(self, root: Path, puts: list[Exception], deletes: list[Exception]) -> None:
        super().__init__(root)
        self.put_errors, self.delete_errors = puts, deletes

    async def put_file(self, key: str, path: Path) -> None:
        if self.put_errors:
            raise self.put_errors.pop(0)
        await super().put_file(key, path)

    async def delete(self, key: str) -> None:
        if self.delete_errors:
            raise self.delete_errors.pop(0)
        await super().delete(key)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_no_error_of_the_store_stops_the_recorder_or_loses_a_recording(nc, pool, recorders, poll, tmp_path):
    """A fatal store error (access denied), an unexpected one (a bug), then the store works: the call
    is stored; the retention sweep survives the same and deletes afterwards."""
    denied = RecordingStorageError("put", "denied", "PermissionDeniedError: 403 AccessDenied")
    storage = FailingStorage(tmp_path / "store", puts=[denied, RuntimeError("a bug in a store")],
                             deletes=[RuntimeError("a bug in a store"),
                                      RecordingStorageError("delete", "unavailable", "GenericError: refused")])
    before = {
        "denied": sample("dialtone_writer_recording_storage_errors_total", operation="put", kind="denied"),
        "unavailable": sample("dialtone_writer_recording_storage_errors_total", operation="delete", kind="unavailable"),
        "retention": sample("dialtone_writer_background_errors_total", task="retention"),
        "errors": sample("dialtone_writer_recording_errors_total"),
    }
    old = "CA" + secrets.token_hex(16)
    (tmp_path / "old.wav").write_bytes(b"RIFF")
    await LocalStorage(tmp_path / "store").put_file(storage_key(old), tmp_path / "old.wav")
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO call_recordings (call_sid, storage_key, bytes, duration_ms, complete, bucket_samples, "
            "peaks, created_at) VALUES ($1, $2, 4, 0, true, 80, '{}'::jsonb, now() - interval '9 days')",
            old, storage_key(old),
        )
    r = await recorders(tmp_path, storage=storage, recordings_retry_initial_s=0.05, recordings_retry_max_s=0.2,
                        recordings_retention_days=7, recordings_sweep_interval_s=3600)
    sid, key = await new_call(nc)
    await poll(lambda: asyncio.sleep(0, sid in r.recorder.calls), 10, "the claim")
    await send_caller(nc, sid, key, range(0, 25))
    await stop_stream(nc, sid, key, 25)
    row = await recording_row(pool, sid, poll)
    assert row["complete"] is True and (tmp_path / "store" / storage_key(sid)).stat().st_size == row["bytes"]
    assert sample("dialtone_writer_recording_storage_errors_total", operation="put", kind="denied") == (
        before["denied"] + 1)
    assert sample("dialtone_writer_recording_errors_total") == before["errors"] + 2
    # The sweep's first round met a bug, its second an outage; it went on (sooner than its hour).
    await poll(lambda: asyncio.sleep(0, not (tmp_path / "store" / storage_key(old)).exists()), 10,
               "the sweep to delete the old recording")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", old) == 0
    assert sample("dialtone_writer_background_errors_total", task="retention") == before["retention"] + 1
    assert sample("dialtone_writer_recording_storage_errors_total", operation="delete", kind="unavailable") == (
        before["unavailable"] + 1)
    assert not r.task.done()


async def test_the_recordings_directory_is_the_services_alone(recorders, tmp_path):
    loose = tmp_path / "loose"  # made by an earlier version, or by hand, 0755
    loose.mkdir()
    os.chmod(loose, 0o755)
    old_umask = os.umask(0o022)
    try:
        fresh = await recorders(tmp_path / "data" / "recordings")
        existing = await recorders(loose)
    finally:
        os.umask(old_umask)
    for r in (fresh, existing):
        directory = Path(r.recorder.settings.recordings_dir)
        assert os.stat(directory).st_mode & 0o777 == 0o700, directory
        assert (directory / "spool").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700, "a parent it had to create, too"


async def test_a_stop_does_not_wait_on_a_task_that_holds_on_once_cancelled(recorders, tmp_path, monkeypatch):
    """A background task caught in a library call that does not end when cancelled (a bus client
    reconnecting) is left behind: the writer still stops within seconds."""
    held: list[asyncio.Task] = []

    async def stubborn(self, stop: asyncio.Event) -> None:
        task = asyncio.current_task()
        assert task is not None
        held.append(task)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(4)  # its clean-up takes its time

    monkeypatch.setattr(Recorder, "_retention", stubborn)
    monkeypatch.setattr(recorder_module, "STOP_TASKS_S", 0.5)
    r = await recorders(tmp_path)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    r.stop.set()
    await asyncio.wait_for(r.task, 3.5)
    stopped_s = time.monotonic() - started
    print(f"stopped {stopped_s:.1f} s after the stop, a task still holding on")
    assert stopped_s < 3 and not held[0].done()
    await asyncio.wait(held, timeout=10)  # not left pending past the test
